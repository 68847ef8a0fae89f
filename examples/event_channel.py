"""Event Channel: network agents publish events; operators subscribe to what they need.

Runs in one process with the embedded registry; give every object
``dispatcher="tcp://127.0.0.1:7000"`` (and start ``posa channel events/netmgmt
--dispatcher tcp://127.0.0.1:7000`` instead of ``EventChannel``) to spread the
same code over processes and hosts.

    python examples/event_channel.py
"""
from __future__ import annotations

from posa import EventChannel, Publisher, Subscriber

CHANNEL = "events/netmgmt"


def main() -> None:
    with EventChannel(CHANNEL, history=10000) as channel:
        # an operator console: link events only, filtered at the channel
        links = Subscriber(CHANNEL, topics=["link/"])
        # a capacity planner: any event whose body says the load is high
        hot = Subscriber(CHANNEL, filter={"and": [
            {"field": "load", "op": ">", "value": 0.8},
            {"field": "site", "op": "in", "value": ["site-a", "site-b"]}]})
        # a slow archiver: keeps at most 5 events, drops the oldest, is told
        archive = Subscriber(CHANNEL, buffer=5, inbox=2, policy="drop-oldest")

        with Publisher(CHANNEL) as agent:
            agent.publish("link/down", {"site": "site-a", "port": 3, "load": 0.0})
            agent.publish("cpu/load", {"site": "site-b", "load": 0.93})
            agent.publish("link/up", {"site": "site-a", "port": 3, "load": 0.1})
            agent.flush()

            for _ in range(2):
                event = links.receive(timeout=5)
                print(f"console   #{event.seq} {event.topic} {event.body}")
            event = hot.receive(timeout=5)
            print(f"planner   #{event.seq} {event.topic} load {event.body['load']}")

            # a burst the archiver cannot keep up with
            for i in range(2000):
                agent.publish("cpu/load", {"site": "site-c", "load": 0.5, "sample": i})
            agent.flush()

        kept = [archive.receive(timeout=5)]
        while kept[-1].seq < 2003:
            kept.append(archive.receive(timeout=5))
        lost = [e.gap for e in kept if e.gap is not None]
        print(f"archiver  kept {len(kept)} events; told of {len(lost)} gap(s) with "
              f"{archive.missed} events lost; the channel counted "
              f"{channel.stats()['subscriptions'][archive.name]['dropped']} drops")

        # a late subscriber replays what the channel still holds
        late = Subscriber(CHANNEL, topics=["link/"], from_seq=1)
        print("replayed ", [e.topic for e in late.receive_many(10, timeout=5)])
        for subscriber in (links, hot, archive, late):
            subscriber.close()


if __name__ == "__main__":
    main()
