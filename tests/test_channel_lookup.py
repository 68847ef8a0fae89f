"""The channel's delivery thread never waits for the registry: a subscriber whose
process was killed makes the channel ask the registry about its name, and while
that lookup hangs (a slow or unreachable dispatcher) the other subscribers get
every event, in order; the lookup answered, the killed one's lane ends."""
from __future__ import annotations

import threading
from typing import Any

import pytest

import posa
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from tests.support import Proc, wait_until

NAME = "events/lookup"

DOOMED = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg:
    sub = posa.Subscriber(sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0", lease=60.0)
    print("READY", sub.name, flush=True)
    sys.stdin.read()
"""


class HangingLookups:
    """A registry whose lookups of ``name`` hang, once ``armed``, until ``released``
    (everything else is the wrapped registry's)."""

    def __init__(self, registry: posa.RegistryClient) -> None:
        self.registry = registry
        self.name = ""
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.released = threading.Event()

    def lookup(self, name: str) -> posa.Registration:
        if name == self.name and self.armed.is_set():
            self.entered.set()
            self.released.wait(60)
        return self.registry.lookup(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.registry, attr)


@pytest.mark.timeout(120)
def test_a_hanging_lookup_of_a_killed_subscriber_holds_up_no_other(dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        hanging = HangingLookups(reg)
        with EventChannel(NAME, registry=hanging,    # type: ignore[arg-type]
                          listen="tcp://127.0.0.1:0") as channel:
            doomed = Proc.python(DOOMED, dispatcher, NAME)
            try:
                hanging.name = doomed.expect("READY", timeout=30)
                subs = [Subscriber(NAME, registry=reg, policy="block", buffer=100,
                                   listen="tcp://127.0.0.1:0") for _ in range(3)]
                try:
                    with Publisher(NAME, registry=reg) as pub:
                        pub.publish_many(("t", i) for i in range(200))
                        pub.flush(30)
                        for sub in subs:
                            assert [sub.receive(timeout=30).body for _ in range(200)] == \
                                list(range(200))
                        hanging.armed.set()
                        doomed.popen.kill()         # no unsubscription: its lane finds out
                        doomed.popen.wait(10)
                        sent = 200              # until the channel finds out and asks
                        for _ in range(200):
                            pub.publish("t", sent)
                            pub.flush(30)
                            sent += 1
                            if hanging.entered.wait(0.1):
                                break
                        assert hanging.entered.is_set(), "the channel asked about the name"
                        pub.publish_many(("t", i) for i in range(sent, sent + 500))
                        pub.flush(30)
                        sent += 500
                    for sub in subs:                # while the lookup still hangs
                        assert [sub.receive(timeout=15).body for _ in range(200, sent)] == \
                            list(range(200, sent))
                    assert not hanging.released.is_set()
                    hanging.released.set()
                    wait_until(lambda: hanging.name not in channel.core.subscriptions, 30,
                               "the killed subscriber's subscription ended")
                finally:
                    hanging.released.set()
                    for sub in subs:
                        sub.close()
            finally:
                doomed.close()


class AskedLookups:
    """A registry that notes every name it is asked to look up."""

    def __init__(self, registry: posa.RegistryClient) -> None:
        self.registry = registry
        self.asked: set[str] = set()
        self.changed = threading.Condition()

    def lookup(self, name: str) -> posa.Registration:
        with self.changed:
            self.asked.add(name)
            self.changed.notify_all()
        return self.registry.lookup(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.registry, attr)


@pytest.mark.timeout(60)
def test_first_contact_with_a_subscriber_begins_before_any_event(dispatcher: str) -> None:
    """The channel resolves (and connects to) a new subscriber as soon as it
    subscribes, so its first event does not wait for the registry."""
    with posa.RegistryClient(dispatcher) as reg:
        asked = AskedLookups(reg)
        with EventChannel(NAME, registry=asked,    # type: ignore[arg-type]
                          listen="tcp://127.0.0.1:0") as channel, \
                Subscriber(NAME, registry=reg, listen="tcp://127.0.0.1:0") as sub:
            with asked.changed:
                assert asked.changed.wait_for(lambda: sub.name in asked.asked, 30)
            assert channel.seq == 0                 # nothing was published
            with Publisher(NAME, registry=reg) as pub:
                pub.publish("t", "first")
                pub.flush(30)
            assert sub.receive(timeout=30).body == "first"
            assert sorted(asked.asked) == [sub.name]    # asked once: the stream stays


@pytest.mark.timeout(60)
def test_a_publisher_resolves_its_channel_before_its_first_event(dispatcher: str) -> None:
    """A new publisher resolves (and connects to) its channel at once, in its
    sending thread, so its first event does not wait for the registry."""
    with posa.RegistryClient(dispatcher) as reg, \
            EventChannel(NAME, registry=reg, listen="tcp://127.0.0.1:0"), \
            Subscriber(NAME, registry=reg, listen="tcp://127.0.0.1:0") as sub:
        asked = AskedLookups(reg)
        with Publisher(NAME, registry=asked) as pub:  # type: ignore[arg-type]
            with asked.changed:
                assert asked.changed.wait_for(lambda: NAME in asked.asked, 30)
            pub.publish("t", "first")
            pub.flush(30)
        assert sub.receive(timeout=30).body == "first"
        assert sorted(asked.asked) == [NAME]
