"""The ops server at the edge: slow, hostile and greedy clients, and refusal metrics.

Real sockets everywhere; real dispatcher processes where the whole process is the
point. Latencies are measured and printed, never asserted.
"""
from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from posa.errors import ProtocolError
from posa.ops import Monitor, OpsServer
from posa.ops.hygiene import IDLE, READING, WRITING, Limits, Slots
from posa.ops.request import RequestReader
from posa.transport.framing import GREETING
from tests.support import Proc, free_port, start_dispatcher, wait_until

pytestmark = pytest.mark.timeout(180)

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_by_server(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything the server sent until it closed ``sock`` (a reset ends it too)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def answer_on(sock: socket.socket, request: bytes = HEALTH) -> bytes:
    """Send ``request`` on a kept-alive connection and read one whole answer (its
    head; the body is read and dropped)."""
    sock.sendall(request)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {got!r}"
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = 0 if request.startswith(b"HEAD ") else int(next(
        line.split(b":")[1] for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection within an answer"
        body += chunk
    return head


def ops_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus_client: ``{(sample, labels): value}``.

    Every family is declared once with a known type, and no series comes twice."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"a family comes twice: {names}"
    for family in families:
        assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in values, f"a series comes twice: {key}"
            values[key] = sample.value
    return values


class SlowCrowd:
    """``size`` slow clients on a port: half trickle a request head one byte a
    second, half send nothing; a client that is cut connects again at once."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.stop = port, threading.Event()
        self.socks: list[socket.socket] = []
        deadline = time.monotonic() + 60
        while len(self.socks) < size:
            assert time.monotonic() < deadline, (
                f"only {len(self.socks)} of {size} slow clients connected in 60 s")
            self.socks.append(connect(port))
        self.sent = [0] * size
        self.reconnects = 0
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        head = b"GET /health HTTP/1.1\r\nX-Slow: " + b"s" * 10_000
        while not self.stop.wait(1.0):          # the pace of a slow client
            for i in range(0, len(self.socks), 2):
                try:
                    self.socks[i].send(head[self.sent[i] % len(head):][:1])
                    self.sent[i] += 1
                except OSError:                 # cut: come back
                    self.socks[i].close()
                    self.socks[i], self.sent[i] = connect(self.port), 0
                    self.reconnects += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def ops_dispatcher() -> Iterator[tuple[Proc, str, int]]:
    """A real ``posa dispatcher --ops-port``: the process, its address, the ops port."""
    port = free_port()
    proc, address = start_dispatcher("--ops-port", str(port))
    try:
        yield proc, address, port
    finally:
        proc.close()


# ------------------------------------------------------------ slow clients
def test_health_answers_while_50_slow_clients_hold_connections(
        ops_dispatcher: tuple[Proc, str, int]) -> None:
    _, _, port = ops_dispatcher
    crowd = SlowCrowd(port, 50)
    try:
        latencies = []
        for _ in range(10):
            started = time.perf_counter()
            status, body = get(f"http://127.0.0.1:{port}/health", timeout=10)
            latencies.append(time.perf_counter() - started)
            assert status == 200 and '"ok": true' in body
        print(f"/health under 50 slow clients: {', '.join(f'{t * 1000:.1f}' for t in latencies)}"
              f" ms (goal: each under 100 ms)")
        # the slow clients are cut at the header deadline, and come back
        wait_until(lambda: crowd.reconnects >= 25, 60, "the slow clients being cut")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
    finally:
        crowd.close()


def test_a_slow_client_is_cut_at_the_header_deadline() -> None:
    with OpsServer(Monitor(), header_timeout=0.5) as server:
        silent, trickling = connect(server.port), connect(server.port)
        trickling.sendall(b"GET /health HTTP/1.1\r\n")
        for sock in (silent, trickling):
            assert closed_by_server(sock).startswith(b"HTTP/1.1 408 ")
            sock.close()
        assert server.rejections == {"header-timeout": 2}
        assert get(server.url + "/health")[0] == 200


# ----------------------------------------------------------- hostile clients
def test_an_endless_header_is_cut_at_the_byte_limit() -> None:
    limit = 4096
    with OpsServer(Monitor(), max_header_bytes=limit) as server:
        line = b"GET /health HTTP/1.1\r\n"
        with connect(server.port) as sock:       # a head of exactly the limit is served
            field = b"X-Pad: " + b"p" * (limit - len(line) - len(b"X-Pad: ")) + b"\r\n"
            assert len(line + field) - 2 == limit
            assert answer_on(sock, line + field + b"\r\n").startswith(b"HTTP/1.1 200 ")
        with connect(server.port) as sock:       # one byte more is not
            field = b"X-Pad: " + b"p" * (limit - len(line) - len(b"X-Pad: ") + 1) + b"\r\n"
            sock.sendall(line + field + b"\r\n")
            assert closed_by_server(sock).startswith(b"HTTP/1.1 431 ")
        with connect(server.port) as sock:       # an endless header: cut, not buffered
            sock.sendall(line + b"X-Endless: ")
            sent, cut = 0, False
            while sent < 256 * 1024 * 1024 and not cut:
                try:
                    sent += sock.send(b"e" * 65536)
                except OSError:
                    cut = True
            assert cut, "the server took 256 MiB of one header field"
        wait_until(lambda: server.rejections["header-too-large"] == 2, 30, "two refusals")
        values = ops_samples(get(server.url + "/metrics")[1])
        assert values[("posa_rejections_total", (("listener", server.url),
                                                 ("reason", "header-too-large")))] == 2
        assert get(server.url + "/health")[0] == 200


@pytest.mark.parametrize("garbage, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n folded: no\r\n\r\n", 400),
    (b"POST /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /health HTTP/2.0\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
])
def test_garbage_is_refused_with_a_status_and_counted(garbage: bytes, status: int) -> None:
    with OpsServer(Monitor()) as server:
        with connect(server.port) as sock:
            sock.sendall(garbage)
            assert closed_by_server(sock).startswith(f"HTTP/1.1 {status} ".encode())
        cause = "bad-request" if status == 400 else "header-too-large"
        assert server.rejections == {cause: 1}
        assert get(server.url + "/health")[0] == 200


def test_keep_alive_pipelining_head_and_methods() -> None:
    with OpsServer(Monitor(), idle_timeout=0.5) as server:
        with connect(server.port) as sock:
            sock.sendall(HEALTH * 20)           # pipelined: twenty answers, in order
            got = b""
            while got.count(b"HTTP/1.1 200 ") < 20:
                chunk = sock.recv(65536)
                assert chunk
                got += chunk
            head = answer_on(sock, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"version=0.0.4" in head
            head = answer_on(sock, b"DELETE /health HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in head
            assert answer_on(sock).startswith(b"HTTP/1.1 200 ")
            assert closed_by_server(sock) == b""          # idle: closed quietly
        with connect(server.port) as sock:               # HTTP/1.0 closes by default
            sock.sendall(b"GET /nothing HTTP/1.0\r\n\r\n")
            assert closed_by_server(sock).startswith(b"HTTP/1.1 404 ")
        assert server.rejections == {"idle-timeout": 1}


# ------------------------------------------------------------ greedy clients
def test_the_connection_cap_evicts_the_oldest_unfinished_request() -> None:
    with OpsServer(Monitor(), max_connections=4, header_timeout=120) as server:
        kept = connect(server.port)             # finished a request, kept alive: idle
        assert answer_on(kept).startswith(b"HTTP/1.1 200 ")
        unfinished = [connect(server.port) for _ in range(3)]
        for sock in unfinished:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        newcomers = []
        for evicted in unfinished[:2]:          # each newcomer pushes out the oldest
            newcomers.append(connect(server.port))
            assert answer_on(newcomers[-1]).startswith(b"HTTP/1.1 200 ")
            assert closed_by_server(evicted) == b""
        assert still_open(unfinished[2]) and still_open(kept)
        assert server.rejections == {"evicted": 2}
        head = answer_on(unfinished[2], b"x\r\n\r\n")   # the survivor finishes: served
        assert head.startswith(b"HTTP/1.1 200 ")
        for sock in (kept, *unfinished, *newcomers):
            sock.close()


# ------------------------------------------------------ refusal metrics
def send_garbage(tcp: str, zmq_address: str, ops_port: int) -> None:
    """Refusals of every kind the dispatcher counts: its tcp listener, its zmq
    listener, its gatekeeper, its ops server."""
    host, port = tcp.removeprefix("tcp://").rsplit(":", 1)
    for _ in range(5):                          # not posa: no greeting
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        frame = b"\xc1 not msgpack"             # a well-framed frame of garbage
        sock.sendall(GREETING + struct.pack(">I", len(frame)) + frame)
        assert sock.recv(8) == GREETING
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.connect(zmq_address.removeprefix("zmq+"))
        dealer.send_multipart([b"two", b"frames"])
    finally:
        dealer.close(linger=5000)
    for garbage in (b"NONSENSE\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"x" * 9000):
        with connect(ops_port) as sock:
            sock.sendall(garbage)
            closed_by_server(sock)


def test_dispatcher_metrics_parse_and_count_every_refusal() -> None:
    ops_port, tcp, zmq_address = free_port(), f"tcp://127.0.0.1:{free_port()}", \
        f"zmq+tcp://127.0.0.1:{free_port()}"
    proc = Proc.posa("dispatcher", "--listen", tcp, "--listen", zmq_address,
                     "--ops-port", str(ops_port))
    try:
        proc.expect("posa dispatcher")
        url = f"http://127.0.0.1:{ops_port}"
        send_garbage(tcp, zmq_address, ops_port)

        def refusals() -> dict[tuple[str, str], float]:
            values = ops_samples(get(url + "/metrics")[1])
            found = {(dict(labels).get("listener", "gatekeeper"), dict(labels)["reason"]): v
                     for (metric, labels), v in values.items()
                     if metric == "posa_rejections_total"}
            expected = [(tcp, "garbage"), (zmq_address, "garbage"), ("gatekeeper", "malformed"),
                        (url, "bad-request"), (url, "header-too-large")]
            return found if all(found.get(key) for key in expected) else {}
        found = wait_until(refusals, 30, "every refusal in /metrics")
        assert found[(tcp, "garbage")] == 5
        assert found[(zmq_address, "garbage")] == 1
        assert found[("gatekeeper", "malformed")] == 1
        assert found[(url, "bad-request")] == 1
        assert found[(url, "header-too-large")] == 1
        values = ops_samples(get(url + "/metrics")[1])
        names = {dict(labels).get("name") for metric, labels in values
                 if metric == "posa_requests_in_flight"}
        assert len(names) == 1 and next(iter(names)).startswith("posa/dispatcher/")
        assert proc.terminate(30) == 0
    finally:
        proc.close()


# ------------------------------------------------------ the sans-IO cores
STREAM = (b"\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n"
          b"HEAD /metrics?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
          b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /par")


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_the_reader_sees_the_same_requests_however_the_bytes_are_cut(cuts: list[int]) -> None:
    reader, requests = RequestReader(), []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        reader.feed(STREAM[start:end])
        while (request := reader.next_request()) is not None:
            requests.append(request)
    assert [(r.method, r.path, r.minor, r.keep_alive) for r in requests] == [
        ("GET", "/health", 1, True), ("HEAD", "/metrics", 0, True), ("GET", "/", 1, False)]
    assert requests[0].fields == {"host": "a"} and reader.pending


def test_a_dead_reader_stays_dead() -> None:
    reader = RequestReader(max_header_bytes=256)
    reader.feed(b"G" * 259)
    assert reader.next_request() is None        # 3 more bytes could still end it in time
    reader.feed(b"E")
    with pytest.raises(ProtocolError, match="header-too-large"):
        reader.next_request()
    reader.feed(HEALTH)
    with pytest.raises(ProtocolError):
        reader.next_request()
    assert reader.failure == ("header-too-large", 431)


def test_slots_evict_the_oldest_unfinished_then_the_oldest_idle() -> None:
    slots: Slots[str] = Slots(Limits(max_connections=3, header_timeout=5, idle_timeout=30,
                                     write_timeout=2))
    assert slots.admit("idle", 0.0) == (True, None)
    slots.enter("idle", IDLE, 1.0)
    assert slots.admit("slow", 2.0) == (True, None) and slots.phase("slow") == READING
    assert slots.admit("writer", 3.0) == (True, None)
    slots.enter("writer", WRITING, 3.0)
    assert slots.next_deadline() == 5.0                 # writer at 3 + 2
    assert slots.admit("new", 4.0) == (True, "slow")    # unfinished before idle
    assert slots.admit("newer", 4.0) == (True, "new")
    slots.enter("newer", IDLE, 4.0)
    assert slots.admit("third", 4.0) == (True, "idle")  # no unfinished: the oldest idle
    slots.enter("third", WRITING, 4.0)
    assert slots.admit("fourth", 4.0) == (True, "newer")
    slots.enter("fourth", WRITING, 4.0)
    assert slots.admit("fifth", 4.0) == (False, None)   # all writing: refused
    assert slots.expired(5.0) == [("writer", "write-timeout")]
    assert slots.expired(100.0) == [("third", "write-timeout"), ("fourth", "write-timeout")]
    assert len(slots) == 0 and slots.next_deadline() is None
    with pytest.raises(ValueError, match="header_timeout"):
        Limits(header_timeout=0)
