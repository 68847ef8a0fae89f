"""Fan-out without a thread per subscriber: 32 subscribers of one channel each get
every event in order while one that reads nothing loses only what its policy
drops, and the channel runs as many threads with 33 subscribers as with one (its
registry lookup helpers at most two, whatever the number); a
subscriber process killed mid-stream holds up no other and its subscription ends."""
from __future__ import annotations

import threading

import pytest

import posa
from posa.channel.lookups import THREADS
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from tests.support import Proc, wait_until

NAME = "events/fanout"
EVENTS = 2000
FAST = 32


def channel_threads() -> int:
    """The channel's threads but its registry lookup helpers (``lookup_threads``)."""
    return sum(t.name.startswith(f"posa-channel-{NAME}-") and not t.name.endswith("-lookup")
               for t in threading.enumerate())


def lookup_threads() -> int:
    """The channel's lookup helpers: at most ``THREADS``, whatever the subscribers."""
    return sum(t.name == f"posa-channel-{NAME}-lookup" for t in threading.enumerate())


def read_all(sub: Subscriber, got: list[int], done: threading.Event) -> None:
    """Read until the last event (or a receive times out: the test then fails)."""
    try:
        while not got or got[-1] != EVENTS - 1:
            got.append(sub.receive(timeout=30).body)
    except posa.Timeout:
        pass
    finally:
        done.set()


@pytest.mark.timeout(180)
def test_32_subscribers_each_get_everything_in_order_past_a_stalled_one(
        registry: posa.LocalRegistry) -> None:
    with EventChannel(NAME, registry=registry, max_batch=16) as channel:
        stalled = Subscriber(NAME, registry=registry, policy="drop-oldest", buffer=20,
                             inbox=2)
        with stalled:
            with_one = channel_threads()
            subs = [Subscriber(NAME, registry=registry, policy="block", buffer=100)
                    for _ in range(FAST)]
            try:
                assert channel_threads() == with_one == 2     # ingest, delivery
                got: list[list[int]] = [[] for _ in subs]
                done = [threading.Event() for _ in subs]
                readers = [threading.Thread(target=read_all, args=(sub, g, d))
                           for sub, g, d in zip(subs, got, done)]
                for reader in readers:
                    reader.start()
                with Publisher(NAME, registry=registry) as pub:
                    pub.publish_many(("t", i) for i in range(EVENTS))
                    pub.flush(60)
                for event in done:
                    assert event.wait(60), "a subscriber did not get every event"
                for reader in readers:
                    reader.join(10)
                assert all(g == list(range(EVENTS)) for g in got)   # each all, in order
                assert channel_threads() == with_one
                assert lookup_threads() <= THREADS
                # the stalled one now reads: in order, what its policy kept, and the
                # drops are counted and said, never silent
                late = [stalled.receive(timeout=30)]
                while late[-1].body != EVENTS - 1:
                    late.append(stalled.receive(timeout=30))
                bodies = [event.body for event in late]
                assert bodies == sorted(set(bodies))
                assert len(bodies) < EVENTS and stalled.missed == EVENTS - len(bodies)
                assert stalled.dropped > 0 and channel.core.drops["drop-oldest"] > 0
            finally:
                for sub in subs:
                    sub.close()


DOOMED = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg:
    sub = posa.Subscriber(sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0", lease=3.0)
    print("READY", sub.name, flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(120)
def test_a_subscriber_killed_mid_stream_does_not_hold_up_the_others(dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as reg, \
            EventChannel(NAME, registry=reg, listen="tcp://127.0.0.1:0") as channel:
        doomed = Proc.python(DOOMED, dispatcher, NAME)
        try:
            doomed_name = doomed.expect("READY", timeout=30)
            subs = [Subscriber(NAME, registry=reg, policy="block", buffer=100,
                               listen="tcp://127.0.0.1:0") for _ in range(4)]
            try:
                with Publisher(NAME, registry=reg) as pub:
                    pub.publish_many(("t", i) for i in range(500))
                    pub.flush(30)
                    doomed.popen.kill()             # no unsubscription: its lane finds out
                    doomed.popen.wait(10)
                    pub.publish_many(("t", i) for i in range(500, 1000))
                    pub.flush(30)
                for sub in subs:
                    assert [sub.receive(timeout=30).body for _ in range(1000)] == \
                        list(range(1000))
                wait_until(lambda: doomed_name not in channel.core.subscriptions, 30,
                           "the killed subscriber's subscription ended")
                assert channel_threads() == 2 and lookup_threads() <= THREADS
            finally:
                for sub in subs:
                    sub.close()
        finally:
            doomed.close()


@pytest.mark.timeout(60)
def test_iterating_a_subscriber_gives_every_event_in_order_then_ends_on_close(
        registry: posa.LocalRegistry) -> None:
    """Iteration takes decoded events straight from the subscriber's queue and
    goes to ``receive`` only when it is empty: nothing is skipped or repeated
    across deliveries, and closing the subscriber ends the loop."""
    with EventChannel(NAME, registry=registry, listen="tcp://127.0.0.1:0",
                      max_batch=7) as channel:
        sub = Subscriber(NAME, registry=registry, policy="block", buffer=50,
                         listen="tcp://127.0.0.1:0")
        got: list[int] = []
        done = threading.Event()

        def read() -> None:
            for event in sub:
                got.append(event.body)
                if len(got) == EVENTS:
                    done.set()
        reader = threading.Thread(target=read)
        reader.start()
        with Publisher(NAME, registry=registry) as pub:
            pub.publish_many(("t", i) for i in range(EVENTS))
            pub.flush(30)
        assert done.wait(30)
        sub.close()
        reader.join(30)
        assert not reader.is_alive() and got == list(range(EVENTS))
        assert channel.seq == EVENTS
