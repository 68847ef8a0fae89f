"""posa's own NATS client (posa.transport.nats.client) on real nats-server
processes: its ping lease gives a SIGSTOPped server up (no RST, no FIN: only
silence) and comes back once it answers again; it fails over to a server it
learned from an INFO's connect_urls, which the address never named."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from posa.errors import TransportError
from posa.transport import Options
from posa.transport.testing.support import DEADLINE, Endpoints
from tests.natsserver import NatsCluster
from tests.support import wait_until

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
        again = ends.connect(listener.address, Options(send_timeout=20.0))
        again.send(b"after")
        route, frame = listener.recv(DEADLINE)
        assert frame == b"after"
        listener.send(route, b"answer")
        assert again.recv(DEADLINE) == b"answer"


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
