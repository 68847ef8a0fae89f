"""A lone caller's ``Peer.request`` over tcp keeps its deadline while the server is
stopped (SIGSTOP), an answer larger than a read arrives whole, and a close from
another thread ends the wait with ``Closed``. (A wait that keeps its deadline
while signals come: tests/test_wait_under_signals.py.)

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import posa
from posa.errors import Closed, Timeout
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0                     # seconds any single wait may take
ECHO = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        "waits-echo", registry=reg, listen="tcp://127.0.0.1:0",
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


def test_the_deadline_holds_while_the_server_is_stopped(dispatcher: str,
                                                         echo: Proc) -> None:
    """A request to a SIGSTOPped server raises Timeout at its deadline (the resend
    after silence goes on meanwhile)."""
    with posa.RegistryClient(dispatcher) as reg, posa.Peer("waits-caller",
                                                          registry=reg) as peer:
        assert peer.request("waits-echo", 1, timeout=WAIT) == 1
        sigstop(echo.popen.pid)
        outcome: list[BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                peer.request("waits-echo", 2, timeout=1.5)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        assert done.wait(WAIT), "a request to a stopped server outlived its deadline"
        assert len(outcome) == 1 and isinstance(outcome[0], Timeout), outcome


def test_a_reply_larger_than_a_read_arrives_whole(dispatcher: str, echo: Proc) -> None:
    """A reply of 2 MB takes many reads (64 KiB each), all but the last completing
    no frame: the wait goes on until the frame is whole."""
    body = bytes(range(256)) * 8192
    with posa.RegistryClient(dispatcher) as reg, posa.Peer("waits-caller",
                                                          registry=reg) as peer:
        for _ in range(3):
            assert peer.request("waits-echo", body, timeout=WAIT) == body


def test_a_request_cut_by_close_raises_closed(dispatcher: str, echo: Proc) -> None:
    """A request waiting for its answer when its peer is closed from another thread
    fails with ``Closed`` saying so, not with a ``Timeout`` about a stream given up
    (closing forgets every target of the forwarder)."""
    with posa.RegistryClient(dispatcher) as reg:
        peer = posa.Peer("waits-caller", registry=reg)
        outcome: list[BaseException] = []
        waiting = threading.Event()
        done = threading.Event()

        def call() -> None:
            try:
                assert peer.request("waits-echo", 1, timeout=WAIT) == 1
                sigstop(echo.popen.pid)
                waiting.set()
                peer.request("waits-echo", 2, timeout=600.0)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        try:
            assert waiting.wait(WAIT), "the first request was not answered"
            forwarders = peer.sender.by_thread
            wait_until(lambda: done.is_set() or any(   # (the stopped echo acknowledges
                t.out.unacked for f in list(forwarders.values())    # nothing)
                for t in list(f._targets.values())), WAIT, "the second request sent")
            peer.close()
            assert done.wait(WAIT), "a close from another thread did not end the request"
        finally:
            peer.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed), outcome
    assert "was closed" in str(outcome[0]), outcome
