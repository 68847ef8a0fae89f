"""The Event Channel service: in one process, then across real processes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import posa
from posa.channel.aio import AsyncPublisher, AsyncSubscriber
from posa.channel.events import Event, Gap
from posa.channel.predicate import InvalidFilter, compile_filter
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from tests.support import ROOT, Proc, wait_until


def receive_n(sub: Subscriber, n: int, timeout: float = 20.0) -> list[Event]:
    """Exactly ``n`` events (more would fail the test), within ``timeout``."""
    deadline = time.monotonic() + timeout
    events: list[Event] = []
    while len(events) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(events)} of {n} events in {timeout} s"
        events += sub.receive_many(n - len(events), timeout=remaining)
    with pytest.raises(posa.Timeout):
        sub.receive(timeout=0.05)
    return events


# -- in one process ------------------------------------------------------------------
def test_topics_and_filters_select_at_the_channel(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/net", registry=registry) as channel, \
            Subscriber("events/net", registry=registry, topics=["link/"]) as links, \
            Subscriber("events/net", registry=registry,
                       filter={"field": "load", "op": ">", "value": 0.5}) as hot, \
            Publisher("events/net", registry=registry) as pub:
        for i in range(10):
            pub.publish("link/down" if i % 2 else "cpu", {"load": i / 10, "i": i})
        pub.flush(10)
        got = receive_n(links, 5)
        assert [(e.topic, e.body["i"]) for e in got] == [("link/down", i) for i in (1, 3, 5, 7, 9)]
        assert [e.seq for e in got] == [2, 4, 6, 8, 10]
        assert all(e.channel == "events/net" and e.gap is None for e in got)
        assert [e.body["i"] for e in receive_n(hot, 4)] == [6, 7, 8, 9]
        stats = channel.stats()
        assert stats["seq"] == 10 and stats["published"] == 10
        assert sorted(s["delivered"] for s in stats["subscriptions"].values()) == [4, 5]


def test_replay_from_a_seq_then_live(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/net", registry=registry, history=50) as channel, \
            Publisher("events/net", registry=registry) as pub:
        for i in range(80):
            pub.publish("t", i)
        pub.flush(10)
        wait_until(lambda: channel.seq == 80, what="80 events accepted")
        with Subscriber("events/net", registry=registry, from_seq=41) as sub:
            assert [e.body for e in receive_n(sub, 40)] == list(range(40, 80))
            pub.publish("t", 80)
            pub.flush(10)
            assert [e.seq for e in receive_n(sub, 1)] == [81]
        with Subscriber("events/net", registry=registry, from_seq=1) as old:
            events = receive_n(old, 50)                # history keeps the last 50
            assert events[0].seq == 32 and events[0].gap == Gap("history", 0, None)
            assert old.gaps == 1


def test_a_stalled_subscriber_loses_the_oldest_and_is_told(registry: posa.LocalRegistry
                                                           ) -> None:
    with EventChannel("events/net", registry=registry, window=1, max_batch=100) as channel, \
            Subscriber("events/net", registry=registry, buffer=100, inbox=2) as stalled, \
            Subscriber("events/net", registry=registry, buffer=100_000) as fine, \
            Publisher("events/net", registry=registry, batch=50) as pub:
        for i in range(3000):
            pub.publish("t", i)
        pub.flush(10)
        assert [e.body for e in receive_n(fine, 3000)] == list(range(3000))   # unaffected
        wait_until(lambda: channel.stats()["subscriptions"][stalled.name]["dropped"] > 0,
                   what="drops at the channel")
        dropped = channel.stats()["subscriptions"][stalled.name]["dropped"]
        kept = receive_n(stalled, 3000 - dropped)
        assert [e.seq for e in kept] == sorted(e.seq for e in kept)
        assert kept[-1].seq == 3000                  # the newest survive
        assert sum(e.gap.count for e in kept if e.gap) == dropped == stalled.missed
        assert all(e.gap.reason == "dropped" for e in kept if e.gap)
        assert stalled.dropped == dropped            # both sides count the same


def test_block_makes_publishers_wait_then_time_out(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/net", registry=registry, window=1, max_batch=10,
                      park_limit=1, inbox=2) as channel, \
            Subscriber("events/net", registry=registry, policy="block", buffer=10,
                       inbox=2) as slow, \
            Publisher("events/net", registry=registry, batch=10, buffer=20, window=1,
                      timeout=1.0) as pub:
        published = 0
        with pytest.raises(posa.Timeout, match="'block' subscribers"):
            for published in range(100_000):
                pub.publish("t", published)
        assert published < 5000                      # bounded by buffers and windows
        assert channel.stats()["subscriptions"][slow.name]["dropped"] == 0
        got: list[Event] = []
        while len(got) < 50:                         # the slow one reads: room again
            got += slow.receive_many(50 - len(got), timeout=20)
        for more in range(published, published + 3):   # and publishing goes on
            pub.publish("t", more, timeout=20)
        while len(got) < published + 3:
            got += slow.receive_many(published + 3 - len(got), timeout=20)
        assert [e.body for e in got] == list(range(published + 3))   # nothing lost
        pub.flush(20)


def test_chained_channels_deliver_end_to_end(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/site-a", registry=registry) as site, \
            EventChannel("events/all", registry=registry, upstream=["events/site-a"],
                         upstream_filter={"field": "severity", "op": ">=", "value": 3}), \
            Subscriber("events/all", registry=registry) as sub, \
            Publisher("events/site-a", registry=registry) as pub:
        wait_until(lambda: site.stats()["subscriptions"], what="the chain's subscription")
        for severity in range(6):
            pub.publish("alarm", {"severity": severity})
        pub.flush(10)
        events = receive_n(sub, 3)
        assert [e.body["severity"] for e in events] == [3, 4, 5]
        assert all(e.via == ("events/site-a",) and e.channel == "events/all" for e in events)


def test_two_channels_chained_both_ways_do_not_loop(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/a", registry=registry, upstream=["events/b"]) as a, \
            EventChannel("events/b", registry=registry, upstream=["events/a"]) as b, \
            Subscriber("events/a", registry=registry) as on_a, \
            Subscriber("events/b", registry=registry) as on_b, \
            Publisher("events/a", registry=registry) as to_a, \
            Publisher("events/b", registry=registry) as to_b:
        wait_until(lambda: len(a.stats()["subscriptions"]) == 2 and
                   len(b.stats()["subscriptions"]) == 2, what="both chains subscribed")
        to_a.publish("from/a", 1)
        to_b.publish("from/b", 2)
        to_a.flush(10)
        to_b.flush(10)
        seen_a = sorted((e.topic, e.via) for e in receive_n(on_a, 2))
        seen_b = sorted((e.topic, e.via) for e in receive_n(on_b, 2))
        assert seen_a == [("from/a", ()), ("from/b", ("events/b",))]
        assert seen_b == [("from/a", ("events/a",)), ("from/b", ())]
        assert a.seq == 2 and b.seq == 2


def test_subscribers_come_back_after_a_channel_restart(registry: posa.LocalRegistry) -> None:
    first = EventChannel("events/net", registry=registry, credential="owner-token")
    try:
        with Subscriber("events/net", registry=registry, lease=1.0) as sub, \
                Publisher("events/net", registry=registry) as pub:
            pub.publish("t", "before")
            pub.flush(10)
            assert [e.body for e in receive_n(sub, 1)] == ["before"]
            first.close()
            with EventChannel("events/net", registry=registry,
                              credential="owner-token") as second:
                wait_until(lambda: sub.reconnects >= 1, what="re-subscription")
                pub.publish("t", "after")
                pub.flush(10)
                [event] = receive_n(sub, 1)
                assert event.body == "after" and event.seq == 1
                assert event.gap == Gap("restart", 1, None)
                assert sub.incarnation == second.incarnation != first.incarnation
    finally:
        first.close()


def test_bad_requests_and_publications_are_refused_not_fatal(
        registry: posa.LocalRegistry) -> None:
    with EventChannel("events/net", registry=registry) as channel, \
            posa.Peer("test/raw", registry=registry) as raw:
        with pytest.raises(InvalidFilter):
            Subscriber("events/net", registry=registry, filter={"field": "x", "op": "~",
                                                                "value": 1})
        with pytest.raises(posa.Rejected, match="is not an operator"):
            raw.request("events/net", {"op": "subscribe", "filter": {"field": "x", "op": "~",
                                                                     "value": 1}})
        with pytest.raises(posa.Rejected, match="unknown channel operation"):
            raw.request("events/net", {"op": "drop-tables"})
        with pytest.raises(posa.Rejected, match="'topics' of channel operation 'subscribe' "
                                                "must be a list, got str"):
            raw.request("events/net", {"op": "subscribe", "topics": "link/"})
        with pytest.raises(posa.Rejected, match="'publish' is one-way: send it"):
            raw.request("events/net", {"op": "publish", "topics": ["t"], "bodies": b"\x90"})
        raw.send("events/net", {"op": "publish", "topics": ["t"], "bodies": b"\xc1"})
        raw.send("events/net", "garbage")
        raw.send("events/net", {"op": "subscribe"})      # a request sent one-way
        raw.flush(5)
        wait_until(lambda: channel.stats()["rejected"] == 3, what="3 refusals counted")
        with Subscriber("events/net", registry=registry) as sub, \
                Publisher("events/net", registry=registry) as pub:
            pub.publish("t", "still works")
            pub.flush(5)
            assert receive_n(sub, 1)[0].body == "still works"
        assert raw.request("events/net", {"op": "stats"})["rejected"] == 3
        assert "test/raw" not in channel.stats()["subscriptions"]


def test_publisher_reports_bad_topics_and_bodies(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/net", registry=registry), \
            Subscriber("events/net", registry=registry) as sub, \
            Publisher("events/net", registry=registry) as pub:
        with pytest.raises(posa.Rejected, match="topic must be a str"):
            pub.publish(3, "x")  # type: ignore[arg-type]
        pub.publish("t", 1)
        pub.publish("t", {1, 2})          # a set is not msgpack data
        pub.publish("t", 3)
        with pytest.raises(posa.Rejected, match="1 event\\(s\\) dropped.*set"):
            pub.flush(10)
        assert pub.rejected == 1
        assert [e.body for e in receive_n(sub, 2)] == [1, 3]
        pub.publish("t", 4)                # the error was reported once
        pub.flush(10)


def test_subscriber_and_publisher_under_asyncio(registry: posa.LocalRegistry) -> None:
    async def main() -> list[Any]:
        async with AsyncSubscriber("events/net", registry=registry) as sub, \
                AsyncPublisher("events/net", registry=registry) as pub:
            for i in range(100):
                await pub.publish("t", i)
            await pub.flush(10)
            got = [(await sub.receive(timeout=10)).body]
            got += [e.body for e in await sub.receive_many(10, timeout=10)]
            async for event in sub:
                got.append(event.body)
                if len(got) == 100:
                    break
            return got

    with EventChannel("events/net", registry=registry):
        assert asyncio.run(main()) == list(range(100))


def test_the_example_runs() -> None:
    done = subprocess.run([sys.executable, "examples/event_channel.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=90,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "link/down" in done.stdout and "gap" in done.stdout


# -- across processes -------------------------------------------------------------------
SUBSCRIBER = """
import json, sys, time, posa
from posa.channel.subscriber import Subscriber
dispatcher, channel, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
expect, until_seq = int(sys.argv[4]), int(sys.argv[5])   # events, or up to a seq
with Subscriber(channel, dispatcher=dispatcher, listen="tcp://127.0.0.1:0", **options) as sub:
    print("READY", flush=True)
    if sys.stdin.readline().strip() == "stall":   # hold still until told to read
        sys.stdin.readline()
    got = []
    while len(got) < expect and not (got and got[-1][0] >= until_seq):
        for e in sub.receive_many(expect - len(got), timeout=60):
            got.append([e.seq, e.topic, e.body, e.gap and list(e.gap), list(e.via)])
        print("PROGRESS", len(got), flush=True)
    # events of a renewed subscription may arrive before the answer to the renewal
    # that counts it: after a restart, give that answer up to 10 s to come
    for _ in range(100):
        if sub.reconnects or not any(e[3] and e[3][0] == "restart" for e in got):
            break
        time.sleep(0.1)
    print("RESULT " + json.dumps({"events": got, "gaps": sub.gaps, "missed": sub.missed,
                                 "dropped": sub.dropped, "reconnects": sub.reconnects}),
          flush=True)
    sys.stdin.readline()
"""

PUBLISHER = """
import sys
from posa.channel.publisher import Publisher
from tests.test_eventchannel import PLANS
dispatcher, channel, kind, publisher, n = sys.argv[1:4] + [int(a) for a in sys.argv[4:6]]
plan = PLANS[kind](publisher, n)
with Publisher(channel, dispatcher=dispatcher, timeout=30) as pub:
    print("READY", flush=True)
    sys.stdin.readline()
    for topic, body in plan:
        pub.publish(topic, body)
    pub.flush(60)
    print("DONE", flush=True)
"""


class Processes:
    """Every process a test starts, killed at its end whatever happens."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def channel(self, dispatcher: str, name: str, *args: str) -> Proc:
        proc = self.add(Proc.posa("channel", name, "--dispatcher", dispatcher,
                                  "--listen", "tcp://127.0.0.1:0", *args))
        proc.expect(f"channel {name} at", timeout=30)
        return proc

    def subscriber(self, dispatcher: str, channel: str, options: dict[str, Any],
                   expect: int, until_seq: int = 1 << 62) -> Proc:
        """A subscriber process that reads ``expect`` events (or up to the first
        with ``until_seq``) and reports them, after the line "go" (or "stall",
        then any line)."""
        proc = self.add(Proc.python(SUBSCRIBER, dispatcher, channel, json.dumps(options),
                                    str(expect), str(until_seq)))
        proc.expect("READY", timeout=30)
        return proc

    def publisher(self, dispatcher: str, channel: str, kind: str, publisher: int,
                  n: int) -> Proc:
        """A publisher process that publishes ``PLANS[kind](publisher, n)`` after
        the line "go", then flushes and says DONE."""
        proc = self.add(Proc.python(PUBLISHER, dispatcher, channel, kind, str(publisher),
                                    str(n)))
        proc.expect("READY", timeout=30)
        return proc

    def add(self, proc: Proc) -> Proc:
        self.all.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.all):
            proc.close()


@pytest.fixture
def procs() -> Iterator[Processes]:
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def mixed(publisher: int, n: int) -> list[tuple[str, dict[str, Any]]]:
    topics = ["link/down", "link/up", "cpu/load", "alarm/fan"]
    return [(topics[(i + publisher) % 4],
             {"p": publisher, "i": i, "load": (i % 10) / 10, "site": "abc"[i % 3]})
            for i in range(n)]


PLANS: dict[str, Callable[[int, int], list[tuple[str, Any]]]] = {
    "mixed": mixed,
    "flat": lambda p, n: [("t", {"i": i, "b": "x" * 80}) for i in range(n)],
    "alarms": lambda p, n: [("alarm/fan" if i % 2 else "cpu/load", {"i": i})
                            for i in range(n)],
}


FILTERED = [
    {"topics": ["link/"]},
    {"filter": {"field": "load", "op": ">=", "value": 0.7}},
    {"topics": ["cpu/", "alarm/"], "filter": {"field": "site", "op": "in", "value": ["a", "c"]}},
    {"filter": {"not": {"field": "p", "op": "==", "value": 1}}, "policy": "block",
     "buffer": 500},
    {},
]


def selects(options: dict[str, Any], topic: str, body: dict[str, Any]) -> bool:
    spec = options.get("filter")
    wanted = True
    if spec is not None:
        wanted = compile_filter(spec)(body)
    return topic.startswith(tuple(options.get("topics", [""]))) and wanted


@pytest.mark.timeout(180)
def test_three_publishers_five_subscribers_each_gets_exactly_its_events_in_order(
        dispatcher: str, procs: Processes) -> None:
    procs.channel(dispatcher, "events/net")
    plans = [mixed(p, 3000) for p in range(3)]
    everything = [event for plan in plans for event in plan]
    expected = [[e for e in everything if selects(o, *e)] for o in FILTERED]
    subs = [procs.subscriber(dispatcher, "events/net", dict(o, buffer=o.get("buffer", 20000)),
                             len(want)) for o, want in zip(FILTERED, expected)]
    pubs = [procs.publisher(dispatcher, "events/net", "mixed", p, 3000) for p in range(3)]
    for proc in subs + pubs:
        proc.tell("go")
    for proc in pubs:
        proc.expect("DONE", timeout=120)
    for proc, want in zip(subs, expected):
        result = proc.json("RESULT", timeout=120)
        got = result["events"]
        assert sorted((t, json.dumps(b, sort_keys=True)) for _, t, b, _, _ in got) == \
            sorted((t, json.dumps(b, sort_keys=True)) for t, b in want)
        seqs = [seq for seq, *_ in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for p in range(3):     # each publisher's events in its order
            mine = [b["i"] for _, _, b, _, _ in got if b["p"] == p]
            assert mine == sorted(mine)
        assert result["gaps"] == 0 and result["dropped"] == 0


@pytest.mark.timeout(180)
def test_a_stalled_subscriber_bounds_the_channels_memory(dispatcher: str,
                                                         procs: Processes) -> None:
    channel = procs.channel(dispatcher, "events/net")
    n = 100_000
    stalled = procs.subscriber(dispatcher, "events/net", {"buffer": 1000, "inbox": 2},
                               n, until_seq=n)
    fine = procs.subscriber(dispatcher, "events/net", {"buffer": 10000, "policy": "block"}, n)
    publisher = procs.publisher(dispatcher, "events/net", "flat", 0, n)
    before = rss_mb(channel.popen.pid)
    stalled.tell("stall")
    fine.tell("go")
    publisher.tell("go")
    publisher.expect("DONE", timeout=150)
    result = fine.json("RESULT", timeout=150)
    grown = rss_mb(channel.popen.pid) - before
    assert [e[2]["i"] for e in result["events"]] == list(range(n))    # unaffected
    assert grown < 50, f"the channel grew by {grown:.1f} MB"
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer("test/observer", registry=reg, listen="tcp://127.0.0.1:0") as peer:
        stats = peer.request("events/net", {"op": "stats"}, timeout=10)
    [stalled_stats] = [s for s in stats["subscriptions"].values() if s["limit"] == 1000]
    assert stalled_stats["dropped"] > n // 4 and stalled_stats["buffered"] <= 1000
    stalled.tell("read")
    told = stalled.json("RESULT", timeout=60)
    seqs = [e[0] for e in told["events"]]
    assert seqs == sorted(seqs) and seqs[-1] == n              # the newest survived
    assert told["gaps"] >= 1                                    # and the loss was told:
    counts = (f"told {told['missed']} missed, {told['dropped']} dropped; the channel "
              f"counted {stalled_stats['dropped']}; the subscriber reconnected "
              f"{told['reconnects']} time(s)")
    if told["reconnects"] == 0:
        assert told["missed"] == told["dropped"] == stalled_stats["dropped"], counts
    # else a resubscription starts a new count at the channel and replays what the
    # history still holds of the drop: only the sum below is exact
    assert len(seqs) + told["missed"] == n, counts     # every event delivered or told lost


@pytest.mark.timeout(180)
def test_kill_9_and_restart_the_channel_subscribers_come_back_and_report_the_gap(
        dispatcher: str, procs: Processes) -> None:
    args = ("--credential", "channel-owner-token")
    channel = procs.channel(dispatcher, "events/net", *args)
    sub = procs.subscriber(dispatcher, "events/net", {"lease": 1.0}, 200)
    sub.tell("go")
    with Publisher("events/net", dispatcher=dispatcher, timeout=30) as pub:
        for i in range(100):
            pub.publish("t", i)
        pub.flush(30)
        while int(sub.expect("PROGRESS", timeout=30)) < 100:
            pass
        channel.kill()
        procs.channel(dispatcher, "events/net", *args)
        for i in range(100, 200):
            pub.publish("t", i)
        pub.flush(30)
    result = sub.json("RESULT", timeout=60)
    assert [e[2] for e in result["events"]] == list(range(200))
    first_after = result["events"][100]
    assert first_after[0] == 1 and first_after[3] == ["restart", 100, None]
    assert result["reconnects"] >= 1 and result["gaps"] == 1


@pytest.mark.timeout(180)
def test_chained_channel_processes_deliver_end_to_end(dispatcher: str,
                                                      procs: Processes) -> None:
    procs.channel(dispatcher, "events/site-a")
    procs.channel(dispatcher, "events/all", "--upstream", "events/site-a",
                  "--upstream-topic", "alarm/")
    sub = procs.subscriber(dispatcher, "events/all", {}, 50)
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer("test/chain-probe", registry=reg) as probe:
        # (the chain's subscriber has its name before the upstream takes its subscription)
        wait_until(lambda: probe.request("events/site-a", {"op": "stats"},
                                         timeout=10)["subscriptions"],
                   timeout=30, what="the chain's subscription")
    sub.tell("go")
    pub = procs.publisher(dispatcher, "events/site-a", "alarms", 0, 100)
    pub.tell("go")
    pub.expect("DONE", timeout=60)
    result = sub.json("RESULT", timeout=60)
    assert [e[2]["i"] for e in result["events"]] == list(range(1, 100, 2))
    assert all(e[1] == "alarm/fan" and e[4] == ["events/site-a"] for e in result["events"])


@pytest.mark.timeout(120)
def test_sigterm_stops_the_channel_cleanly_and_frees_its_name(dispatcher: str,
                                                              procs: Processes) -> None:
    channel = procs.channel(dispatcher, "events/net")
    with posa.RegistryClient(dispatcher, cache=False) as reg:
        assert reg.lookup("events/net").addresses
        assert channel.terminate(timeout=30) == 0
        with pytest.raises(posa.NameNotFound):
            reg.lookup("events/net")
