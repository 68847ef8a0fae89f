"""nats:// in a forked child (a real nats-server). The parent's client, its
socket and the loop thread that reads it are the parent's: the child sends and
requests through an inherited Peer on a client of its own; the parent's endpoints
are closed in the child at the fork, whose use says so and whose close returns at
once, though threads of the parent held the locks it would take; nothing the
child does wakes the parent's pollers; a child that just exits, through the
interpreter's own exit, neither hangs nor disturbs the parent."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from posa import transport
from posa.errors import Closed
from posa.transport import Options
from posa.transport.nats import link as links
from posa.transport.nats import loop
from tests.forking import (
    Forked,
    closes_waking_no_poller,
    held_by_a_thread,
    holds_no_copy,
    just_exits,
    quiet,
    sends_and_requests_at_once,
)
from tests.natsserver import NatsCluster

pytestmark = pytest.mark.timeout(120)

DEADLINE = 20.0         # s: far more than either process needs
ROUNDS = 100            # messages each process sends (one request every 10)
PARENTS = "the parent process's"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats-fork"), size=1) as running:
        yield running


def test_a_child_sends_and_requests_through_an_inherited_nats_peer(
        dispatcher: str, cluster: NatsCluster) -> None:
    """Parent and child send and request through one Peer at once (see
    ``sends_and_requests_at_once``)."""
    sends_and_requests_at_once(dispatcher, cluster.urls, "lab/fork-nats-tx", cluster.urls,
                               ROUNDS)


def test_a_child_is_told_that_inherited_nats_endpoints_are_the_parents(
        cluster: NatsCluster) -> None:
    """Threads of the parent hold the client's, the links' and the loop's locks at
    the fork. In the child, every use of the parent's endpoints raises Closed
    saying so, their close returns at once, and endpoints the child opens on the
    same servers work. The parent's descriptors were not written (its pollers do
    not wake) and its connection goes on."""
    listener = transport.listen(cluster.urls, Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    route, frame = listener.recv(DEADLINE)
    assert frame == b"before"
    assert listener.recv_nowait() is None and conn.recv_nowait() is None
    assert quiet(listener) and quiet(conn)
    client = listener._link.client      # type: ignore[attr-defined]

    def in_the_child() -> None:
        for use in (lambda: conn.send(b"child"), conn.recv_nowait,
                    listener.recv_nowait, lambda: listener.send(route, b"child")):
            with pytest.raises(Closed, match=PARENTS):
                use()
        conn.close()
        listener.close()
        own = transport.listen(cluster.urls, Options())
        mine = transport.connect(own.address, Options())
        mine.send(b"child's own")
        assert own.recv(DEADLINE)[1] == b"child's own"
        mine.close()
        own.close()

    try:
        with held_by_a_thread(client.lock), held_by_a_thread(links._links_lock), \
                held_by_a_thread(loop._lock), Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        assert quiet(listener) and quiet(conn), "the parent's poller was woken"
        listener.send(route, b"to the parent")
        assert conn.recv(DEADLINE) == b"to the parent"
        conn.send(b"after")
        assert listener.recv(DEADLINE) == (route, b"after")
    finally:
        conn.close()
        listener.close()


def test_a_childs_close_of_inherited_nats_endpoints_wakes_no_poller_of_the_parents(
        cluster: NatsCluster) -> None:
    """The endpoints' wake-up descriptors (eventfds) are shared with the parent:
    the child's close writes none of them."""
    listener = transport.listen(cluster.urls, Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    route, _ = listener.recv(DEADLINE)
    try:
        closes_waking_no_poller(listener, conn)
        listener.send(route, b"after")
        assert conn.recv(DEADLINE) == b"after"
    finally:
        conn.close()
        listener.close()


def test_the_childs_copy_of_the_clients_socket_is_closed(cluster: NatsCluster) -> None:
    """The child holds no copy of the parent's socket to the server: a child that
    did would keep the parent's connection open after the parent closed it."""
    listener = transport.listen(cluster.urls, Options())
    sock = listener._link.client.sock           # type: ignore[attr-defined]
    assert sock is not None
    fd = sock.fileno()

    def in_the_child() -> None:
        listener.close()
        holds_no_copy(fd)

    try:
        with Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        assert listener._link.client.sock is sock   # type: ignore[attr-defined]
    finally:
        listener.close()


def test_the_childs_copy_of_a_socket_the_parent_is_closing_is_closed(
        cluster: NatsCluster) -> None:
    """The last endpoint on a link is closed: the link has left the table of
    links, and its client's socket waits for the loop (a thread of the parent,
    busy at the fork) to close it. The child's copy is closed all the same: it
    would keep the parent's connection to the server open until the child exits."""
    listener = transport.listen(cluster.urls, Options())
    link = listener._link                       # type: ignore[attr-defined]
    sock = link.client.sock
    assert sock is not None
    fd = sock.fileno()
    busy, resume = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        resume.wait(DEADLINE)

    link.loop.call_soon(hold_the_loop)
    try:
        assert busy.wait(DEADLINE), "the loop did not take the hand-off"
        listener.close()                        # the link's last user
        assert link.client.sock is sock and link not in links._links.values()
        with Forked(lambda: holds_no_copy(fd)) as child:
            assert child.outcome() == "ok"
    finally:
        resume.set()
        listener.close()


@pytest.mark.parametrize("what", ["nothing", "send"])
def test_a_nats_child_that_just_exits_neither_hangs_nor_disturbs_the_parent(
        cluster: NatsCluster, what: str) -> None:
    """A fresh interpreter forks; its child exits through the interpreter's exit
    with the parent's peers (their client, socket and loop) open, having sent or
    not: it exits at once with status 0, and the parent's peers go on."""
    just_exits(cluster.urls, cluster.urls, what)
