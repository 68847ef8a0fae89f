"""The gateway's edge: tokens, sizes, deadlines, connection caps, garbage, a slow
event-stream consumer, and holes in a channel's history as gap events."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from tests.support import Proc, wait_until
from tests.test_gateway_support import (
    HASHED,
    LIMITED,
    World,
    open_stream,
    sse_events,
    start_world,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(tmp_path_factory.mktemp("gwedge"), "--max-body", "65536",
                        "--header-timeout", "3", "--body-timeout", "3",
                        "--max-connections-per-source", "24", "--sse-buffer", "40",
                        history=20)
    try:
        yield world
    finally:
        world.close()


def metric(world: World, line: str) -> float:
    for text in world.call("GET", "/metrics", token=None).body.splitlines():
        if text.startswith(line + " "):
            return float(text.split()[-1])
    return 0.0


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", "Basic abc"])
def test_a_missing_or_wrong_token_is_401(world: World, token: str | None) -> None:
    headers = {"Authorization": token} if token and " " in token else None
    reply = world.call("POST", "/v1/request/app/x", 1, headers=headers,
                       token=None if headers else token)
    assert reply.status == 401 and reply.type == "application/problem+json"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.body["type"] == "urn:posa:problem:token-refused"


def test_a_token_reaches_only_its_names(world: World) -> None:
    reply = world.call("POST", "/v1/request/events/x", 1, token=LIMITED)
    assert reply.status == 403 and "may not reach" in reply.body["detail"]
    assert world.call("GET", "/v1/subscribe/other/x", token=LIMITED).status == 403
    assert world.call("POST", "/v1/names/other/x", token=LIMITED).status == 403
    # a token stored as its digest works; the name it served is its own
    assert world.call("POST", "/v1/names/app/mine", token=HASHED).status == 201
    assert world.call("GET", "/v1/inbox/app/mine", token=LIMITED).status == 403
    assert world.call("DELETE", "/v1/names/app/mine", token=HASHED).status == 204
    assert world.call("GET", "/v1/health", token=None).status == 200


def test_an_oversized_body_is_413_and_the_gateway_goes_on(world: World) -> None:
    reply = world.call("POST", "/v1/send/app/x", raw=b'"' + b"a" * 70000 + b'"')
    assert reply.status == 413 and reply.type == "application/problem+json"
    assert world.call("GET", "/v1/services").status == 200


@pytest.mark.parametrize("path", ["/v1/send/app/x", "/v1/request/app/x?timeout=1"])
def test_a_body_nested_too_deep_to_read_is_400_and_the_gateway_goes_on(world: World,
                                                                       path: str) -> None:
    """json.loads raised RecursionError: a 500 and a logged traceback per request."""
    reply = world.call("POST", path, raw=b"[" * 20000 + b"]" * 20000)
    assert reply.status == 400 and "nests too deep" in reply.body["detail"]
    assert world.call("GET", "/v1/services").status == 200


def test_a_filter_nested_too_deep_to_read_is_400(world: World) -> None:
    reply = world.call("GET", "/v1/subscribe/events/gw?filter=" + "%5B" * 1200 + "%5D" * 1200)
    assert reply.status == 400 and "?filter= JSON" in reply.body["detail"]


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n", b"\x00\xff\x16\x03\x01" * 40, b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n"])
def test_garbage_http_is_refused_and_the_gateway_goes_on(world: World, garbage: bytes) -> None:
    with socket.create_connection((world.host, world.port), timeout=10) as sock:
        sock.sendall(garbage)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ")[1] in (b"400", b"431", b"505")
    assert world.call("GET", "/v1/health", token=None).status == 200


def test_a_head_that_never_ends_is_cut(world: World) -> None:
    before = metric(world, 'posa_gateway_refused_total{cause="header-timeout"}')
    with socket.create_connection((world.host, world.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")    # and nothing more
        assert sock.recv(4096) == b""                              # closed by the gateway
    assert metric(world, 'posa_gateway_refused_total{cause="header-timeout"}') >= before + 1


def test_a_body_that_never_ends_is_408(world: World) -> None:
    with socket.create_connection((world.host, world.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/send/app/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Authorization: Bearer test-token-for-everything-0123\r\n\r\n[1,")
        # the whole answer, head and body (the connection is closed after it:
        # tests/test_gateway_stalled.py)
        answer = b""
        while (chunk := sock.recv(4096)) and not _whole(answer := answer + chunk):
            pass
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 408") and b"problem+json" in head
    assert b"\r\nconnection: close" in head and b"body-timeout" in answer


def _whole(answer: bytes) -> bool:
    """An HTTP answer's head and all the bytes its Content-Length says have come."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = [line.split(b":")[1] for line in head.lower().split(b"\r\n")
              if line.startswith(b"content-length:")]
    return bool(sep) and bool(length) and len(body) >= int(length[0])


def test_connections_over_the_cap_are_refused_with_503(world: World) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(24):                 # the cap from one address, heads in progress
            sock = socket.create_connection((world.host, world.port), timeout=10)
            held.append(sock)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
        over = socket.create_connection((world.host, world.port), timeout=10)
        held.append(over)
        first = over.recv(4096)
        assert first.startswith(b"HTTP/1.1 503") and b"too-many-connections" in first
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: world.call("GET", "/v1/health", token=None).status == 200,
               what="the gateway serving again")
    assert metric(world, 'posa_gateway_refused_total{cause="too-many-from-source"}') >= 1


def test_a_hole_in_the_history_is_a_gap_event(world: World) -> None:
    with posa.Publisher("events/gw", dispatcher=world.dispatcher) as pub:
        for n in range(30):
            pub.publish("h", n)
        pub.flush(10)
    sock = open_stream(world, "/v1/subscribe/events/gw?from=1&topic=h")
    try:
        stream = sse_events(sock, time.monotonic() + 20)
        gap, first = next(stream), next(stream)
    finally:
        sock.close()
    assert gap["event"] == "gap" and gap["data"]["reason"] == "history"
    assert first["event"] == "event" and first["data"]["seq"] > 1


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_a_slow_consumer_is_cut_and_resumes_from_its_last_id(world: World,
                                                             version: str) -> None:
    """A client that stops reading: the gateway buffers 40 events, then ends the
    stream behind what it sent with a slow-consumer gap (a whole chunked body in
    HTTP/1.1); the client resumes with Last-Event-ID."""
    opened = metric(world, "posa_gateway_sse_streams_total")
    ended = metric(world, "posa_gateway_sse_slow_consumers_total")
    sock = open_stream(world, "/v1/subscribe/events/gw?topic=slow", rcvbuf=4096,
                       version=version)
    try:
        wait_until(lambda: metric(world, "posa_gateway_sse_streams_total") > opened,
                   what="the stream open")
        with posa.Publisher("events/gw", dispatcher=world.dispatcher) as pub:
            n = 0
            while metric(world, "posa_gateway_sse_slow_consumers_total") == ended:
                assert n < 20000, "the slow consumer was never cut"
                pub.publish_many([("slow", {"n": n + i, "pad": "x" * 4000})
                                  for i in range(50)])
                pub.flush(10)
                n += 50
        seen = [e for e in sse_events(sock, time.monotonic() + 20)]
    finally:
        sock.close()
    events = [e for e in seen if e["event"] == "event"]
    assert events, "nothing was delivered before the cut"
    if seen[-1]["event"] == "gap":
        assert seen[-1]["data"]["reason"] == "slow-consumer"
    last = events[-1]["id"]
    sock = open_stream(world, "/v1/subscribe/events/gw?topic=slow",
                       headers={"Last-Event-ID": last})
    try:
        resumed = next(sse_events(sock, time.monotonic() + 20))
    finally:
        sock.close()
    assert resumed["event"] in ("event", "gap")     # the history keeps 20 events
    if resumed["event"] == "event":
        assert int(resumed["id"]) > int(last)


def test_a_bad_listen_address_and_an_open_tokens_file_are_refused(tmp_path: Path) -> None:
    proc = Proc.posa("gateway", "--listen", "ftp://127.0.0.1:1")
    try:
        assert proc.popen.wait(30) == 1
        assert b"give http://HOST:PORT" in proc.popen.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.close()
    tokens = tmp_path / "tokens"
    tokens.write_text("x" * 20 + " someone\n")
    tokens.chmod(0o644)
    proc = Proc.posa("gateway", "--tokens", str(tokens))
    try:
        assert proc.popen.wait(30) == 1
        assert b"chmod 600" in proc.popen.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.close()
