"""A trace goes on through a publish: an event published inside a span carries its
W3C context through a real channel process (live, replayed from history, from an
SQLite store, through a chained channel) to a subscriber in another process, whose
CONSUMER span is the publisher's span's child; an event published outside a trace
carries nothing at all."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest

import posa
from posa.ops import trace_context
from tests.support import Proc
from tests.tracing import CHILD_SDK, PARENT, local_tracing

pytestmark = pytest.mark.timeout(120)

# the other process: its own SDK and in-memory exporter; a live subscriber and,
# once the events are in, one replaying the history; each handles its events
# inside subscriber.handling(event)
SUBSCRIBER = """
import json, sys
""" + CHILD_SDK + """registry = posa.RegistryClient(sys.argv[1])

def handle(sub, n):
    seen = []
    for _ in range(n):
        event = sub.receive(30)
        with sub.handling(event):
            seen.append([event.topic, event.trace, trace_headers().get("traceparent")])
    return seen

live = posa.Subscriber(sys.argv[2], registry=registry)
print("READY", flush=True)
got = {"live": handle(live, 2)}
with posa.Subscriber(sys.argv[2], registry=registry, from_seq=1) as replay:
    got["replay"] = handle(replay, 2)
live.close()
got["spans"] = [[s.name, format(s.context.trace_id, "032x"),
                 s.parent and format(s.parent.span_id, "016x"), s.kind.name]
                for s in exporter.get_finished_spans()]
print("RESULT", json.dumps(got), flush=True)
"""



def start_channel(dispatcher: str, name: str, *args: str) -> Proc:
    proc = Proc.posa("channel", name, "--dispatcher", dispatcher, "--listen",
                     "tcp://127.0.0.1:0", *args)
    try:
        proc.expect(f"channel {name} at", timeout=30)
    except BaseException:
        proc.close()
        raise
    return proc


def test_a_trace_continues_through_a_publish_into_a_subscriber_in_another_process(
        dispatcher: str, tmp_path: Path) -> None:
    channel = start_channel(dispatcher, "tr/events", "--store", str(tmp_path / "ch.db"))
    subscriber = Proc.python(SUBSCRIBER, dispatcher, "tr/events")
    provider, exporter = local_tracing()
    try:
        subscriber.expect("READY", timeout=60)
        with posa.RegistryClient(dispatcher) as registry, \
                posa.Publisher("tr/events", registry=registry) as publisher:
            with provider.get_tracer("test").start_as_current_span("publish-op") as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                mine = format(span.get_span_context().span_id, "016x")
                publisher.publish("link/down", {"port": 1})
            publisher.publish("link/up", {"port": 1})     # outside the trace
            publisher.flush(30)
        got = subscriber.json("RESULT", timeout=60)
    finally:
        subscriber.close()
        channel.close()
    for how in ("live", "replay"):
        (topic, carried, inside), (plain_topic, plain, plain_inside) = got[how]
        assert (topic, plain_topic) == ("link/down", "link/up"), got[how]
        assert carried["traceparent"].split("-")[1:3] == [trace_id, mine], (how, carried)
        assert inside.split("-")[1] == trace_id and inside.split("-")[2] != mine
        assert plain is None and plain_inside is None, (how, got[how])
    consumers = [s for s in got["spans"] if s[0] == "handle tr/events"]
    assert consumers == [["handle tr/events", trace_id, mine, "CONSUMER"]] * 2, got["spans"]


def _frames(publisher: posa.Publisher, subscriber: posa.Subscriber
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Record the publish bodies a publisher sends and the deliveries a subscriber takes."""
    sent: list[dict[str, Any]] = []
    taken: list[dict[str, Any]] = []
    send, absorb = publisher._sender.send, subscriber._absorb

    def sending(name: str, body: Any, **kwargs: Any) -> Any:
        sent.append(body)
        return send(name, body, **kwargs)

    def absorbing(msg: Any) -> None:
        taken.append(msg.body)
        absorb(msg)
    publisher._sender.send = sending         # type: ignore[method-assign]
    subscriber._absorb = absorbing           # type: ignore[method-assign]
    return sent, taken


def test_outside_a_trace_an_event_carries_nothing(tmp_path: Path) -> None:
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("tr/plain", registry=registry) as _, \
            posa.Publisher("tr/plain", registry=registry, linger=0) as publisher, \
            posa.Subscriber("tr/plain", registry=registry) as subscriber:
        sent, taken = _frames(publisher, subscriber)
        publisher.publish("a", 1)
        publisher.flush(10)
        assert subscriber.receive(10).trace is None
        with trace_context({"traceparent": PARENT}):
            publisher.publish("b", 2)
        publisher.flush(10)
        assert subscriber.receive(10).trace == {"traceparent": PARENT}
    plain, traced = sent
    assert set(plain) == {"op", "topics", "bodies", "pid", "pseq"}, plain
    assert traced["traces"] == [{"traceparent": PARENT}]
    assert [len(run) for body in taken for run in body["runs"]] == [3, 6]
    assert taken[1]["runs"][0][3:] == [None, None, [{"traceparent": PARENT}]]


def test_a_chained_channel_keeps_the_trace() -> None:
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("tr/site", registry=registry) as _, \
            posa.EventChannel("tr/all", registry=registry, upstream=["tr/site"]) as _, \
            posa.Subscriber("tr/all", registry=registry) as subscriber, \
            posa.Publisher("tr/site", registry=registry) as publisher:
        deadline = 200
        event = None
        while event is None and deadline:      # the chain subscribes in the background
            deadline -= 1
            with trace_context({"traceparent": PARENT, "tracestate": "k=v"}):
                publisher.publish("x", deadline)
            publisher.flush(10)
            try:
                event = subscriber.receive(0.1)
            except posa.Timeout:
                continue
        assert event is not None
        assert event.via == ("tr/site",)
        assert event.trace == {"traceparent": PARENT, "tracestate": "k=v"}


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE journal (id INTEGER PRIMARY KEY AUTOINCREMENT,
    seqs BLOB, topics BLOB NOT NULL, bodies BLOB NOT NULL, vias BLOB, origins BLOB,
    pid INTEGER, pseq INTEGER, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE numbered (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,
    entry INTEGER NOT NULL UNIQUE, stamp REAL NOT NULL, nbytes INTEGER NOT NULL);
INSERT INTO meta VALUES ('incarnation', 77);
"""


def test_an_old_sqlite_store_opens_and_keeps_traces_from_then_on(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as db:         # a store written before events had traces
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO journal (topics, bodies, done) VALUES (?, ?, 1)",
                   (msgpack.packb("old"), msgpack.packb(["before"])))
        db.execute("INSERT INTO numbered VALUES (1, 1, 1, 0.0, 10)")
    db.close()
    with posa.LocalRegistry() as registry:
        with posa.EventChannel("tr/old", registry=registry, store=path), \
                posa.Publisher("tr/old", registry=registry) as publisher:
            with trace_context({"traceparent": PARENT}):
                publisher.publish("new", "after")
            publisher.flush(10)
        with posa.EventChannel("tr/old", registry=registry, store=path), \
                posa.Subscriber("tr/old", registry=registry, from_seq=1) as replay:
            old, new = replay.receive(10), replay.receive(10)
    assert (old.seq, old.body, old.trace) == (1, "before", None)
    assert (new.seq, new.body, new.trace) == (2, "after", {"traceparent": PARENT})


def test_asyncio_publish_many_keeps_the_callers_trace() -> None:
    import asyncio

    import posa.aio

    async def main(registry: posa.LocalRegistry) -> list[Any]:
        async with posa.aio.Subscriber("tr/aio", registry=registry) as sub, \
                posa.aio.Publisher("tr/aio", registry=registry) as pub:
            with trace_context({"traceparent": PARENT}):
                await pub.publish_many([("a", 1), ("b", 2)])   # on the worker thread
            await pub.publish("c", 3)
            await pub.flush(10)
            events = [await sub.receive(10) for _ in range(3)]
            with sub.handling(events[0]):
                inside = posa.ops.trace_headers()
            return [[e.trace for e in events], inside]

    with posa.LocalRegistry() as registry, posa.EventChannel("tr/aio", registry=registry):
        traces, inside = asyncio.run(main(registry))
    assert traces == [{"traceparent": PARENT}] * 2 + [None]
    assert inside["traceparent"].split("-")[1] == PARENT.split("-")[1]


def test_each_event_keeps_the_trace_it_was_published_in() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("tr/each", registry=registry) as _, \
            posa.Publisher("tr/each", registry=registry, linger=1.0) as publisher, \
            posa.Subscriber("tr/each", registry=registry) as subscriber:
        for parent in (PARENT, other, PARENT):      # one batch, three traces
            with trace_context({"traceparent": parent}):
                publisher.publish("t", parent)
        publisher.publish("t", None)
        publisher.flush(10)
        events = subscriber.receive_many(4, timeout=10)
        while len(events) < 4:
            events += subscriber.receive_many(4 - len(events), timeout=10)
    assert [e.trace for e in events] == [{"traceparent": PARENT}, {"traceparent": other},
                                         {"traceparent": PARENT}, None]
