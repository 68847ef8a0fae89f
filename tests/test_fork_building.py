"""A fork while another thread is building an endpoint: the endpoint is not yet
known where the fork hooks look (a zmq listener bound but not yet an endpoint, a
nats connection on its link but not yet set up). The child must neither hang nor
keep a copy of the parent's sockets, and its own endpoints work; the parent's
thread finishes building, and the endpoint works in the parent."""
from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import posa
from posa import transport
from posa.transport import Options
from posa.transport.nats import link as links
from posa.transport.zmq import ZmqTransport
from posa.transport.zmq import address as zmq_address
from posa.transport.zmq import listener as zmq_listener
from tests.forking import Forked, holds_no_copy
from tests.natsserver import NatsCluster
from tests.test_fork_zmq import bound_again

pytestmark = pytest.mark.timeout(90)

DEADLINE = 20.0         # s: far more than either process needs


_at_fork: list[threading.Event] = []     # set at the next fork, before posa's hooks


def _release_at_fork() -> None:
    while _at_fork:
        _at_fork.pop().set()


os.register_at_fork(before=_release_at_fork)    # (registered last, so run first)


class Paused:
    """``build`` run by a thread of its own, paused where ``wrap`` puts the pause
    (in that thread only) until ``finish``; ``built`` is what it returned (or
    raised)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.reached, self._go_on = threading.Event(), threading.Event()
        self.built: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(build,))

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def paused(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is self._thread:     # (not the child's own)
                self.reached.set()
                self._go_on.wait(DEADLINE)
            return fn(*args, **kwargs)
        return paused

    def _run(self, build: Callable[[], Any]) -> None:
        try:
            self.built.append(build())
        except BaseException as exc:        # handed to the test
            self.built.append(exc)

    def start(self) -> None:
        self._thread.start()
        assert self.reached.wait(DEADLINE), "the building thread did not get there"

    def go_on_at_fork(self) -> None:
        """Let the building thread go on once the next fork has begun (its first
        hook), but before the fork itself."""
        _at_fork.append(self._go_on)

    def finish(self) -> Any:
        self._go_on.set()
        self._thread.join(DEADLINE)
        assert self.built, "the building thread did not finish"
        return self.built[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats-fork-building"), size=1) as running:
        yield running


def exchange_on_own(urls: str) -> None:
    """(in the child) Endpoints of the child's own work."""
    own = transport.listen(urls, Options())
    mine = transport.connect(own.address, Options())
    mine.send(b"child's own")
    assert own.recv(DEADLINE)[1] == b"child's own"
    mine.close()
    own.close()


def test_a_fork_while_a_thread_connects_over_nats(
        cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection is on the link (it hears the link's events) but not set up
    yet: the child's fork hook closes it and every other endpoint, and the child's
    copy of the client's socket."""
    listener = transport.listen(cluster.urls, Options())
    sock = listener._link.client.sock           # type: ignore[attr-defined]
    assert sock is not None
    fd = sock.fileno()
    building = Paused(lambda: transport.connect(listener.address, Options()))
    monkeypatch.setattr(links.Link, "ready", building.wrap(links.Link.ready))
    try:
        building.start()

        def in_the_child() -> None:
            holds_no_copy(fd)
            exchange_on_own(cluster.urls)

        with Forked(in_the_child) as child:
            assert child.outcome() == "ok"
        conn = building.finish()
        conn.send(b"after")
        assert listener.recv(DEADLINE)[1] == b"after"
        conn.close()
    finally:
        building.finish()
        listener.close()


@pytest.mark.parametrize("kind", ["zmq+tcp", "zmq+ipc"])
def test_a_fork_while_a_thread_binds_a_zmq_listener(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket is bound, the endpoint not made yet, as the fork begins: the
    child holds no copy of the listening socket (once the parent closes the
    listener, the child still running, the parent binds the address again), and
    opens endpoints of its own."""
    zmq = ZmqTransport()
    listen = "zmq+tcp://127.0.0.1:0" if kind == "zmq+tcp" else f"zmq+ipc://{tmp_path}/b.ipc"
    building = Paused(lambda: zmq.listen(listen, Options()))
    monkeypatch.setattr(zmq_listener, "posa_address",
                        building.wrap(zmq_address.posa_address))
    go_read, go_write = os.pipe()

    def in_the_child() -> None:
        own = zmq.listen(listen.replace("b.ipc", "c.ipc"), Options())
        mine = zmq.connect(own.address, Options())
        mine.send(b"child's own")
        assert own.recv(DEADLINE)[1] == b"child's own"
        select.select([go_read], [], [], DEADLINE)

    try:
        building.start()
        building.go_on_at_fork()
        with Forked(in_the_child) as child:
            listener = building.finish()
            listener.close()
            bound_again(zmq, listener.address)
            os.write(go_write, b"go")
            assert child.outcome() == "ok"
    finally:
        building.finish()
        os.close(go_read)
        os.close(go_write)


@pytest.mark.parametrize("kind", ["tcp", "inproc", "zmq+tcp", "nats"])
def test_a_fork_while_a_thread_makes_a_peer(
        kind: str, cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer listens, and is being registered, at the fork: the child makes a
    peer of its own and requests through it, and exits; the parent's thread
    makes its peer, which serves."""
    listen = {"tcp": "tcp://127.0.0.1:0", "inproc": "inproc://fork-building-{}",
              "zmq+tcp": "zmq+tcp://127.0.0.1:0", "nats": cluster.urls}[kind]
    with posa.LocalRegistry() as registry:
        building = Paused(lambda: posa.Peer("lab/building", registry=registry,
                                            listen=listen.format("parent")))
        monkeypatch.setattr(registry, "register", building.wrap(registry.register))

        def in_the_child() -> None:
            with posa.Peer("lab/building-child", registry=registry,
                           listen=listen.format("child")) as own:
                own.serve(lambda msg: msg.body)
                assert own.request("lab/building-child", "mine", timeout=DEADLINE) == "mine"

        try:
            building.start()
            with Forked(in_the_child) as child:
                assert child.outcome() == "ok"
            with building.finish() as peer, \
                    posa.Peer("lab/building-asker", registry=registry) as asker:
                peer.serve(lambda msg: msg.body)
                assert asker.request("lab/building", "yours", timeout=DEADLINE) == "yours"
        finally:
            building.finish()
