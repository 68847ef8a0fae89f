"""``posa.Client.call`` over tcp: a SIGSTOPped server is left for another once it
has been silent for ``attempt_timeout``; a close of the client from another
thread ends the call with ``Closed``.

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import posa
from posa.errors import Closed
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0                     # seconds any single wait may take
SERVICE = "waits-service"
SERVER = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Server(
        "waits-service", lambda body: [sys.argv[2], body], registry=reg,
        name="waits-service/" + sys.argv[2], workers=0) as server:
    print("READY", flush=True)
    sys.stdin.readline()
"""


def _server(dispatcher: str, name: str) -> Proc:
    proc = Proc.python(SERVER, dispatcher, name)
    proc.expect("READY")
    return proc


@pytest.fixture
def servers(dispatcher: str) -> Iterator[dict[str, Proc]]:
    """Two servers of the service, each in a process of its own (to be stopped)."""
    procs: dict[str, Proc] = {}
    try:
        for name in ("one", "two"):
            procs[name] = _server(dispatcher, name)
        yield procs
    finally:
        for proc in procs.values():
            proc.popen.kill()       # (a stopped process ends on SIGKILL too)
            proc.close()


def test_a_stopped_server_is_left_for_another_within_the_call(
        dispatcher: str, servers: dict[str, Proc]) -> None:
    """The wait lasts at most what is left of the attempt: once the stopped server
    has been silent for ``attempt_timeout`` the call goes to the other one and is
    answered there, long before the call's deadline."""
    with posa.Client(dispatcher=dispatcher, timeout=WAIT, attempt_timeout=0.5) as client:
        outcome: list[Any] = []
        done = threading.Event()

        def call() -> None:
            try:
                first, _ = client.call(SERVICE, 1)
                outcome.append(first)
                sigstop(servers[first].popen.pid)
                outcome.append(client.call(SERVICE, 2))
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        assert done.wait(WAIT), "a call to a stopped server was not failed over"
        assert len(outcome) == 2 and outcome[0] in servers, outcome
        other = "two" if outcome[0] == "one" else "one"
        assert outcome[1] == [other, 2], outcome


def test_a_close_from_another_thread_ends_the_call_with_closed(
        dispatcher: str, servers: dict[str, Proc]) -> None:
    """Both servers stopped and an attempt that would wait ten minutes: the call
    waiting for its answer is ended by ``close`` with ``Closed``, not failed over
    nor left to its deadline (the registry, not the
    client's, stays open: it is not what says the call is over)."""
    registry = posa.RegistryClient(dispatcher)
    client = posa.Client(registry=registry, timeout=600.0, attempt_timeout=600.0)
    outcome: list[BaseException] = []
    done = threading.Event()
    sent = threading.Event()
    try:
        def call() -> None:
            try:
                client.call(SERVICE, 1)
                for proc in servers.values():
                    sigstop(proc.popen.pid)
                sent.set()
                client.call(SERVICE, 2)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        assert sent.wait(WAIT), "the first call was not answered"
        wait_until(lambda: done.is_set() or any(   # (a stopped server acknowledges
            t.out.unacked for f in list(client.sender.by_thread.values())   # nothing)
            for t in list(f._targets.values())), WAIT, "the call waiting for its answer")
        client.close()
        assert done.wait(WAIT), "a close from another thread did not end the call"
    finally:
        client.close()
        registry.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed), outcome
    assert "was closed" in str(outcome[0]), outcome
