"""What only the tcp transport promises: its wire bytes, bad peers dropped and
counted while good ones go on, IPv6, partial writes, backpressure, clean close.

The shared conformance suite (tests/test_transports.py) covers the contract.
Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from posa.errors import Closed, Timeout, TransportError
from posa.transport import Options
from posa.transport.framing import GREETING, encode_frame
from posa.transport.tcp import (
    TcpConnection,
    TcpListener,
    TcpTransport,
    format_address,
    parse_address,
)

WAIT = 10.0                      # seconds any single wait may take
TCP = TcpTransport()


@pytest.fixture
def opened() -> Iterator[Callable[..., object]]:
    """``opened(endpoint)`` closes the endpoint (listener, connection or raw
    socket) when the test ends."""
    with contextlib.ExitStack() as stack:
        def keep(endpoint: object) -> object:
            stack.callback(endpoint.close)  # type: ignore[attr-defined]
            return endpoint
        yield keep


def listen(opened: Callable[..., object], options: Options | None = None,
           address: str = "tcp://127.0.0.1:0") -> TcpListener:
    return opened(TCP.listen(address, options or Options()))  # type: ignore[return-value]


def connect(opened: Callable[..., object], listener: TcpListener,
            options: Options | None = None) -> TcpConnection:
    return opened(TCP.connect(listener.address, options or Options()))  # type: ignore[return-value]


def raw_socket(opened: Callable[..., object], listener: TcpListener) -> socket.socket:
    host, port = parse_address(listener.address)
    sock = socket.create_connection((host, port), timeout=WAIT)
    opened(sock)
    return sock


def closed_by_listener(sock: socket.socket) -> bool:
    """True once the listener has closed ``sock`` (end of stream or reset)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- addresses

@pytest.mark.parametrize("address, host, port", [
    ("tcp://127.0.0.1:7000", "127.0.0.1", 7000),
    ("tcp://localhost:0", "localhost", 0),
    ("tcp://[::1]:65535", "::1", 65535),
])
def test_parse_address(address: str, host: str, port: int) -> None:
    assert parse_address(address) == (host, port)
    assert format_address(host, port) == address


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://:7000", "tcp://::1:7000",
                                     "tcp://[::1]7000", "tcp://h:70000", "tcp://h:-1",
                                     "udp://127.0.0.1:7000", "127.0.0.1:7000"])
def test_malformed_address(address: str) -> None:
    with pytest.raises(TransportError, match="write it as tcp://HOST:PORT"):
        parse_address(address)


def test_port_zero_is_resolved(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    host, port = parse_address(listener.address)
    assert host == "127.0.0.1" and port != 0
    connection = connect(opened, listener)
    connection.send(b"hello")
    assert listener.recv(WAIT)[1] == b"hello"


def test_ipv6_loopback(opened: Callable[..., object]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    listener = listen(opened, address="tcp://[::1]:0")
    assert listener.address.startswith("tcp://[::1]:")
    connection = connect(opened, listener)
    connection.send(b"over v6")
    route, frame = listener.recv(WAIT)
    assert frame == b"over v6"
    listener.send(route, b"back")
    assert connection.recv(WAIT) == b"back"


def test_address_in_use(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    with pytest.raises(TransportError, match="address already in use.*port 0"):
        TCP.listen(listener.address, Options())


def test_connection_refused(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    address = listener.address
    listener.close()
    with pytest.raises(TransportError, match=f"cannot connect to {address}: connection "
                                             "refused; is a posa peer listening there"):
        TCP.connect(address, Options())


# --------------------------------------------------------------------------- wire bytes

def test_wire_bytes(opened: Callable[..., object]) -> None:
    """A peer speaking the documented bytes by hand is served."""
    listener = listen(opened)
    sock = raw_socket(opened, listener)
    sock.sendall(GREETING + encode_frame(b"by hand") + encode_frame(b""))
    route, frame = listener.recv(WAIT)
    assert frame == b"by hand"
    assert listener.recv(WAIT) == (route, b"")
    listener.send(route, b"answer")
    expected = GREETING + encode_frame(b"answer")
    got = b""
    for _ in range(len(expected)):
        got += sock.recv(len(expected) - len(got))
        if len(got) == len(expected):
            break
    assert got == expected


def test_connection_refuses_a_peer_that_is_not_posa(opened: Callable[..., object]) -> None:
    server = opened(socket.create_server(("127.0.0.1", 0)))
    port = server.getsockname()[1]  # type: ignore[attr-defined]
    connection = opened(TCP.connect(f"tcp://127.0.0.1:{port}", Options()))
    accepted, _ = server.accept()  # type: ignore[attr-defined]
    opened(accepted)
    assert accepted.recv(8) == GREETING
    accepted.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(TransportError, match="not a posa tcp peer"):
        connection.recv(WAIT)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- bad peers

BAD_PEERS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage", id="garbage"),
    pytest.param(b"POSA\x00\x07\x00\x00" + encode_frame(b"x"), "garbage", id="bad-version"),
    pytest.param(GREETING + b"\xff\xff\xff\xff", "oversize", id="4GiB-prefix"),
    pytest.param(GREETING + encode_frame(b"ok") + b"\x00\x00\x00\x64" + b"x" * 10,
                 "truncated", id="truncated"),
]


@pytest.mark.parametrize("bad, cause", BAD_PEERS)
def test_bad_peer_is_dropped_and_counted(opened: Callable[..., object], bad: bytes,
                                         cause: str) -> None:
    listener = listen(opened)
    good = connect(opened, listener)
    good.send(b"0")
    good_route, frame = listener.recv(WAIT)
    assert frame == b"0"
    offender = raw_socket(opened, listener)
    offender.sendall(bad)
    if cause == "truncated":
        offender.shutdown(socket.SHUT_WR)       # the peer stops mid-frame
    deadline = time.monotonic() + WAIT
    sent = 1
    for _ in range(100_000):                    # the good connection goes on meanwhile
        if listener.rejections[cause]:
            break
        assert time.monotonic() < deadline, f"not dropped: {dict(listener.rejections)}"
        good.send(b"%d" % sent)
        route, frame = listener.recv(WAIT)
        if (frame, route != good_route) == (b"ok", True):
            route, frame = listener.recv(WAIT)  # the truncated peer's one whole frame
        assert (route, frame) == (good_route, b"%d" % sent)
        sent += 1
    assert dict(listener.rejections) == {cause: 1}
    assert closed_by_listener(offender)
    for n in range(sent, sent + 100):
        good.send(b"%d" % n)
    assert [listener.recv(WAIT) for _ in range(100)] == [
        (good_route, b"%d" % n) for n in range(sent, sent + 100)]
    listener.send(good_route, b"still here")
    assert good.recv(WAIT) == b"still here"


def test_too_many_connections(opened: Callable[..., object]) -> None:
    listener = listen(opened, Options(max_connections=2))
    first = connect(opened, listener)
    second = connect(opened, listener)
    for n, connection in enumerate((first, second)):
        connection.send(b"%d" % n)
        assert listener.recv(WAIT)[1] == b"%d" % n
    third = raw_socket(opened, listener)
    third.sendall(GREETING)
    third.settimeout(WAIT)
    first.send(b"after")                         # the listener polls, accepts, refuses
    assert listener.recv(WAIT)[1] == b"after"
    assert listener.rejections == {"too-many-connections": 1}
    assert closed_by_listener(third)


def test_reply_to_a_gone_connection(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    connection = connect(opened, listener)
    connection.send(b"bye")
    connection.close()
    route, frame = listener.recv(WAIT)
    assert frame == b"bye"
    with pytest.raises(Timeout):
        listener.recv(0.05)                      # the listener sees the end of stream
    assert listener.rejections == {}
    with pytest.raises(TransportError, match=f"connection {route} of .* is gone"):
        listener.send(route, b"too late")


def test_listener_close_ends_its_connections(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    connection = connect(opened, listener)
    connection.send(b"hello")
    route, _ = listener.recv(WAIT)
    listener.send(route, b"last words")
    listener.close()
    assert connection.recv(WAIT) == b"last words"
    with pytest.raises(Closed, match="closed the connection"):
        connection.recv(WAIT)
    with pytest.raises(TransportError):
        for n in range(1000):                    # the kernel takes a few before the reset
            connection.send(b"%d" % n)
            connection.recv_nowait()


def test_listener_close_delivers_replies_despite_unread_input(
        opened: Callable[..., object]) -> None:
    """Frames the listener never read do not reset away the replies it sent."""
    listener = listen(opened)
    connection = connect(opened, listener)
    connection.send(b"question")
    route, _ = listener.recv(WAIT)
    for n in range(1000):                       # input the listener will not read
        connection.send(b"unread %d" % n)
    listener.send(route, b"answer")
    listener.close()
    assert connection.recv(WAIT) == b"answer"
    with pytest.raises(Closed, match="closed the connection"):
        connection.recv(WAIT)


def test_close_after_the_listener_went_away(opened: Callable[..., object]) -> None:
    """close() with frames queued for a listener that is gone does not raise."""
    listener = listen(opened)
    connection = connect(opened, listener)
    connection.send(b"hello")
    listener.recv(WAIT)
    listener.close()
    with contextlib.suppress(TransportError):
        for n in range(10_000):
            connection.send(b"into the void %d" % n)
    connection.close()
    with pytest.raises(Closed):
        connection.send(b"after close")


# --------------------------------------------------------------------------- large and many

def serve_until(listener: TcpListener, stop: threading.Event,
                received: list[tuple[object, bytes]], echo: bool) -> None:
    """A reactor in miniature: poll the listener (which also flushes its
    replies) until ``stop``; echo every frame if asked."""
    deadline = time.monotonic() + 3 * WAIT
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            route, frame = listener.recv(0.05)
        except Timeout:
            continue
        received.append((route, frame))
        if echo:
            listener.send(route, frame)


def test_ten_mib_frames_both_ways(opened: Callable[..., object]) -> None:
    """Frames far beyond the kernel's buffers go out in partial writes."""
    options = Options(max_frame_size=16 * 1024 * 1024)
    listener = listen(opened, options)
    connection = connect(opened, listener, options)
    big = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    stop = threading.Event()
    received: list[tuple[object, bytes]] = []
    server = threading.Thread(target=serve_until, args=(listener, stop, received, True))
    server.start()
    try:
        connection.send(big)
        connection.send(b"small after big")
        assert connection.recv(WAIT) == big
        assert connection.recv(WAIT) == b"small after big"
    finally:
        stop.set()
        server.join(WAIT)
    assert [frame for _, frame in received] == [big, b"small after big"]


def test_burst_is_delivered_without_a_later_send(opened: Callable[..., object]) -> None:
    """The tail of a burst goes out although the sender sends nothing after it."""
    listener = listen(opened)
    connection = connect(opened, listener)
    frames = [b"%d" % n for n in range(5000)]
    for frame in frames:
        connection.send(frame)
    assert [listener.recv(WAIT)[1] for _ in frames] == frames


def test_close_flushes_what_was_queued(opened: Callable[..., object]) -> None:
    listener = listen(opened)
    connection = connect(opened, listener)
    frames = [b"frame %d" % n for n in range(20_000)]
    for frame in frames:
        connection.send(frame)
    connection.close()
    assert [listener.recv(WAIT)[1] for _ in frames] == frames
    with pytest.raises(Closed):
        connection.send(b"after close")


def test_send_times_out_at_the_high_water_mark(opened: Callable[..., object]) -> None:
    """With nobody reading, send raises Timeout once the kernel's buffers and
    high_water_mark entries are full; every frame it accepted arrives, none it
    refused."""
    options = Options(high_water_mark=4, send_timeout=0.2)
    listener = listen(opened, options)
    connection = connect(opened, listener, options)
    accepted = []
    for n in range(2000):                        # ~120 MiB: far beyond any buffer
        frame = n.to_bytes(4, "big") * 15_000
        try:
            connection.send(frame)
        except Timeout as exc:
            assert "the frame was not sent" in str(exc)
            break
        accepted.append(frame)
    else:
        pytest.fail("send never blocked although nobody read")
    received = [listener.recv(WAIT)[1] for _ in accepted]
    assert received == accepted
    connection.send(b"room again")
    assert listener.recv(WAIT)[1] == b"room again"


def test_listener_send_times_out_at_the_high_water_mark(
        opened: Callable[..., object]) -> None:
    options = Options(high_water_mark=4, send_timeout=0.2)
    listener = listen(opened, options)
    connection = connect(opened, listener, options)
    connection.send(b"route please")
    route, _ = listener.recv(WAIT)
    frame = b"r" * 60_000
    with pytest.raises(Timeout, match="the frame was not sent"):
        for _ in range(2000):                    # nobody reads the connection
            listener.send(route, frame)


def test_close_from_another_thread_wakes_a_blocked_send(
        opened: Callable[..., object]) -> None:
    options = Options(high_water_mark=2, send_timeout=WAIT, linger=0.0)
    listener = listen(opened, options)
    connection = connect(opened, listener, options)
    outcome: list[BaseException] = []
    frame = b"s" * 60_000

    def flood() -> None:
        try:
            for _ in range(5000):
                connection.send(frame)
        except BaseException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=flood)
    sender.start()
    listener.recv(WAIT)                          # the sender is under way
    sender.join(0.3)                             # it fills every buffer and blocks
    assert sender.is_alive(), f"send did not block: {outcome}"
    connection.close()
    sender.join(WAIT)
    assert not sender.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], Closed)
