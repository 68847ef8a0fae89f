"""A close from another thread ends a read waiting in ``recv_within`` even when the
far side never ends its own (a dispatcher stopped or hung): the read does not
wait out its receive timeout, and the socket is given up once the read is over.

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from posa.errors import Closed
from posa.transport import Options
from posa.transport.tcp import TcpConnection, TcpTransport

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0                      # seconds any single wait may take
FOREVER = 3600.0                 # a read's timeout far beyond every wait here


@pytest.fixture
def hung() -> Iterator[tuple[TcpConnection, socket.socket]]:
    """A connection whose reads block, to a raw peer that accepts it and then
    neither reads, writes nor closes (as a stopped process would)."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = server.getsockname()[1]
        connection = TcpTransport().connect(f"tcp://127.0.0.1:{port}",
                                            Options(linger=0.0, send_timeout=0.2))
        stack.callback(connection.close)
        server.settimeout(WAIT)
        accepted, _ = server.accept()
        stack.enter_context(accepted)
        if not connection.block_reads():
            pytest.skip("reads cannot block here")
        yield connection, accepted


def test_a_close_ends_a_read_whose_peer_never_ends_its_side(
        hung: tuple[TcpConnection, socket.socket]) -> None:
    connection, _ = hung
    outcome: list[BaseException | bytes | None] = []
    started = threading.Event()

    def reading() -> None:
        started.set()
        try:
            for _ in range(100):
                frame = connection.recv_within(FOREVER)
                if frame is not None:
                    outcome.append(frame)
                    return
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=reading, daemon=True)
    reader.start()
    assert started.wait(WAIT)
    # the reader is in (or about to enter) its read: close must end it either way
    connection.close()
    reader.join(WAIT)
    assert not reader.is_alive(), "the read waited on after close"
    assert len(outcome) == 1 and isinstance(outcome[0], Closed), outcome
    assert connection._released        # given to the reaper once the read was over
