"""ZeroMQ-specific behaviour of the zmq+tcp and zmq+ipc transports.

The shared contract is checked by the conformance suite; these tests cover what
only ZeroMQ does: port 0 and ipc paths, foreign multi-part messages, the
socket options that turn silent queueing into errors, and waking a blocked
thread without touching its socket from another thread.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from posa import transport
from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options
from posa.transport.zmq import ZmqConnection, ZmqListener

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def opened() -> Iterator[list]:
    """Endpoints a test opens; all closed at teardown."""
    endpoints: list = []
    yield endpoints
    for endpoint in endpoints:
        endpoint.close()


@pytest.fixture
def raw() -> Iterator[zmq.Context]:
    """A private context for raw pyzmq peers that misbehave."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    # short on purpose: a Unix socket path has at most 107 bytes
    with tempfile.TemporaryDirectory(prefix="posa-", dir="/tmp") as path:
        yield path


def listen(opened: list, address: str, options: Options | None = None) -> ZmqListener:
    listener = transport.listen(address, options)
    assert isinstance(listener, ZmqListener)
    opened.append(listener)
    return listener


def connect(opened: list, address: str, options: Options | None = None) -> ZmqConnection:
    conn = transport.connect(address, options)
    assert isinstance(conn, ZmqConnection)
    opened.append(conn)
    return conn


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        tick.wait(0.001)


def raw_dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address.replace("zmq+", "", 1))
    return sock


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("port", ["0", "*"])
def test_port_0_or_star_binds_a_free_port_and_reports_it(opened: list, port: str) -> None:
    listener = listen(opened, f"zmq+tcp://127.0.0.1:{port}")
    host, _, bound = listener.address.rpartition(":")
    assert host == "zmq+tcp://127.0.0.1" and int(bound) > 0
    conn = connect(opened, listener.address)
    conn.send(b"ping")
    route, frame = listener.recv(timeout=5.0)
    assert frame == b"ping"
    listener.send(route, b"pong")
    assert conn.recv(timeout=5.0) == b"pong"


def test_ipv6_loopback(opened: list) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        listener = listen(opened, "zmq+tcp://[::1]:0")
    except TransportError as exc:
        pytest.skip(f"::1 not usable here: {exc}")
    assert listener.address.startswith("zmq+tcp://[::1]:")
    conn = connect(opened, listener.address)
    conn.send(b"v6")
    assert listener.recv(timeout=5.0)[1] == b"v6"


def test_ipc_round_trip_in_a_temp_dir(opened: list, ipc_dir: str) -> None:
    address = f"zmq+ipc://{ipc_dir}/agent.sock"
    listener = listen(opened, address)
    assert listener.address == address
    conn = connect(opened, address)
    for i in range(100):
        conn.send(b"%d" % i)
    got = [listener.recv(timeout=5.0) for _ in range(100)]
    assert [frame for _, frame in got] == [b"%d" % i for i in range(100)]
    listener.send(got[0][0], b"reply")
    assert conn.recv(timeout=5.0) == b"reply"


def test_ipc_path_of_a_live_listener_is_refused(opened: list, ipc_dir: str) -> None:
    address = f"zmq+ipc://{ipc_dir}/taken.sock"
    first = listen(opened, address)
    with pytest.raises(TransportError, match="address in use"):
        listen(opened, address)
    conn = connect(opened, address)           # the first listener still owns the path
    conn.send(b"still mine")
    assert first.recv(timeout=5.0)[1] == b"still mine"


def test_ipc_stale_socket_file_is_replaced(opened: list, ipc_dir: str) -> None:
    path = os.path.join(ipc_dir, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)                            # a socket file nobody accepts on
    dead.close()
    listener = listen(opened, f"zmq+ipc://{path}")
    connect(opened, listener.address).send(b"fresh")
    assert listener.recv(timeout=5.0)[1] == b"fresh"


def test_ipc_path_that_is_a_plain_file_is_not_clobbered(opened: list, ipc_dir: str) -> None:
    path = os.path.join(ipc_dir, "data.txt")
    with open(path, "w") as f:
        f.write("keep me")
    with pytest.raises(TransportError, match="not a socket"):
        listen(opened, f"zmq+ipc://{path}")
    with open(path) as f:
        assert f.read() == "keep me"


def test_tcp_port_in_use(opened: list) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    with pytest.raises(TransportError, match="address in use; choose another port"):
        listen(opened, listener.address)


@pytest.mark.parametrize("address, message", [
    ("zmq+tcp://127.0.0.1", "needs HOST:PORT"),
    ("zmq+tcp://:7002", "needs HOST:PORT"),
    ("zmq+tcp://127.0.0.1:http", "needs HOST:PORT"),
    ("zmq+tcp://127.0.0.1:70000", "needs HOST:PORT"),
    ("zmq+tcp://[::1:7002", "unclosed IPv6 bracket"),
    ("zmq+ipc://relative.sock", "absolute path"),
    ("zmq+ipc:///" + "x" * 200, "longer than the 107 bytes"),
    ("zmq+ipc:///no/such/dir/x.sock", "directory does not exist"),
    ("zmq+tcp://192.0.2.1:0", "no local interface has that address"),
])
def test_bad_listen_addresses_say_what_to_do(opened: list, address: str, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        listen(opened, address)


@pytest.mark.parametrize("address", ["zmq+tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:*",
                                     "zmq+tcp://127.0.0.1"])
def test_connect_needs_a_real_port(opened: list, address: str) -> None:
    with pytest.raises(TransportError, match="needs HOST:PORT"):
        connect(opened, address)


# ------------------------------------------------------------ foreign frames
def test_multipart_garbage_is_dropped_and_counted_while_others_go_on(
        opened: list, raw: zmq.Context) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    rogue = raw_dealer(raw, listener.address)
    good = connect(opened, listener.address)
    n = 200
    for i in range(n):
        rogue.send_multipart([b"garbage", b"%d" % i, b"tail"])
        good.send(b"good %d" % i)
    rogue.send(b"rogue done")                 # after all its garbage, on the same pipe
    frames: dict[bytes, list[bytes]] = {}
    deadline = time.monotonic() + 10.0
    for _ in range(n + 1):
        route, frame = listener.recv(timeout=max(0.0, deadline - time.monotonic()))
        frames.setdefault(route, []).append(frame)
    assert sorted(frames.values()) == [[b"good %d" % i for i in range(n)], [b"rogue done"]]
    assert listener.rejections["garbage"] == n
    assert listener.recv_nowait() is None


def test_multipart_reply_from_a_foreign_router_is_dropped(opened: list, raw: zmq.Context) -> None:
    router = raw.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    conn = connect(opened, f"zmq+tcp://127.0.0.1:{port}")
    conn.send(b"hello")
    route, _ = router.recv_multipart()
    router.send_multipart([route, b"two", b"parts"])
    router.send_multipart([route, b"one part"])
    assert conn.recv(timeout=5.0) == b"one part"
    assert conn.rejections["garbage"] == 1


def test_oversized_frame_from_a_foreign_peer_is_never_delivered(
        opened: list, raw: zmq.Context) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0", Options(max_frame_size=1000))
    rogue = raw_dealer(raw, listener.address)
    rogue.send(b"x" * 2000)                   # libzmq drops this connection
    good = connect(opened, listener.address)
    good.send(b"unaffected")
    assert listener.recv(timeout=5.0)[1] == b"unaffected"
    # the rogue DEALER reconnects by itself; its later frames arrive, the big one never
    deadline = time.monotonic() + 10.0
    for i in range(100):
        rogue.send(b"probe %d" % i)
        try:
            _, frame = listener.recv(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        except Timeout:
            continue
        assert frame.startswith(b"probe")
        break
    else:
        pytest.fail("the rogue peer never got through again")


# -------------------------------------------------------------- limits, errors
def test_oversized_frame_is_refused_by_send(opened: list) -> None:
    options = Options(max_frame_size=1000)
    listener = listen(opened, "zmq+tcp://127.0.0.1:0", options)
    conn = connect(opened, listener.address, options)
    with pytest.raises(TransportError, match="exceeds max_frame_size"):
        conn.send(b"x" * 1001)
    conn.send(b"x" * 1000)
    route, frame = listener.recv(timeout=5.0)
    assert len(frame) == 1000                 # nothing of the refused frame went out
    with pytest.raises(TransportError, match="exceeds max_frame_size"):
        listener.send(route, b"y" * 1001)
    listener.send(route, b"y" * 1000)
    assert conn.recv(timeout=5.0) == b"y" * 1000


def test_send_where_nobody_listens_queues_to_the_mark_then_times_out(opened: list) -> None:
    with socket.socket() as probe:             # a port that is free, so nobody listens
        probe.bind(("127.0.0.1", 0))
        address = f"zmq+tcp://127.0.0.1:{probe.getsockname()[1]}"
    conn = connect(opened, address, Options(send_timeout=0.2, high_water_mark=1))
    conn.send(b"queued until a listener answers")
    started = time.monotonic()
    with pytest.raises(Timeout, match=re.escape(f"could not send to {address} ")):
        conn.send(b"into the void")
    assert 0.15 < time.monotonic() - started < 5.0


def test_send_to_a_vanished_route_is_an_error(opened: list) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    conn = transport.connect(listener.address)
    conn.send(b"hi")
    route, _ = listener.recv(timeout=5.0)
    conn.close()

    def refused() -> bool:
        try:
            listener.send(route, b"anyone?")
        except TransportError as exc:
            assert "is gone" in str(exc)
            return True
        return False

    wait_until(refused)


def test_full_peer_queue_blocks_a_listener_send_until_send_timeout(
        opened: list, raw: zmq.Context) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0",
                      Options(high_water_mark=1, send_timeout=0.2))
    sleeper = raw_dealer(raw, listener.address)  # never reads
    sleeper.setsockopt(zmq.RCVHWM, 1)
    sleeper.send(b"here")
    route, _ = listener.recv(timeout=5.0)
    frame = b"z" * 65536                         # fills kernel buffers fast
    with pytest.raises(Timeout, match="could not send"):
        for _ in range(10_000):
            listener.send(route, frame)


# ---------------------------------------------------------------- closing
@pytest.mark.parametrize("side", ["listener", "connection"])
def test_close_from_another_thread_wakes_a_blocked_recv(opened: list, side: str) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    endpoint = listener if side == "listener" else connect(opened, listener.address)
    outcome: list[BaseException] = []

    def receive() -> None:
        try:
            endpoint.recv(timeout=20.0)
        except BaseException as exc:  # recorded for the main thread
            outcome.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    wait_until(lambda: endpoint._blocked == 1)
    started = time.monotonic()
    endpoint.close()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)
    assert endpoint._sock.closed               # the woken thread closed its socket


def test_close_from_another_thread_wakes_a_send_waiting_for_a_listener(opened: list) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"zmq+tcp://127.0.0.1:{probe.getsockname()[1]}"
    conn = connect(opened, address, Options(send_timeout=None, high_water_mark=1))
    conn.send(b"queued")                       # the next send waits for room
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            conn.send(b"waiting")
        except BaseException as exc:  # recorded for the main thread
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    wait_until(lambda: conn._blocked == 1)
    conn.close()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)


def test_use_after_close_raises_closed(opened: list) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    conn = connect(opened, listener.address)
    conn.send(b"x")
    route, _ = listener.recv(timeout=5.0)
    for endpoint in (listener, conn):
        endpoint.close()
        endpoint.close()                       # idempotent
        for use in (endpoint.fileno, endpoint.pending, endpoint.recv_nowait,
                    lambda endpoint=endpoint: endpoint.recv(timeout=1.0)):
            with pytest.raises(Closed):
                use()
    with pytest.raises(Closed):
        conn.send(b"y")
    with pytest.raises(Closed):
        listener.send(route, b"y")


def test_frames_sent_before_close_are_flushed(opened: list) -> None:
    listener = listen(opened, "zmq+tcp://127.0.0.1:0")
    conn = transport.connect(listener.address)
    for i in range(500):
        conn.send(b"%d" % i)
    conn.close()                               # the I/O thread keeps flushing (linger)
    got = [listener.recv(timeout=5.0)[1] for _ in range(500)]
    assert got == [b"%d" % i for i in range(500)]


def test_frames_queued_at_exit_are_flushed_within_linger(opened: list) -> None:
    """A process that closes its connection and exits at once still delivers:
    at exit the shared context is terminated, which flushes closed sockets for
    at most their linger instead of dropping what the I/O thread had not yet
    written. Here 30 MiB wait in the sender while the receiver does not read."""
    listener = listen(opened, "zmq+tcp://127.0.0.1:0", Options(high_water_mark=1))
    child = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
             "from posa import transport\n"
             f"c = transport.connect({listener.address!r}, transport.Options(linger=10))\n"
             "for i in range(500): c.send(b'%4d' % i + bytes(65536))\n"
             "c.close()\n"
             "print('closed', flush=True)\n")
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE) as sender:
        assert sender.stdout is not None and sender.stdout.readline() == b"closed\n"
        with contextlib.suppress(subprocess.TimeoutExpired):
            sender.wait(timeout=0.5)   # without the flush it would exit, and lose frames
        got = [listener.recv(timeout=10.0)[1][:4] for _ in range(500)]
        assert sender.wait(timeout=10.0) == 0
    assert got == [b"%4d" % i for i in range(500)]
