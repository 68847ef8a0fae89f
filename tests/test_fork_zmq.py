"""zmq+tcp:// and zmq+ipc:// in a forked child. A libzmq context is not fork-safe
(its I/O thread is not in the child): the child sends and requests through an
inherited Peer on sockets of a context of its own; the parent's endpoints are
closed in the child at the fork, whose use says so and whose close returns at
once; the child's copies of the parent's sockets are closed (the parent's port is
free once the parent closes it, the child still running); a child that just
exits, through the interpreter's own exit, neither hangs nor disturbs the parent."""
from __future__ import annotations

import multiprocessing
import os
import select
import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import zmq

import posa
from posa.errors import Closed, PosaError
from posa.transport import Options
from posa.transport.zmq import Curve, ZmqListener, ZmqTransport, context, zap
from tests.forking import (
    SINK,
    Forked,
    held_by_a_thread,
    just_exits,
    sends_and_requests_at_once,
)
from tests.support import wait_until

pytestmark = pytest.mark.timeout(90)

DEADLINE = 20.0         # s: far more than either process needs
ROUNDS = 100            # messages each process sends (one request every 10)
PARENTS = "was opened in the parent process"


@pytest.fixture(params=["zmq+tcp", "zmq+ipc"])
def listen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh address to listen on: a free port, or a path of the test's own
    (``.replace("0.ipc", "1.ipc")`` makes a second one)."""
    yield "zmq+tcp://127.0.0.1:0" if request.param == "zmq+tcp" else \
        f"zmq+ipc://{tmp_path}/0.ipc"


def test_a_child_sends_and_requests_through_an_inherited_zmq_peer(
        dispatcher: str, tmp_path: Path, listen: str) -> None:
    """Parent and child send and request through one Peer at once (see
    ``sends_and_requests_at_once``)."""
    sends_and_requests_at_once(dispatcher, listen, "lab/fork-zmq-tx",
                               listen.replace("0.ipc", "1.ipc"), ROUNDS)


def test_a_child_is_told_that_inherited_zmq_endpoints_are_the_parents(
        listen: str) -> None:
    """A thread of the parent is blocked in a receive at the fork, others hold the
    listener's and the context's locks. In the child, every use of the parent's
    endpoints raises Closed saying so, their close returns at once, and endpoints
    the child opens work. The parent's blocked receive is not woken (its wake-up
    pipe was not written) and gets its frame; its connection goes on."""
    transport = ZmqTransport()
    listener = transport.listen(listen, Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    route, frame = listener.recv(DEADLINE)
    assert frame == b"before"
    got: list[bytes | PosaError] = []
    blocked = threading.Thread(target=lambda: got.append(conn.recv(DEADLINE)))

    def in_the_child() -> None:
        for use in (lambda: conn.send(b"child"), conn.recv_nowait, conn.pending,
                    listener.recv_nowait, lambda: listener.send(route, b"child")):
            with pytest.raises(Closed, match=PARENTS):
                use()
        conn.close()
        listener.close()
        own = transport.listen(listen.replace("0.ipc", "1.ipc"), Options())
        mine = transport.connect(own.address, Options())
        mine.send(b"child's own")
        assert own.recv(DEADLINE)[1] == b"child's own"
        mine.close()
        own.close()

    try:
        blocked.start()
        wait_until(lambda: conn._blocked, DEADLINE, "the parent's receive blocking")
        with held_by_a_thread(listener._lock), held_by_a_thread(context._ctx_lock), \
                Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        assert conn._wake is not None
        assert not select.select([conn._wake[0]], [], [], 0)[0], "the parent was woken"
        listener.send(route, b"to the parent")
        blocked.join(DEADLINE)
        assert got == [b"to the parent"]
        conn.send(b"after")
        assert listener.recv(DEADLINE) == (route, b"after")
    finally:
        conn.close()
        listener.close()
        blocked.join(DEADLINE)


def test_a_parent_closing_its_zmq_listener_frees_the_address_while_a_child_runs(
        listen: str) -> None:
    """The child holds no copy of the parent's listening or connected sockets: once
    the parent closes its listener (the child still running), the parent binds the
    same address again, and its peer's end of a connection sees the close."""
    transport = ZmqTransport()
    listener = transport.listen(listen, Options())
    conn = transport.connect(listener.address, Options())
    conn.send(b"before")
    assert listener.recv(DEADLINE)[1] == b"before"
    go_read, go_write = os.pipe()
    try:
        with Forked(lambda: select.select([go_read], [], [], DEADLINE)) as child:
            listener.close()
            bound_again(transport, listener.address)
            os.write(go_write, b"go")
            assert child.outcome() == "ok"
    finally:
        os.close(go_read)
        os.close(go_write)
        conn.close()
        listener.close()


def rebind(transport: ZmqTransport, address: str) -> ZmqListener | None:
    try:
        return transport.listen(address, Options())
    except PosaError:
        return None


def bound_again(transport: ZmqTransport, address: str) -> None:
    """Wait until ``address`` is free to bind again (bind it, and let it go)."""
    again = wait_until(lambda: rebind(transport, address), DEADLINE,
                       "the address free again")
    assert again is not None
    again.close()


@pytest.mark.parametrize("what", ["nothing", "send"])
def test_a_child_that_just_exits_neither_hangs_nor_disturbs_the_parent(
        listen: str, what: str) -> None:
    """A fresh interpreter forks; its child exits through the interpreter's exit
    with the parent's peers (and their zmq sockets and context) open, having sent
    or not: it exits at once with status 0, and the parent's peers go on, new
    connections to them too (the ipc path is still the parent's)."""
    just_exits(listen, listen.replace("0.ipc", "1.ipc"), what)


def test_a_child_listens_with_a_client_allowlist_though_the_zap_lock_was_held() -> None:
    """The ZAP handler and its lock are the parent's: a listener with a CURVE
    allowlist made in the child gets a handler of the child's own."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    curve = Curve(server_public, server_secret, clients=[client_public],
                  client_public=client_public, client_secret=client_secret)
    transport = ZmqTransport(curve)

    def in_the_child() -> None:
        listener = transport.listen("zmq+tcp://127.0.0.1:0", Options())
        conn = transport.connect(listener.address, Options())
        conn.send(b"allowed")
        assert listener.recv(DEADLINE)[1] == b"allowed"
        conn.close()
        listener.close()

    with held_by_a_thread(zap._lock), Forked(in_the_child) as child:
        assert child.outcome() == "ok"


def test_closing_the_childs_copies_leaves_the_parents_other_sockets_blocking(
        listen: str) -> None:
    """Under a default socket timeout, a socket object made from a descriptor is
    made non-blocking, which the parent's copy shares: the child's search for the
    copies of zmq sockets makes none, and closes no other socket."""
    transport = ZmqTransport()
    listener = transport.listen(listen, Options())
    mine, theirs = socket.socketpair()
    socket.setdefaulttimeout(5.0)
    try:
        def in_the_child() -> None:
            mine.sendall(b"the child's copy is open")

        with Forked(in_the_child) as child:
            assert child.outcome() == "ok"
    finally:
        socket.setdefaulttimeout(None)
        listener.close()
    try:
        assert os.get_blocking(mine.fileno()) and os.get_blocking(theirs.fileno())
        assert theirs.recv(64) == b"the child's copy is open"
    finally:
        mine.close()
        theirs.close()


def _request_from_a_worker(peer: posa.Peer, answers: Connection) -> None:
    answers.send(peer.request(SINK, "from the worker", timeout=DEADLINE))


def test_a_multiprocessing_worker_requests_through_an_inherited_zmq_peer(
        tmp_path: Path, listen: str) -> None:
    """What multiprocessing's fork start method does to a Peer made before it: the
    worker's request is answered, the worker exits with status 0 (multiprocessing's
    own exit: its finalizers, then ``os._exit``), and the parent goes on."""
    with posa.LocalRegistry() as registry, \
            posa.Peer(SINK, registry=registry, listen=listen) as receiver, \
            posa.Peer("lab/fork-mp", registry=registry,
                      listen=listen.replace("0.ipc", "1.ipc")) as peer:
        receiver.serve(lambda msg: msg.body)
        assert peer.request(SINK, "before", timeout=DEADLINE) == "before"
        mine, theirs = multiprocessing.get_context("fork").Pipe()
        worker = multiprocessing.get_context("fork").Process(
            target=_request_from_a_worker, args=(peer, theirs))
        worker.start()
        try:
            assert mine.poll(DEADLINE), "the worker did not answer"
            assert mine.recv() == "from the worker"
            worker.join(DEADLINE)
            assert worker.exitcode == 0
        finally:
            if worker.is_alive():
                worker.kill()
                worker.join()
            mine.close()
            theirs.close()
        assert peer.request(SINK, "after", timeout=DEADLINE) == "after"
