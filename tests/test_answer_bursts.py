"""The answers to a run of pipelined requests go out together: ``TcpListener.send_many``
and the peer's intake, which holds a run's answers until the run is delivered."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import posa
import posa.aio
from posa.errors import Timeout, TransportError
from posa.transport import Options
from posa.transport.tcp import TcpListener, TcpTransport

WAIT = 10.0
TCP = TcpTransport()


@pytest.fixture
def pair() -> Iterator[tuple[TcpListener, Any]]:
    with contextlib.ExitStack() as stack:
        listener = TCP.listen("tcp://127.0.0.1:0", Options())
        stack.callback(listener.close)
        connection = TCP.connect(listener.address, Options())
        stack.callback(connection.close)
        yield listener, connection


def test_send_many_delivers_every_frame_in_order_in_one_write(
        pair: tuple[TcpListener, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    listener, connection = pair
    connection.send(b"hello")
    route, frame = listener.recv(WAIT)
    assert frame == b"hello"
    writes: list[int] = []
    send = socket.socket.send

    def counted(sock: socket.socket, data: Any, *flags: int) -> int:
        writes.append(len(data))
        return send(sock, data, *flags)
    monkeypatch.setattr(socket.socket, "send", counted)
    small = [b"answer %d " % i * (i + 1) for i in range(50)]
    listener.send_many(route, small)            # joined into one write
    assert len(writes) == 1
    large = [b"y" * 1000, b"x" * 100_000, b"z"]
    listener.send_many(route, large)            # queued, written in as few as it takes
    monkeypatch.undo()
    assert [connection.recv(WAIT) for _ in small + large] == small + large
    assert len(writes) <= 4


def test_send_many_to_a_gone_connection_raises(
        pair: tuple[TcpListener, Any]) -> None:
    listener, connection = pair
    connection.send(b"bye")
    route, _ = listener.recv(WAIT)
    connection.close()
    with pytest.raises(Timeout):
        listener.recv(0.05)                      # the listener sees the end of stream
    with pytest.raises(TransportError, match=f"connection {route} of .* is gone"):
        listener.send_many(route, [b"a", b"b"])


def test_a_run_of_requests_is_answered_in_one_call_of_send_many(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten tasks' requests travel in one BATCH (``posa.aio``); the server answers
    that run with one ``send_many`` carrying every answer, in order."""
    calls: list[list[bytes]] = []
    send_many = TcpListener.send_many

    def recorded(self: TcpListener, route: Any, frames: list[bytes]) -> None:
        calls.append(list(frames))
        send_many(self, route, frames)
    monkeypatch.setattr(TcpListener, "send_many", recorded)

    async def main() -> None:
        with posa.LocalRegistry() as reg:
            server = posa.Peer("burst/echo", registry=reg, listen="tcp://127.0.0.1:0",
                               handler=lambda m: m.body)
            try:
                async with posa.aio.Peer("burst/many", registry=reg,
                                         listen="tcp://127.0.0.1:0") as peer:
                    for round_ in range(3):
                        got = await asyncio.gather(*(
                            peer.request("burst/echo", round_ * 100 + k, timeout=30)
                            for k in range(10)))
                        assert got == [round_ * 100 + k for k in range(10)]
            finally:
                server.close()
    asyncio.run(main())
    assert calls and max(len(frames) for frames in calls) >= 2
