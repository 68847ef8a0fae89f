"""inproc:// in a forked child: the parent's listeners and connections are copies
there that no thread reads, so the child is told at once (a send, a receive, a
connect to one of the parent's names) instead of queueing frames nobody takes; it
reaches the inproc listeners it makes itself, and nothing it does wakes or
changes the parent's endpoints."""
from __future__ import annotations

import threading
from typing import Any

import pytest

import posa
from posa.errors import Closed, Timeout, TransportError
from posa.transport import Options
from posa.transport.inproc import InprocTransport
from posa.transport.inproc import listener as table
from posa.wire.codec import Kind, Message
from tests.forking import Forked, closes_waking_no_poller, held_by_a_thread, quiet

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0         # s: far more than a child needs
PARENTS = "is the parent process's"


def test_a_child_is_told_that_inherited_inproc_endpoints_are_the_parents() -> None:
    """The child's send, receive and connect fail at once, saying so; it closes
    the copies (though threads of the parent held their locks at the fork) and
    listens on the same name itself. The parent's descriptors were not written:
    its poller does not wake, and its connection goes on."""
    transport = InprocTransport()
    listener = transport.listen("inproc://fork-a", Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    assert listener.recv(DEADLINE)[1] == b"before"
    assert listener.recv_nowait() is None and quiet(listener)

    def in_the_child() -> None:
        for use in (lambda: conn.send(b"child"), listener.recv_nowait, conn.recv_nowait,
                    lambda: listener.send(1, b"child"),
                    lambda: transport.connect(listener.address, Options())):
            with pytest.raises(TransportError, match=PARENTS):
                use()
        conn.close()
        listener.close()
        own = transport.listen(listener.address, Options())
        mine = transport.connect(own.address, Options())
        mine.send(b"child's own")
        assert own.recv(DEADLINE)[1] == b"child's own"

    try:
        with held_by_a_thread(listener._lock), held_by_a_thread(table.listeners_lock), \
                held_by_a_thread(listener._fd_lock), Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        assert quiet(listener) and quiet(conn)
        conn.send(b"after")
        assert listener.recv(DEADLINE) == (1, b"after")
        assert listener.recv_nowait() is None
    finally:
        conn.close()
        listener.close()


def test_a_childs_close_of_inherited_inproc_endpoints_wakes_no_parents_poller() -> None:
    """The endpoints' wake-up eventfds are shared with the parent, whose flag says
    nothing is signalled: a write from the child would leave them readable (a
    poller of the parent's woken on every turn) until the parent's next frame."""
    transport = InprocTransport()
    listener = transport.listen("inproc://fork-c", Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    listener.send(listener.recv(DEADLINE)[0], b"back")
    assert conn.recv(DEADLINE) == b"back"
    try:
        closes_waking_no_poller(listener, conn)
    finally:
        conn.close()
        listener.close()


def test_a_connection_whose_listener_the_parent_closed_is_closed_in_the_child() -> None:
    """The listener is gone from the parent's table, its connection still open in
    the parent (dropped, its frames read): in the child that connection is the
    parent's too. Its use says so, its close returns at once though a thread of
    the parent held the listener's lock at the fork, and writes no descriptor of
    the parent's (whose poller would wake for nothing)."""
    transport = InprocTransport()
    listener = transport.listen("inproc://fork-d", Options())
    conn = transport.connect(listener.address, Options())
    conn.fileno()
    conn.send(b"before")
    listener.send(listener.recv(DEADLINE)[0], b"back")
    listener.close()
    assert conn.recv(DEADLINE) == b"back"
    with pytest.raises(Closed, match="was closed"):
        conn.recv_nowait()
    assert quiet(conn)

    def in_the_child() -> None:
        for use in (lambda: conn.send(b"child"), conn.recv_nowait):
            with pytest.raises(Closed, match=PARENTS):
                use()
        conn.close()

    try:
        with held_by_a_thread(listener._lock), held_by_a_thread(conn._fd_lock), \
                Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        assert quiet(conn), "the parent's poller was woken"
    finally:
        conn.close()


@pytest.fixture
def registry() -> Any:
    with posa.LocalRegistry() as reg:
        yield reg


def test_a_child_sending_through_an_inherited_inproc_peer_reaches_only_its_own(
        registry: posa.LocalRegistry) -> None:
    """A send to the parent's inproc peer ends in Timeout within the send's
    timeout, saying why; a peer the child makes is reached through the same
    inherited peer. The parent's sink gets only the parent's messages."""
    got: list[Any] = []

    def sink_handler(msg: Message) -> Any:
        if msg.kind == Kind.SEND:
            got.append(msg.body)
        return msg.body

    with posa.Peer("lab/inproc-sink", registry=registry, listen="inproc://fork-sink") as sink, \
            posa.Peer("lab/inproc-tx", registry=registry, listen="inproc://fork-tx") as peer:
        sink.serve(sink_handler)
        peer.send("lab/inproc-sink", "before")
        assert peer.request("lab/inproc-sink", "asked", timeout=DEADLINE) == "asked"

        def in_the_child() -> None:
            with pytest.raises(Timeout, match=PARENTS):
                peer.send("lab/inproc-sink", "child", timeout=0.5)
            with posa.Peer("lab/inproc-own", registry=registry,
                           listen="inproc://fork-own") as own:
                received = threading.Event()
                own.serve(lambda msg: received.set())
                peer.send("lab/inproc-own", "to my own", timeout=DEADLINE)
                assert received.wait(DEADLINE)
            peer.close()
            sink.close()

        with Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        peer.send("lab/inproc-sink", "after")
        assert peer.request("lab/inproc-sink", "again", timeout=DEADLINE) == "again"
        peer.flush(DEADLINE)
        assert got == ["before", "after"]


def test_a_child_may_listen_on_a_parents_inproc_name_and_close_it() -> None:
    """Once the child listens on a name of the parent's, it is the child's: its
    own close says closed, not the parent's."""
    transport = InprocTransport()
    listener = transport.listen("inproc://fork-b", Options())

    def in_the_child() -> None:
        own = transport.listen(listener.address, Options())
        own.close()
        with pytest.raises(Closed, match="is closed; listen again"):
            own.recv_nowait()
        with pytest.raises(TransportError, match="no inproc listener named"):
            transport.connect(listener.address, Options())

    try:
        with Forked(in_the_child) as child:
            assert child.outcome() == "ok"
    finally:
        listener.close()
