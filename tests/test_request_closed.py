"""A request waiting for its answer when its peer is closed from another thread
fails with ``Closed`` saying so, not with a ``Timeout`` about a stream given up
(closing forgets every target of the forwarder).

Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import posa
from posa.errors import Closed
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0
ECHO = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        "closed-echo", registry=reg, listen="tcp://127.0.0.1:0",
        handler=lambda m: m.body):
    print("READY", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def echo(dispatcher: str) -> Iterator[Proc]:
    proc = Proc.python(ECHO, dispatcher)
    try:
        proc.expect("READY")
        yield proc
    finally:
        proc.popen.kill()           # (a stopped process ends on SIGKILL too)
        proc.close()


def test_a_request_cut_by_close_raises_closed(dispatcher: str, echo: Proc) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        peer = posa.Peer("closed-caller", registry=reg)
        outcome: list[BaseException] = []
        waiting = threading.Event()
        done = threading.Event()

        def call() -> None:
            try:
                assert peer.request("closed-echo", 1, timeout=WAIT) == 1
                sigstop(echo.popen.pid)
                waiting.set()
                peer.request("closed-echo", 2, timeout=600.0)
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
