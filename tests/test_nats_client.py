"""posa's own NATS client (posa.transport.nats.client) on real nats-server
processes: its ping lease gives a SIGSTOPped server up (no RST, no FIN: only
silence) and comes back once it answers again; it fails over to a server it
learned from an INFO's connect_urls, which the address never named; it lends
its socket to a reactor that watches one of its listeners, and takes it back."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posa.errors import TransportError
from posa.transport import Options
from posa.transport.testing.support import DEADLINE, Endpoints, seq
from tests.natsserver import NatsCluster
from tests.support import wait_until
from tests.test_nats_transport import round_trip

pytestmark = pytest.mark.timeout(120)


def test_the_ping_lease_gives_a_stopped_server_up_and_reconnects_once_it_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One server, SIGSTOPped: nothing is sent, so only the client's own PINGs
    (0.5 s apart here) can find it silent. Two go unanswered: the connection ends
    with TransportError naming them. After SIGCONT the client is back on the
    server and a new connection round-trips."""
    from posa.transport.nats import link

    monkeypatch.setattr(link, "PING_INTERVAL", 0.5)
    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        server = lone.servers[0]
        listener = ends.listen(lone.urls, Options())
        connection = ends.connect(listener.address, Options())
        connection.send(b"before")
        route, frame = listener.recv(DEADLINE)
        assert frame == b"before"
        server.signal(signal.SIGSTOP)
        try:
            with pytest.raises(TransportError, match="PINGs went unanswered"):
                connection.recv(DEADLINE)
        finally:
            server.signal(signal.SIGCONT)
        client = connection._link.client            # type: ignore[attr-defined]
        wait_until(lambda: client.connected, DEADLINE, "the client back on its server")
        round_trip(ends, listener)


def test_the_client_fails_over_to_a_server_it_learned_from_info(tmp_path: Path) -> None:
    """The address names one node of three; the listener is on another. The
    client learns the others from the INFO's connect_urls; that node is
    SIGKILLed, the connection ends, and a new connection on the same address
    reaches the listener through a node the address never named."""
    with NatsCluster(tmp_path, size=3) as cluster, Endpoints() as ends:
        named, _, third = cluster.servers
        listener = ends.listen(third.url, Options())
        subject = listener.address.rsplit("/", 1)[1]
        only = f"nats://127.0.0.1:{named.port}/{subject}"
        connection = ends.connect(only, Options())
        client = connection._link.client            # type: ignore[attr-defined]
        wait_until(lambda: len(client.candidates) >= 3, DEADLINE,
                   "the other nodes learned from INFO")
        connection.send(b"through the named node")
        assert listener.recv(DEADLINE)[1] == b"through the named node"
        named.kill()
        with pytest.raises(TransportError):
            connection.recv(DEADLINE)
        wait_until(lambda: client.connected, DEADLINE, "the client on another node")
        assert client.server != f"127.0.0.1:{named.port}"
        again = ends.connect(only, Options(send_timeout=20.0))
        again.send(b"through a learned node")
        route, frame = listener.recv(DEADLINE)
        assert frame == b"through a learned node"
        listener.send(route, b"answer")
        assert again.recv(DEADLINE) == b"answer"


class Watched:
    """A listener in a reactor: what its drain got, and on which threads the
    client's socket was read for it (its subscription's callback ran)."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.got: list[bytes] = []
        self.routes: list[Any] = []
        self.readers: set[str] = set()
        self.lock = threading.Lock()
        client = listener._link.client
        subject, callback = client._subs[listener._sub]

        def reading(msg: Any) -> None:
            self.readers.add(threading.current_thread().name)
            callback(msg)

        client._subs[listener._sub] = (subject, reading)

    def drain(self) -> None:
        for _ in range(10_000):
            item = self.listener.recv_nowait()
            if item is None:
                return
            with self.lock:
                self.routes.append(item[0])
                self.got.append(item[1])

    def count(self) -> int:
        with self.lock:
            return len(self.got)


@contextlib.contextmanager
def lent_to_a_reactor(tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    """A one-node cluster and a listener attached to a reactor ("lender"), drained by
    a ``Watched``; yields (cluster, endpoints, listener, watched, client, reactor)
    once the client's socket is lent to the reactor."""
    from posa.runtime.reactor import Reactor

    reactor = Reactor("lender")
    reactor.start()
    try:
        with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
            listener = ends.listen(lone.urls, Options())
            watched = Watched(listener)
            client = listener._link.client
            reactor.add_source(listener, watched.drain)
            wait_until(lambda: client.watch.lent, DEADLINE, "the socket lent")
            yield lone, ends, listener, watched, client, reactor
    finally:
        reactor.close()


def test_a_reactor_is_lent_the_clients_socket_and_gives_it_back(tmp_path: Path) -> None:
    """A listener attached to a reactor lends it the client's socket: the frames
    are read, parsed and drained on the reactor's thread. The server restarts
    meanwhile: the socket dialled then is the reactor's too. Removed from the
    reactor, the listener gives the socket back to the client's own thread, and
    frames go on arriving, in order."""
    with lent_to_a_reactor(tmp_path) as (lone, ends, listener, watched, client, reactor):
        connection = ends.connect(listener.address, Options())
        for i in range(50):
            connection.send(seq(i))
        wait_until(lambda: watched.count() == 50, DEADLINE, "50 frames drained")
        assert watched.readers == {"lender"}, watched.readers
        lone.servers[0].kill()
        lone.servers[0].start()
        again = ends.connect(listener.address, Options(send_timeout=20.0))
        again.send(b"after the restart")
        wait_until(lambda: watched.count() == 51, DEADLINE, "a frame after the restart")
        assert watched.readers == {"lender"} and client.watch.lent
        reactor.remove_source(listener)
        assert not client.watch.lent
        again.send(b"given back")
        assert listener.recv(DEADLINE)[1] == b"given back"
        assert watched.readers == {"lender", "posa-nats"}, watched.readers
        assert watched.got == [seq(i) for i in range(50)] + [b"after the restart"]


def reader_of(connection: Any) -> list[str]:
    """The threads on which ``connection``'s subscription callback ran (appended)."""
    client = connection._link.client
    subject, callback = client._subs[connection._sub]
    readers: list[str] = []

    def reading(msg: Any) -> None:
        readers.append(threading.current_thread().name)
        callback(msg)

    client._subs[connection._sub] = (subject, reading)
    return readers


def test_a_thread_waiting_for_its_connection_reads_the_socket_itself(tmp_path: Path) -> None:
    """The socket is lent to a reactor; a thread waiting for a frame on a
    connection of the same client reads the socket itself: the answer is read on
    that thread, not handed over by the reactor's. Meanwhile it also reads what
    comes for the listener, and the reactor, which does not read the socket
    while the waiting thread does, still gets every frame of it (the waiting
    thread wakes it); once the thread has its answer the reactor reads again."""
    with lent_to_a_reactor(tmp_path) as (lone, ends, listener, watched, client, reactor):
        asking, other = (ends.connect(listener.address, Options()) for _ in range(2))
        asking.send(b"ask")
        wait_until(lambda: watched.count() == 1, DEADLINE, "the question drained")
        readers, woke = reader_of(asking), []
        waiter = threading.Thread(target=lambda: woke.append(
            asking.wait_readable(DEADLINE)), name="waiter")   # type: ignore[attr-defined]
        waiter.start()
        wait_until(lambda: client.watch.reader == waiter.ident, DEADLINE,
                   "the waiting thread reading the socket")
        for i in range(20):
            other.send(seq(i))
        wait_until(lambda: watched.count() == 21, DEADLINE, "20 frames drained")
        assert "waiter" in watched.readers, watched.readers
        listener.send(watched.routes[0], b"answer")
        waiter.join(DEADLINE)
        assert woke == [True] and readers == ["waiter"], (woke, readers)
        assert asking.recv_nowait() == b"answer" and not client.watch.reader
        other.send(b"after")
        wait_until(lambda: watched.count() == 22, DEADLINE, "a frame after")
        assert watched.got[1:] == [seq(i) for i in range(20)] + [b"after"]


def test_a_callback_that_raises_on_a_waiting_thread_is_logged_not_raised_there(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A thread reading the socket for itself also runs other subscriptions'
    callbacks; one that raises is logged, as on the loop's thread, and the
    waiting thread goes on to get its own frame."""
    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        listener = ends.listen(lone.urls, Options())
        connection = ends.connect(listener.address, Options())
        link = connection._link                     # type: ignore[attr-defined]
        client = link.client

        def broken(msg: Any) -> None:
            raise RuntimeError("a broken callback")

        link.subscribe("posa.test.broken", broken, DEADLINE)
        connection.send(b"ask")
        route, _ = listener.recv(DEADLINE)
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(
            connection.wait_readable(DEADLINE)))    # type: ignore[attr-defined]
        waiter.start()
        wait_until(lambda: client.watch.reader == waiter.ident, DEADLINE,
                   "the waiting thread reading the socket")
        link.control("posa.test.broken", b"boom")
        wait_until(lambda: "a broken callback" in caplog.text, DEADLINE, "the error logged")
        listener.send(route, b"answer")
        waiter.join(DEADLINE)
        assert woke == [True] and connection.recv_nowait() == b"answer"


def test_a_thread_reading_for_its_connection_hears_the_link_lost_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread waits for a frame, reading the socket itself; the server is
    SIGSTOPped, so nothing arrives and the ping lease, on the loop's thread,
    gives the server up: the waiting thread wakes (long before its own timeout)
    and the connection says why it ended."""
    from posa.transport.nats import link

    monkeypatch.setattr(link, "PING_INTERVAL", 0.5)
    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        server = lone.servers[0]
        listener = ends.listen(lone.urls, Options())
        connection = ends.connect(listener.address, Options())
        client = connection._link.client            # type: ignore[attr-defined]
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(
            connection.wait_readable(600.0)))       # type: ignore[attr-defined]
        waiter.start()
        wait_until(lambda: client.watch.reader == waiter.ident, DEADLINE,
                   "the waiting thread reading the socket")
        server.signal(signal.SIGSTOP)
        try:
            waiter.join(DEADLINE)
            assert woke == [True], "the waiting thread did not wake"
            with pytest.raises(TransportError, match="PINGs went unanswered"):
                connection.recv_nowait()
        finally:
            server.signal(signal.SIGCONT)
            waiter.join(DEADLINE)


def test_a_server_requiring_authentication_is_refused_saying_so(tmp_path: Path) -> None:
    """A nats:// address carries no credentials and the client speaks no TLS: a
    server whose INFO requires either is refused, and the error says which."""
    import socket
    import subprocess

    from posa import transport
    from tests.natsserver import binary
    from tests.support import free_port

    port = free_port()
    server = subprocess.Popen([binary(), "-a", "127.0.0.1", "-p", str(port),
                               "--auth", "secret"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def accepting() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_until(accepting, DEADLINE, "nats-server up")
        with pytest.raises(TransportError, match="requires authentication"):
            transport.listen(f"nats://127.0.0.1:{port}", Options(send_timeout=1.0))
    finally:
        server.terminate()
        server.wait(10)
