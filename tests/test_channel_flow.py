"""Back-pressure that bounds, the fail and disconnect policies, de-duplication
of chained channels, and drops that are seen (counted, logged, rate-limited)."""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

import pytest

import posa
from posa import ops
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from tests.support import Proc, sigstop, wait_until


@pytest.mark.timeout(120)
def test_block_bounds_the_publisher_while_the_channel_is_stopped(dispatcher: str) -> None:
    name = "events/stopped"
    channel = Proc.posa("channel", name, "--dispatcher", dispatcher, "--listen",
                        "tcp://127.0.0.1:0")
    try:
        channel.expect(f"channel {name} at", timeout=30)
        with Subscriber(name, dispatcher=dispatcher, buffer=1000000) as sub:
            pub = Publisher(name, dispatcher=dispatcher, buffer=4096, batch=256, timeout=1.0)
            published = 0
            for i in range(2000):                         # the channel takes these
                pub.publish("t", i)
                published += 1
            pub.flush(30)
            sigstop(channel.popen.pid)
            timeouts = 0
            while timeouts < 4:                           # then the buffer fills
                try:
                    pub.publish("t", published)
                    published += 1
                except posa.Timeout:
                    timeouts += 1
                assert pub.pending <= pub.buffer          # never more than its buffer
            assert published - pub.sent <= pub.buffer     # no event accepted past it
            with pytest.raises(posa.Timeout) as raised:
                pub.close(timeout=1.0)
            assert pub.undelivered == published - pub.sent - pub.rejected
            assert f"with {pub.undelivered} event(s)" in str(raised.value)
            channel.popen.send_signal(signal.SIGCONT)
            with Publisher(name, dispatcher=dispatcher) as marker:
                marker.publish("end", None)
            got = []
            while True:
                event = sub.receive(timeout=30)
                if event.topic == "end":
                    break
                got.append(event.body)
            assert got == list(range(len(got)))           # in order, each once
            assert pub.sent <= len(got) <= published      # every acknowledged one
    finally:
        channel.popen.send_signal(signal.SIGCONT)
        channel.close()


def _overflow(registry: posa.LocalRegistry, sub: Subscriber) -> None:
    """5 events, then 50 in one publication: more than the buffer of 10."""
    with Publisher("events/slow", registry=registry, linger=5.0) as pub:
        pub.publish_many(("t", i) for i in range(5))
        pub.flush(10)
        first = [sub.receive(timeout=10).body for _ in range(5)]
        assert first == list(range(5))
        pub.publish_many(("t", i) for i in range(5, 55))
        pub.flush(10)


def test_policy_fail_ends_the_subscription_and_the_subscriber_is_told(
        registry: posa.LocalRegistry) -> None:
    with EventChannel("events/slow", registry=registry) as channel, \
            Subscriber("events/slow", registry=registry, policy="fail", buffer=10) as sub:
        _overflow(registry, sub)
        with pytest.raises(posa.Rejected, match="overflowed under policy 'fail'"):
            sub.receive(timeout=10)
        wait_until(lambda: not channel.stats()["subscriptions"], what="the end")
        assert channel.stats()["failed"] == 1
        with pytest.raises(posa.Rejected):
            sub.receive(timeout=0)


def test_policy_disconnect_frees_the_buffer_and_the_subscriber_catches_up_from_history(
        registry: posa.LocalRegistry) -> None:
    with EventChannel("events/slow", registry=registry) as channel, \
            Subscriber("events/slow", registry=registry, policy="disconnect", buffer=10,
                       lease=1.5) as sub:
        _overflow(registry, sub)
        got = [sub.receive(timeout=20) for _ in range(50)]
        assert [e.body for e in got] == list(range(5, 55))
        assert all(e.gap is None for e in got)
        assert channel.stats()["disconnected"] == 1
        # the replay may come before the answer to the subscription that asked for it
        wait_until(lambda: sub.reconnects >= 1, what="the new subscription counted")


def test_what_a_stalled_subscribers_stream_gave_up_goes_out_again_and_is_told_once(
        registry: posa.LocalRegistry) -> None:
    """A subscriber that reads nothing (its inbox full, its peer stops reading)
    acknowledges nothing: past ``send_timeout`` the stream to it gives up the
    deliveries in flight, more than the sockets hold. They go out again, so each
    event is delivered or told lost (once, though a copy written before may
    arrive too), and the holes add up to the channel's drop count."""
    n, big = 0, "x" * 100_000            # deliveries of about 1 MB, 8 in flight
    with EventChannel("events/stall", registry=registry, window=8, max_batch=10,
                      send_timeout=0.5) as channel, \
            Subscriber("events/stall", registry=registry, buffer=30, inbox=2,
                       listen="tcp://127.0.0.1:0") as sub, \
            Publisher("events/stall", registry=registry, batch=10) as pub:
        deadline = time.monotonic() + 60
        while channel.counters["resent"] == 0:   # a lane gives up only with more to send
            assert time.monotonic() < deadline, "the stream never gave deliveries up"
            for _ in range(10):
                n += 1
                pub.publish("t", {"i": n, "b": big})
            pub.flush(30)
        got: list[Any] = []
        while not got or got[-1].seq < n:
            got += sub.receive_many(n, timeout=30)
        dropped = channel.stats()["subscriptions"][sub.name]["dropped"]
    seqs = [e.seq for e in got]
    assert seqs == sorted(set(seqs)) and seqs[-1] == n
    assert sub.missed == sub.dropped == dropped > 0
    assert len(got) + sub.missed == n, (len(got), sub.missed, dropped)


def test_a_diamond_of_channels_delivers_each_event_once(registry: posa.LocalRegistry) -> None:
    with EventChannel("events/a", registry=registry), \
            EventChannel("events/b", registry=registry, upstream=["events/a"]), \
            EventChannel("events/d", registry=registry,
                         upstream=["events/a", "events/b"]) as d, \
            Subscriber("events/d", registry=registry, buffer=10000) as sub:
        wait_until(lambda: len(_subs(registry, "events/a")) == 2       # b and d
                   and len(_subs(registry, "events/b")) == 1, what="the chain set up")
        with Publisher("events/a", registry=registry) as pub:
            for i in range(300):
                pub.publish("t", i)
        # every copy reached d: accepted once, or dropped as a duplicate
        wait_until(lambda: d.stats()["published"] + d.stats().get("duplicates", 0) == 600,
                   timeout=30, what="both paths")
        got = [sub.receive(timeout=10).body for _ in range(300)]
        assert sorted(got) == list(range(300))
        assert d.stats()["published"] == 300 and d.stats()["duplicates"] == 300
        with pytest.raises(posa.Timeout):
            sub.receive(timeout=0)


def _subs(registry: posa.LocalRegistry, channel: str) -> list[str]:
    with Subscriber(channel, registry=registry) as probe:
        answer = probe.peer.request(channel, {"op": "stats"}, timeout=5)
        return [s for s in answer["subscriptions"] if s != probe.name]


def test_drops_are_logged_once_per_cause_per_interval_with_a_count(
        registry: posa.LocalRegistry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="posa.channel.service")
    with EventChannel("events/lossy", registry=registry, drop_log_interval=3600) as channel, \
            Subscriber("events/lossy", registry=registry, buffer=1), \
            Publisher("events/lossy", registry=registry, linger=5.0) as pub:
        for round_ in range(3):
            pub.publish_many(("t", i) for i in range(100))
            pub.flush(10)
            wanted = 99 * (round_ + 1)
            wait_until(lambda w=wanted: channel.stats()["drops"]["drop-oldest"] >= w,
                       what="drops")
            sweeps = channel.sweeps
            wait_until(lambda s=sweeps: channel.sweeps > s + 1, what="a sweep")
        records = [r for r in caplog.records if "dropped (drop-oldest)" in r.getMessage()]
        assert len(records) == 1, [r.getMessage() for r in records]
        assert "99 event(s)" in records[0].getMessage()
        metrics = ops.Monitor(channel).metrics()
        assert 'queue="channel_dropped_drop_oldest"}' in metrics
