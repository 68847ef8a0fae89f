"""The edge holds: stalled, garbage and descriptor-hungry clients against real
listeners (docs/security.md, connection hygiene).

Real ``posa dispatcher`` processes and real sockets. No timing assertion: every
wait is for a condition, with a generous deadline; the one bound measured is a
resource (CPU time of a process at its descriptor limit, from /proc).
"""
from __future__ import annotations

import logging
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import ROOT, free_port

import posa
from posa.transport.base import Options
from posa.transport.framing import GREETING
from posa.transport.tcp import TcpTransport

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and rlimits")

STALLERS = 2000


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@contextmanager
def _dispatcher(*flags: str, nofile: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                            str, Path]]:
    """A ``posa dispatcher`` whose log goes to a file; its address and log."""
    address = f"tcp://127.0.0.1:{free_port()}"
    log = Path(tempfile.mkstemp(prefix="posa-dispatcher-", suffix=".log")[1])

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "posa", "dispatcher", "--listen",
                                 address, *flags], stdout=subprocess.PIPE, stderr=err,
                                cwd=ROOT, env=env, preexec_fn=limit)
    try:
        assert proc.stdout is not None
        ready = select.select([proc.stdout], [], [], 30)[0]
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("posa dispatcher"), \
            f"the dispatcher did not start: {line!r} {log.read_text()[-2000:]}"
        yield proc, address, log
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        log.unlink()


def _wait(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.05)     # a poll interval, not a synchronisation


def _connect_many(address: str, count: int, data: bytes) -> list[socket.socket]:
    """``count`` connections to ``address``, each sent ``data``, then left alone."""
    host, port = address[len("tcp://"):].rsplit(":", 1)
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=30)
        if data:
            sock.sendall(data)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True      # reset


def _names(address: str, timeout: float = 60.0) -> float:
    """Run ``posa names`` against ``address``; its latency (it must succeed)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "posa", "names", "--dispatcher", address,
                           "--timeout", str(timeout)], capture_output=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=timeout + 30)
    latency = time.monotonic() - started
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert b"posa/dispatcher" in done.stdout
    return latency


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STALLERS + 200:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {STALLERS + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_2000_stalled_connections_do_not_lock_out_a_client(many_descriptors: None) -> None:
    with _dispatcher("--first-frame-timeout", "3") as (proc, address, log):
        stallers = _connect_many(address, STALLERS, b"PO")
        try:
            latency = _names(address)
            print(f"posa names answered in {latency * 1000:.0f} ms among {STALLERS} "
                  "stalled connections")
            _wait(lambda: all(_closed_by_peer(s) for s in stallers),
                  f"the dispatcher shed all {STALLERS} stalled connections")
            assert proc.poll() is None
            text = log.read_text()
            assert "first-frame-timeout" in text or "evicted-unframed" in text, text
            assert len(text.splitlines()) < 20, text
        finally:
            for sock in stallers:
                sock.close()


def test_at_the_descriptor_limit_a_dispatcher_idles_and_recovers() -> None:
    with _dispatcher(nofile=96) as (proc, address, log):
        # each completes a frame and stalls inside the next one: nothing the
        # policy may shed, so the descriptors stay taken until the test lets go
        hog = GREETING + _frame(b"\x90") + b"\x00\x00"
        socks = _connect_many(address, 120, hog)
        try:
            _wait(lambda: "too many open files" in log.read_text(),
                  "the dispatcher ran out of descriptors")
            lines_before = len(log.read_text().splitlines())
            cpu_before, wall_before = _cpu_seconds(proc.pid), time.monotonic()
            _wait(lambda: time.monotonic() - wall_before >= 3.0, "a 3 s window")
            cpu = _cpu_seconds(proc.pid) - cpu_before
            window = time.monotonic() - wall_before
            lines = log.read_text().splitlines()[lines_before:]
            print(f"at its descriptor limit the dispatcher used {cpu:.2f} s of CPU in "
                  f"{window:.1f} s and logged {len(lines)} lines")
            assert cpu < 0.1 * window, f"{cpu:.2f} s of CPU in {window:.1f} s"
            assert len(lines) <= 2, lines       # one per cause per 10 s interval
            assert proc.poll() is None
        finally:
            for sock in socks:
                sock.close()
        latency = _names(address)
        print(f"once descriptors were free, posa names answered in {latency * 1000:.0f} ms")


def _garbage() -> Iterator[bytes]:
    kinds = [b"GET / HTTP/1.1\r\n\r\n",                       # not a posa peer
             GREETING + struct.pack(">I", 0xFFFF_FFF0),         # oversize
             GREETING + _frame(b"\xc1\xc1\xc1garbage"),         # not an envelope
             b"\x00" * 8]
    for i in range(250):
        yield kinds[i % len(kinds)] + os.urandom(i % 7)


def test_250_garbage_connections_cost_a_few_log_lines() -> None:
    with _dispatcher() as (proc, address, log):
        host, port = address[len("tcp://"):].rsplit(":", 1)
        for data in _garbage():
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(data)
        _names(address)
        _wait(lambda: "(garbage)" in log.read_text() and "malformed" in log.read_text(),
              "the dispatcher logged the refusals")
        lines = log.read_text().splitlines()
        assert len(lines) <= 8, lines
        assert all(len(line) < 400 for line in lines), lines
        assert proc.poll() is None


def test_refusals_are_counted_by_cause_and_logged_once_per_cause(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="posa.transport.tcp")
    with TcpTransport().listen("tcp://127.0.0.1:0", Options(max_frame_size=1024)) as listener:
        host, port = listener.address[len("tcp://"):].rsplit(":", 1)
        sent = 0
        for data in _garbage():
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(data)
            sent += 1
        end = time.monotonic() + 60
        # 125 bad greetings, 63 oversize frames; the rest are frames (some cut short)
        while listener.rejections["garbage"] < 125 or listener.rejections["oversize"] < 63:
            assert time.monotonic() < end, dict(listener.rejections)
            if listener.recv_nowait() is None:
                time.sleep(0.01)    # a poll interval
        rejections = dict(listener.rejections)
        records = [r.getMessage() for r in caplog.records if r.name == "posa.transport.tcp"]
    assert rejections["garbage"] == 125, rejections
    assert rejections["oversize"] >= 63 and sum(rejections.values()) <= sent, rejections
    causes = [cause for cause in rejections if any(f"({cause})" in r for r in records)]
    assert len(records) == len(causes) <= len(rejections), records
    assert all(len(r) < 400 for r in records), records
    # the close logs each count held back, once
    at_close = [r.getMessage() for r in caplog.records
                if r.name == "posa.transport.tcp"][len(records):]
    held = [cause for cause in causes if rejections[cause] > 1]
    assert len(at_close) == len(held), at_close
    assert all("only counted since the last such line" in r for r in at_close), at_close


def test_an_idle_connection_is_closed_and_the_client_carries_on() -> None:
    """A peer idle past ``idle_timeout`` loses its connection, never a message:
    its next request reconnects and is answered."""
    registry = posa.LocalRegistry()
    options = Options(idle_timeout=0.5)
    with posa.Peer("hygiene/server", registry=registry, listen="tcp://127.0.0.1:0",
                   options=options) as server, \
            posa.Peer("hygiene/client", registry=registry, listen="tcp://127.0.0.1:0") as client:
        server.serve(lambda m: m.body + 1)
        assert client.request("hygiene/server", 1, timeout=10) == 2
        _wait(lambda: server.transport_rejections().get("idle-timeout", 0) >= 1,
              "the server closed the idle connection")
        for i in range(20):
            assert client.request("hygiene/server", i, timeout=10) == i + 1


def _closed_for_good(sock: socket.socket) -> bool:
    """Read what came (libzmq's greeting) until the peer closed: True then."""
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def test_zmq_sheds_stalled_handshakes_and_legacy_peers_and_counts_them() -> None:
    """libzmq closes a connection whose handshake stalls (HANDSHAKE_IVL =
    first_frame_timeout) and, with posa's ZAP domain, one that falls back to
    ZMTP 1.0 (which no deadline would cut); the monitor counts the refusals."""
    options = Options(first_frame_timeout=1.0)
    listener = posa.transport.listen("zmq+tcp://127.0.0.1:0", options)
    client = posa.transport.connect(listener.address, options)
    try:
        host, port = listener.address[len("zmq+tcp://"):].rsplit(":", 1)
        stalled = _connect_many(f"tcp://{host}:{port}", 10, b"\xff\x00")
        legacy = _connect_many(f"tcp://{host}:{port}", 10, b"GET / HTTP/1.1\r\n\r\n")
        try:
            _wait(lambda: all(_closed_for_good(s) for s in stalled + legacy),
                  "libzmq closed the stalled and the ZMTP 1.0 connections")
            _wait(lambda: listener.rejections["handshake-failed"] >= 10,
                  f"the stalled handshakes were counted: {dict(listener.rejections)}")
            client.send(b"still served")
            end = time.monotonic() + 30
            item = None
            while item is None and time.monotonic() < end:
                item = listener.recv_nowait() or (time.sleep(0.01) and None)
            assert item is not None and item[1] == b"still served"
        finally:
            for sock in stalled + legacy:
                sock.close()
    finally:
        client.close()
        listener.close()


def _serve_until(listener: posa.transport.Listener, condition: Callable[[], bool],
                 what: str, frames: list[bytes] | None = None) -> list[bytes]:
    """Drive ``listener`` until ``condition()``; the frames it delivered (added
    to ``frames`` if given)."""
    frames = [] if frames is None else frames
    end = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < end, f"not within 30 s: {what}"
        item = listener.recv_nowait()
        if item is None:
            time.sleep(0.01)     # a poll interval
        else:
            frames.append(item[1])
    return frames


@pytest.mark.parametrize("data, cause", [
    (b"PO", "first-frame-timeout"),                                   # stalled greeting
    (GREETING + _frame(b"first") + b"\x00\x00", "frame-timeout"),     # slowloris
])
def test_tcp_deadlines_shed_stalled_connections(data: bytes, cause: str) -> None:
    options = Options(first_frame_timeout=0.5, frame_timeout=0.5, idle_timeout=None)
    with TcpTransport().listen("tcp://127.0.0.1:0", options) as listener:
        sock = _connect_many(listener.address, 1, data)[0]
        with sock:
            frames = _serve_until(listener, lambda: listener.rejections[cause] == 1,
                                  f"{cause} counted")
            _wait(lambda: _closed_for_good(sock), "the connection was closed")
        assert frames == ([b"first"] if cause == "frame-timeout" else [])
        assert sum(listener.rejections.values()) == 1, dict(listener.rejections)


def test_a_client_sharing_its_address_with_stallers_is_served() -> None:
    """At the per-source cap a new connection sheds the oldest stalled one from
    that address, never a connection that completed frames and is in use."""
    options = Options(max_connections_per_source=8, first_frame_timeout=None)
    with TcpTransport().listen("tcp://127.0.0.1:0", options) as listener:
        stallers = _connect_many(listener.address, 8, b"PO")
        client = posa.transport.connect(listener.address, Options())
        frames: list[bytes] = []
        try:
            for i in range(20):
                stallers += _connect_many(listener.address, 1, b"PO")
                client.send(b"%d" % i)
                _serve_until(listener, lambda n=i: listener.rejections["evicted-unframed"] > n,
                             "a staller evicted", frames)
            _serve_until(listener, lambda: len(frames) >= 20, "20 frames", frames)
            assert frames == [b"%d" % i for i in range(20)]
            assert dict(listener.rejections) == {"evicted-unframed": 21}   # + the client's
            assert sum(_closed_for_good(s) for s in stallers) == 21
        finally:
            client.close()
            for sock in stallers:
                sock.close()
