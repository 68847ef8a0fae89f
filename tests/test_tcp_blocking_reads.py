"""A tcp connection whose reads wait themselves (``TcpConnection.block_reads`` and
``recv_within``, what an uncached lookup's line waits with): frames arrive in
order, a read gives up at its timeout, a close from another thread ends it, and
no write ever waits on the now blocking socket.

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from posa.errors import Closed, Timeout
from posa.transport import Options
from posa.transport.tcp import TcpConnection, TcpListener, TcpTransport

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0                      # seconds any single wait may take
TCP = TcpTransport()


@pytest.fixture
def pair() -> Iterator[tuple[TcpListener, TcpConnection, Options]]:
    """A listener and a connection to it whose reads block (where they can)."""
    options = Options(high_water_mark=4, send_timeout=0.2, linger=0.0)
    with contextlib.ExitStack() as stack:
        listener = TCP.listen("tcp://127.0.0.1:0", options)
        stack.callback(listener.close)
        connection = TCP.connect(listener.address, options)
        stack.callback(connection.close)
        if not connection.block_reads():
            pytest.skip("reads cannot block here")
        yield listener, connection, options


def read(connection: TcpConnection, timeout: float) -> bytes | None:
    """The next frame, reading until one comes (a read may complete none: the
    listener's greeting) or a read gives up; at most 100 reads."""
    for _ in range(100):
        frame = connection.recv_within(timeout)
        if frame is not None:
            return frame
    return None


def test_frames_arrive_in_order_and_a_read_gives_up_at_its_timeout(
        pair: tuple[TcpListener, TcpConnection, Options]) -> None:
    listener, connection, _ = pair
    assert read(connection, 0.05) is None                # nothing was sent
    connection.send(b"hello")
    route, frame = listener.recv(WAIT)
    assert frame == b"hello"
    for n in range(3):                                   # may come in one read
        listener.send(route, b"answer %d" % n)
    got = [read(connection, WAIT) for _ in range(3)]
    assert got == [b"answer 0", b"answer 1", b"answer 2"]
    assert connection.recv_within(0.01) is None          # shrunk, then grown again:
    listener.send(route, b"later")
    assert connection.recv_within(WAIT) == b"later"


def test_no_write_waits_on_a_socket_whose_reads_block(
        pair: tuple[TcpListener, TcpConnection, Options]) -> None:
    """With nobody reading, send raises Timeout at the high-water mark as on a
    connection that polls (a write that waited in the kernel would hang here)."""
    listener, connection, _ = pair
    accepted = []
    for n in range(2000):                        # ~120 MiB: far beyond any buffer
        frame = n.to_bytes(4, "big") * 15_000
        try:
            connection.send(frame)
        except Timeout:
            break
        accepted.append(frame)
    else:
        pytest.fail("send never blocked although nobody read")
    assert [listener.recv(WAIT)[1] for _ in accepted] == accepted


def test_a_close_from_another_thread_ends_a_waiting_read(
        pair: tuple[TcpListener, TcpConnection, Options]) -> None:
    listener, connection, _ = pair
    connection.send(b"route please")
    listener.recv(WAIT)
    outcome: list[BaseException | bytes | None] = []
    started = threading.Event()

    def reading() -> None:
        started.set()
        try:
            outcome.append(read(connection, WAIT * 3))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=reading)
    reader.start()
    assert started.wait(WAIT)
    connection.close()               # the listener ends its side: the read sees it
    with contextlib.suppress(Timeout):
        listener.recv(0.5)           # (the listener notices the end as it polls)
    reader.join(WAIT)
    assert not reader.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], Closed), outcome
