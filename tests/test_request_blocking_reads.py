"""A lone caller's ``Peer.request`` over tcp waits for its answer in the read itself
(``posa.delivery.waiting.drive_reads``): it never polls, its deadline holds while
the server is stopped (SIGSTOP), a close of the peer from another thread ends
the wait, and an answer arriving in pieces is read whole.

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import posa
from posa.delivery import waiting
from posa.delivery.waiting import Steps, drive_reads
from posa.errors import PosaError, Timeout
from posa.transport import Options
from posa.transport.framing import GREETING, encode_frame
from posa.transport.tcp import TcpConnection, TcpTransport
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0                     # seconds any single wait may take
ECHO = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        "blocking-echo", registry=reg, listen="tcp://127.0.0.1:0",
        handler=lambda m: m.body):
    print("READY", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def echo(dispatcher: str) -> Iterator[Proc]:
    """An echo peer in a process of its own (so that it can be stopped)."""
    proc = Proc.python(ECHO, dispatcher)
    try:
        proc.expect("READY")
        yield proc
    finally:
        proc.popen.kill()           # (a stopped process ends on SIGKILL too)
        proc.close()


def _connection(peer: posa.Peer, name: str) -> TcpConnection:
    conn = peer.sender.forwarder().connection(name)
    assert isinstance(conn, TcpConnection)
    return conn


def test_a_lone_callers_request_over_tcp_waits_in_its_read_never_in_a_poll(
        dispatcher: str, echo: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    with posa.RegistryClient(dispatcher) as reg, posa.Peer("blocking-caller",
                                                          registry=reg) as peer:
        assert peer.request("blocking-echo", 1, timeout=WAIT) == 1
        if not _connection(peer, "blocking-echo").block_reads():
            pytest.skip("reads cannot block here")

        def no_poll(*_: Any) -> bool:
            raise AssertionError("a lone caller's request polled")
        monkeypatch.setattr(waiting, "readable", no_poll)
        for n in range(50):
            assert peer.request("blocking-echo", n, timeout=WAIT) == n


def test_the_deadline_holds_while_the_server_is_stopped(dispatcher: str,
                                                         echo: Proc) -> None:
    """A request to a SIGSTOPped server raises Timeout at its deadline (the read
    waits at most what is left of it; the resend after silence goes on meanwhile)."""
    with posa.RegistryClient(dispatcher) as reg, posa.Peer("blocking-caller",
                                                          registry=reg) as peer:
        assert peer.request("blocking-echo", 1, timeout=WAIT) == 1
        sigstop(echo.popen.pid)
        outcome: list[BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                peer.request("blocking-echo", 2, timeout=1.5)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        assert done.wait(WAIT), "a request to a stopped server outlived its deadline"
        assert len(outcome) == 1 and isinstance(outcome[0], Timeout), outcome


def test_a_close_from_another_thread_ends_the_wait(dispatcher: str, echo: Proc) -> None:
    """The caller's read sees the close (within the read's 0.5 s slice) although the
    stopped server never answers nor ends the connection; the request raises long
    before its deadline."""
    with posa.RegistryClient(dispatcher) as reg:
        peer = posa.Peer("blocking-caller", registry=reg)
        outcome: list[BaseException] = []
        done = threading.Event()
        conns: list[TcpConnection] = []

        def call() -> None:
            try:
                assert peer.request("blocking-echo", 1, timeout=WAIT) == 1
                conns.append(_connection(peer, "blocking-echo"))
                sigstop(echo.popen.pid)
                peer.request("blocking-echo", 2, timeout=600.0)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        wait_until(lambda: done.is_set() or (conns and conns[0]._reading), WAIT,
                   "the caller waiting in its read")
        peer.close()
        assert done.wait(WAIT), "a close from another thread did not end the wait"
        assert len(outcome) == 1 and isinstance(outcome[0], PosaError), outcome


def test_a_reply_larger_than_a_read_arrives_whole(dispatcher: str, echo: Proc) -> None:
    """A reply of 2 MB takes many reads (64 KiB each), all but the last completing
    no frame: the wait reads on until the frame is whole."""
    body = bytes(range(256)) * 8192
    with posa.RegistryClient(dispatcher) as reg, posa.Peer("blocking-caller",
                                                          registry=reg) as peer:
        for _ in range(3):
            assert peer.request("blocking-echo", body, timeout=WAIT) == body


@pytest.fixture
def raw() -> Iterator[tuple[socket.socket, TcpConnection]]:
    """A bare listening socket's accepted end (greeted) and a connection to it whose
    reads block."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        conn = TcpTransport().connect(f"tcp://127.0.0.1:{server.getsockname()[1]}",
                                      Options(linger=0.0))
        try:
            if not conn.block_reads():
                pytest.skip("reads cannot block here")
            server.settimeout(WAIT)
            accepted, _ = server.accept()
            with accepted:
                accepted.settimeout(WAIT)
                accepted.sendall(GREETING)
                yield accepted, conn
        finally:
            conn.close()


def _one_wait(conn: TcpConnection, seconds: float, seen: list[bool]) -> Steps[bool]:
    """Steps that wait once on ``conn`` and return whether it was readable."""
    ready = yield conn, seconds
    seen.append(ready)
    return ready


def test_a_frame_in_pieces_is_taken_in_whole_once(
        raw: tuple[socket.socket, TcpConnection]) -> None:
    accepted, conn = raw
    frame = encode_frame(b"answer " * 20_000)
    taken: list[bytes] = []
    pieces = [frame[:3], frame[3:70_000], frame[70_000:]]

    def send() -> None:
        for piece in pieces:
            accepted.sendall(piece)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    seen: list[bool] = []
    assert drive_reads(threading.Lock(), _one_wait(conn, WAIT, seen), taken.append)
    sender.join(WAIT)
    assert taken == [b"answer " * 20_000] and seen == [True]
    assert not conn.pending()


def test_a_wait_that_runs_out_is_told_so(raw: tuple[socket.socket, TcpConnection]) -> None:
    """Nothing comes (or only a part of a frame): the steps are told False once the
    wait ran out, and nothing is taken in."""
    accepted, conn = raw
    accepted.sendall(encode_frame(b"never whole")[:6])
    taken: list[bytes] = []
    assert drive_reads(threading.Lock(), _one_wait(conn, 0.2, []), taken.append) is False
    assert taken == []


def test_a_closed_connection_is_left_to_the_steps_receive(
        raw: tuple[socket.socket, TcpConnection]) -> None:
    _, conn = raw
    conn.close()
    taken: list[bytes] = []
    assert drive_reads(threading.Lock(), _one_wait(conn, WAIT, []), taken.append) is True
    assert taken == []
