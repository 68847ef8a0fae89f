"""A work queue fed by an event channel's topic: one item per event, keyed by
where the event began, so a replay after a restart does not queue it twice."""
from __future__ import annotations

from pathlib import Path

import pytest

import posa
from posa.channel.events import Event
from posa.work.channelsource import ChannelSource, event_key
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def test_an_event_is_keyed_where_it_began() -> None:
    direct = Event(7, "jobs/a", {"n": 1}, channel="events/a")
    assert event_key(direct, 42) == "events/a/42/7"
    chained = Event(3, "jobs/a", None, channel="events/b", via=("events/a",),
                    origin=(42, 7))
    assert event_key(chained, 99) == "events/a/42/7"          # the same event


def test_events_become_items_once_across_a_replay(tmp_path: Path) -> None:
    done: list[tuple[str, object]] = []
    store = tmp_path / "queue.db"
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("events/jobs", registry=registry) as channel, \
            posa.Publisher("events/jobs", registry=registry) as publisher:
        worker = posa.Worker("work/events/w", "work/events",
                             lambda item: item.data * 10, registry=registry).start()
        try:
            def run(first: int, count: int, **options: object) -> None:
                source = ChannelSource("events/jobs", topics="jobs/", registry=registry,
                                       wait=0.2, **options)
                with source, posa.WorkQueue(
                        "work/events", registry=registry, source=source, refresh=0,
                        store=store, on_done=lambda k, r: done.append((k, r))):
                    for n in range(first, first + count):
                        publisher.publish("jobs/n", n)
                        publisher.publish("other/n", -n)       # not subscribed to
                    publisher.flush()
                    wait_until(lambda: len(done) == first + count - 1, timeout=60,
                               what=f"{first + count - 1} items done")

            run(1, 6)                                         # events 1..6 -> items
            run(7, 3, from_seq=1)                             # replays 1..6, then 7..9
            inc = channel.incarnation
        finally:
            worker.close()
    keys = [key for key, _ in done]
    assert len(keys) == len(set(keys)) == 9                  # each event queued once
    assert sorted(result for _, result in done) == [n * 10 for n in range(1, 10)]
    assert all(key.startswith(f"events/jobs/{inc}/") for key in keys)


def test_posa_queue_takes_its_items_from_a_channel_topic(dispatcher: str) -> None:
    import json

    from tests.support import Proc
    with posa.RegistryClient(dispatcher) as registry, \
            posa.EventChannel("events/cli", registry=registry,
                              listen="tcp://127.0.0.1:0") as channel, \
            posa.Publisher("events/cli", registry=registry) as publisher:
        queue = Proc.posa("queue", "work/chq", "--channel", "events/cli", "--topic", "jobs/",
                          "--results", "--dispatcher", dispatcher)
        worker = None
        try:
            queue.expect("queue work/chq")
            worker = posa.Worker("work/chq/w", "work/chq", lambda item: item.data + 1,
                                 registry=registry).start()
            for n in range(3):
                publisher.publish("jobs/n", n)
                publisher.publish("other", 100)
            publisher.flush()
            lines = [json.loads(queue.expect('{"done"', timeout=60).join(['{"done"', '']))
                     for _ in range(3)]
            assert queue.terminate() == 0
        finally:
            if worker is not None:
                worker.close()
            queue.close()
        inc = channel.incarnation
    assert sorted((line["done"], line["result"]) for line in lines) == [
        (f"events/cli/{inc}/{2 * n + 1}", n + 1) for n in range(3)]   # other/ skipped
