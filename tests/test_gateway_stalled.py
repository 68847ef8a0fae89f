"""A client whose request body stalls gets its 408 and its connection closed at
once: it no longer holds a connection slot of its source for aiohttp's 10 s of
lingering after the answer (a real ``posa gateway`` on loopback)."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.test_gateway_support import TOKEN, World, start_world

pytestmark = pytest.mark.timeout(120)

CAP = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(tmp_path_factory.mktemp("gwstall"), "--body-timeout", "1",
                        "--max-connections-per-source", str(CAP))
    try:
        yield world
    finally:
        world.close()


def test_clients_that_stalled_and_got_their_408_do_not_hold_their_slots(
        world: World) -> None:
    stalled = [socket.create_connection((world.host, world.port), timeout=20)
               for _ in range(CAP)]        # the whole cap of this source
    try:
        for sock in stalled:
            sock.sendall(b"POST /v1/send/app/x HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         b"100\r\nAuthorization: Bearer " + TOKEN.encode()
                         + b"\r\n\r\n[1,")     # and nothing more
        started = time.monotonic()
        for sock in stalled:
            answer = _until_closed(sock)    # the whole answer, then the end of it
            assert answer.startswith(b"HTTP/1.1 408") and b"body-timeout" in answer
        # the body timeout is 1 s; aiohttp's lingering kept each open 10 s after it
        assert time.monotonic() - started < 8.0
        # the slots are free: a new client of the same source is served, not refused
        assert world.call("GET", "/v1/health", token=None, timeout=5).status == 200
    finally:
        for sock in stalled:
            sock.close()


def _until_closed(sock: socket.socket) -> bytes:
    """What ``sock`` receives until the gateway closes it (at most 64 KiB)."""
    answer = b""
    for _ in range(64):
        chunk = sock.recv(1024)
        if not chunk:
            return answer
        answer += chunk
    raise AssertionError(f"no end after {answer[:200]!r}")
