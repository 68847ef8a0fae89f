"""A Peer (and the sender, forwarders and listeners it owns) closed in a forked
child touches only the child: the parent's name stays registered to the parent,
the parent keeps serving and sending, and the child's close returns at once,
whatever threads of the parent (absent in the child) were doing at the fork."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import posa
from posa.delivery.sender import Sender
from posa.naming.registration import resolver
from posa.runtime.reactor import Reactor
from tests.forking import Forked, held_by_a_thread

pytestmark = pytest.mark.timeout(60)

NAME = "lab/fork-peer"
CLOSE_DEADLINE = 5.0    # s: far more than a child's close needs (the bug took 20 s)
LEASE = 600.0           # s: no renewal in a test, which would register a name again


def in_a_child_within(act: Callable[[], object], deadline: float = CLOSE_DEADLINE
                      ) -> bool | str:
    """Run ``act`` in a child forked now (``Forked``): True if it returned within
    ``deadline`` s, else why not (a child still busy then is killed)."""
    with Forked(act) as child:
        said = child.outcome(deadline)
    return True if said == "ok" else said


def echo(msg: Any) -> Any:
    return msg.body


def test_a_child_closing_an_inherited_peer_leaves_the_parents_name_and_service(
        dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer(NAME, registry=reg, listen="tcp://127.0.0.1:0",
                      lease=LEASE) as peer, \
            posa.RegistryClient(dispatcher) as creg, \
            posa.Peer("lab/fork-peer-client", registry=creg,
                      listen="tcp://127.0.0.1:0") as client:
        peer.serve(echo)
        assert client.request(NAME, "one", timeout=10.0) == "one"
        peer.send("lab/fork-peer-client", "zero", timeout=10.0)
        assert client.receive(10.0).body == "zero"
        epoch = peer.epoch
        sockets = [peer.listeners[0]._sock,     # type: ignore[attr-defined]
                   peer.sender.forwarder()._targets["lab/fork-peer-client"].conn._sock]

        def close() -> None:
            peer.close()
            if any(sock.fileno() != -1 for sock in sockets):
                raise AssertionError("the child's copies of the descriptors left open")

        assert in_a_child_within(close) is True
        with posa.RegistryClient(dispatcher, cache=False) as third:
            registration = third.lookup(NAME)
        assert registration.epoch == epoch and registration.addresses == peer.addresses
        assert client.request(NAME, "two", timeout=10.0) == "two"
        peer.send("lab/fork-peer-client", "three", timeout=10.0)   # its sender too
        assert client.receive(10.0).body == "three"


def test_a_child_closes_an_inherited_peer_while_parents_threads_held_its_locks(
        dispatcher: str) -> None:
    """A thread of the parent sending (the forwarder's lock) or making a forwarder
    (the sender's) at the fork is not in the child: its close does not wait for
    them."""
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer(NAME, registry=reg, listen="tcp://127.0.0.1:0") as peer, \
            posa.RegistryClient(dispatcher) as creg, \
            posa.Peer("lab/fork-peer-client", registry=creg,
                      listen="tcp://127.0.0.1:0") as client:
        peer.serve(echo)
        client.send(NAME, "one", timeout=10.0)
        fwd = client.sender.forwarder()
        with held_by_a_thread(fwd.lock), held_by_a_thread(client.sender._lock):
            assert in_a_child_within(client.close) is True
        assert client.request(NAME, "two", timeout=10.0) == "two"


def test_a_child_closing_an_inherited_sender_neither_flushes_nor_waits(
        dispatcher: str) -> None:
    """What the parent sent is not acknowledged yet at the fork (the receiving
    peer's reactor is busy): the child's close does not flush it (its linger would
    resend on the parent's connections and read their acknowledgements) nor wait
    for it; the parent's unacknowledged messages stay the parent's to deliver."""
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer(NAME, registry=reg, listen="tcp://127.0.0.1:0") as peer, \
            posa.RegistryClient(dispatcher) as creg:
        sender = Sender("", resolve=resolver(creg))
        try:
            with reactor_held(peer.reactor):
                sender.send(NAME, "one", timeout=10.0)
                assert sender.unacknowledged() == 1
                assert in_a_child_within(lambda: sender.close(linger=30.0)) is True
            sender.flush(10.0)
            assert peer.receive(10.0).body == "one"
            peer.serve(echo)
            assert sender.request(NAME, "two", timeout=10.0).body == "two"
        finally:
            sender.close()


@contextlib.contextmanager
def reactor_held(reactor: Reactor) -> Iterator[None]:
    """``reactor``'s thread busy for the block: its sources are not read."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30.0)

    reactor.call_soon(hold)
    try:
        assert held.wait(10.0)
        yield
    finally:
        release.set()
