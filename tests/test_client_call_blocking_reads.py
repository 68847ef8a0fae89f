"""``posa.Client.call`` over tcp waits for its answer in the read itself
(``posa.delivery.waiting.drive_reads``), as a lone caller's ``Peer.request``
does: it never polls; a SIGSTOPped server is left for another once it has been
silent for ``attempt_timeout``; a close of the client from another thread ends
the call with ``Closed``.

Every wait has a deadline and every loop a bound; nothing sleeps to synchronise.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import posa
from posa.delivery import waiting
from posa.errors import Closed
from posa.transport.tcp import TcpConnection
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0                     # seconds any single wait may take
SERVICE = "blocking-service"
SERVER = """
import sys, posa
with posa.RegistryClient(sys.argv[1]) as reg, posa.Server(
        "blocking-service", lambda body: [sys.argv[2], body], registry=reg,
        name="blocking-service/" + sys.argv[2], workers=0) as server:
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


def _connection(client: posa.Client) -> TcpConnection:
    server = client._chosen[SERVICE]
    conn = client.sender.forwarder().connection(server)
    assert isinstance(conn, TcpConnection)
    return conn


def test_a_call_over_tcp_waits_in_its_read_never_in_a_poll(
        dispatcher: str, servers: dict[str, Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    with posa.Client(dispatcher=dispatcher, timeout=WAIT) as client:
        assert client.call(SERVICE, 0)[1] == 0
        if not _connection(client).block_reads():
            pytest.skip("reads cannot block here")

        def no_poll(*_: Any) -> bool:
            raise AssertionError("Client.call polled")
        monkeypatch.setattr(waiting, "readable", no_poll)
        for n in range(50):
            assert client.call(SERVICE, n)[1] == n


def test_a_stopped_server_is_left_for_another_within_the_call(
        dispatcher: str, servers: dict[str, Proc]) -> None:
    """The read waits at most what is left of the attempt: once the stopped server
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
    waiting in its read is ended by ``close`` (within the read's 0.5 s slice) with
    ``Closed``, not failed over nor left to its deadline (the registry, not the
    client's, stays open: it is not what says the call is over)."""
    registry = posa.RegistryClient(dispatcher)
    client = posa.Client(registry=registry, timeout=600.0, attempt_timeout=600.0)
    outcome: list[BaseException] = []
    done = threading.Event()
    conns: list[TcpConnection] = []
    try:
        def call() -> None:
            try:
                client.call(SERVICE, 1)
                conns.append(_connection(client))
                for proc in servers.values():
                    sigstop(proc.popen.pid)
                client.call(SERVICE, 2)
            except BaseException as exc:  # (the test looks at it)
                outcome.append(exc)
            done.set()
        threading.Thread(target=call, daemon=True).start()
        wait_until(lambda: done.is_set() or (conns and conns[0]._reading), WAIT,
                   "the call waiting in its read")
        client.close()
        assert done.wait(WAIT), "a close from another thread did not end the call"
    finally:
        client.close()
        registry.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed), outcome
    assert "was closed" in str(outcome[0]), outcome
