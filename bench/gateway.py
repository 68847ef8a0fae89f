"""Area 9, the HTTP gateway: request-reply and event streams for programs that speak HTTP.

- Request-reply: a ``posa gateway`` process (aiohttp, no tokens, on loopback),
  an echo peer over tcp (``bench.peer``'s ``echo`` role) and a client process
  making sequential ``POST /v1/request/{name}`` calls over **one keep-alive
  connection** (``http.client``), a JSON body ``{"seq": i, "body": "x" * 83}``
  each, the reply parsed; 500 warm-up calls first.  The anchor is Pyro5's own
  HTTP gateway (``Pyro5.utils.httpgateway``, bench/pyro_http.py) serving a
  Pyro5 object found through its name server, called by the same client code.
- Event streams: a channel process, a ``posa gateway`` and one client reading
  ``GET /v1/subscribe/{channel}`` (Server-Sent Events, ``http.client``, each
  event's JSON parsed) while a ``Publisher`` process publishes n anchor
  messages on one topic; against one ``posa.Subscriber`` process on the same
  channel (``bench.channel``'s roles).  The rate is events / (publisher's first
  publish -> the reader's last event), as the channel rows take it.  Before the
  publisher starts, the SSE reader publishes primer events (``seq`` -1) until
  one comes back, so the gateway's subscription is known to be in place.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import posa
from bench import RR, Bench, Column, Goal
from bench.anchors import N_RR
from bench.common import (
    FIRST_MSG_TIMEOUT_S,
    HARD_LIFETIME_S,
    IDLE_TIMEOUT_S,
    MAX_MEASURE_S,
    emit,
    now,
    ready,
    timed_calls,
    wait_release,
)
from bench.cpu import at_ready
from bench.process import Proc

MODULE = "bench.gateway"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPIC = "bench/fanout"          # bench.channel's publisher publishes on it
N_EVENTS = 20_000
JSON_HEADERS = {"Content-Type": "application/json"}
STREAM: tuple[Column, ...] = (("msgs_per_s", "events/s", "rate"),
                              ("delivered", "delivered", "int"),
                              ("gaps", "gap events", "int"),
                              ("complete", "all delivered, in order", "bool"))


def http_connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=30)


def http_calls(url: str, path: Callable[[int], str], body: Callable[[int], bytes | None],
               n: int) -> dict[str, Any]:
    """Sequential POSTs on one ``http.client`` connection (kept alive if the server keeps
    it; ``http.client`` opens a new one when the server closed it): ``timed_calls``."""
    conn = http_connection(url)
    request, getresponse, loads = conn.request, conn.getresponse, json.loads

    def call(i: int) -> Any:
        request("POST", path(i), body(i), JSON_HEADERS)
        response = getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return loads(data)

    try:
        return timed_calls(call, n)
    finally:
        conn.close()


# ------------------------------------------------------------- process roles
def role_http_client(url: str, target: str, n: int) -> None:
    def body(i: int) -> bytes:
        return json.dumps({"seq": i, "body": "x" * 83}).encode()

    emit(http_calls(url, lambda i: f"/v1/request/{target}?timeout=5", body, n))


def _sse_events(response: http.client.HTTPResponse) -> Any:
    """Yield ``(kind, data)`` for every event of an SSE stream (``event`` or ``gap``)."""
    kind = ""
    for raw in response:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"event:"):
            kind = line[6:].strip().decode()
        elif line.startswith(b"data:") and kind:
            yield kind, json.loads(line[5:])
        elif not line:
            kind = ""


def role_sse_reader(dispatcher: str, url: str, channel: str, n: int) -> None:
    conn = http_connection(url)
    conn.request("GET", f"/v1/subscribe/{channel}?topic={TOPIC}")
    response = conn.getresponse()        # the gateway has subscribed by now
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    events = _sse_events(response)
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Publisher(channel, registry=reg, timeout=10.0) as primer:
            primer.publish(TOPIC, {"seq": -1})      # the stream is live once this is back
            primer.flush(10.0)
            kind, first = next(events)
            if kind != "event" or first["body"]["seq"] != -1:
                raise RuntimeError(f"the stream began with {kind} {first}, not the primer")
    ready()
    count = out_of_order = gaps = 0
    t_first = t_last = 0.0
    expected = 0
    deadline = now() + min(HARD_LIFETIME_S - 10, FIRST_MSG_TIMEOUT_S + MAX_MEASURE_S)
    sock = conn.sock
    assert sock is not None
    sock.settimeout(FIRST_MSG_TIMEOUT_S)
    try:
        for kind, data in events:
            if kind == "gap":
                gaps += 1
                continue
            seq = data["body"]["seq"]
            if kind != "event" or seq < 0:
                continue
            t_last = now()
            if not count:
                t_first = t_last
                sock.settimeout(IDLE_TIMEOUT_S)   # keep-alive comments come every 15 s
            count += 1
            out_of_order += seq != expected
            expected = seq + 1
            if count >= n or t_last > deadline:
                break
    except OSError:          # the socket's timeout: nothing more came
        pass
    conn.close()
    emit({"count": count, "t_first": t_first, "t_last": t_last, "out_of_order": out_of_order,
          "gaps": gaps})
    wait_release()


# ------------------------------------------------------------------ the rows
def start_gateway(ctx: Any, dispatcher: str) -> str:
    """A ``posa gateway`` process of this row (no tokens, loopback); its URL."""
    argv = [ctx.python, "-m", "posa", "gateway", "--listen", "http://127.0.0.1:0",
            "--dispatcher", dispatcher]
    proc = Proc(argv, group=ctx.group, cwd=REPO_ROOT, env=ctx.env)
    rest = proc.wait_line("posa gateway at", timeout=60)     # "URL (peer NAME)"
    at_ready(proc.p.pid)
    return rest.split()[0]


def _request(ctx: Any, n: int) -> dict[str, Any]:
    dispatcher = ctx.dispatcher()
    name = f"bench/gw-echo-{secrets.token_hex(3)}"
    echo = ctx.spawn("bench.peer", "echo", hold=True, dispatcher=dispatcher, name=name,
                     listen=ctx.address("tcp"))
    echo.wait_ready()
    url = start_gateway(ctx, dispatcher)
    result: dict[str, Any] = ctx.spawn(MODULE, "http_client", url=url, target=name,
                                       n=n).result(timeout=HARD_LIFETIME_S)
    echo.result(timeout=10)
    return result


def _stream(through_gateway: bool) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        name = f"bench/gw-channel-{secrets.token_hex(3)}"
        channel = ctx.spawn("bench.channel", "channel", hold=True, dispatcher=dispatcher,
                            name=name, listen=ctx.address("zmq+tcp"))
        channel.wait_ready()
        if through_gateway:
            url = start_gateway(ctx, dispatcher)
            reader = ctx.spawn(MODULE, "sse_reader", hold=True, dispatcher=dispatcher,
                               url=url, channel=name, n=n)
        else:
            reader = ctx.spawn("bench.channel", "subscriber", hold=True,
                               dispatcher=dispatcher, channel=name,
                               listen=ctx.address("zmq+tcp"), n=n)
        reader.wait_ready(timeout=60)
        pub = ctx.spawn("bench.channel", "publisher", hold=True, dispatcher=dispatcher,
                        channel=name, n=n)
        got = reader.wait_result(timeout=HARD_LIFETIME_S)
        sent = pub.result()
        reader.result()
        channel.result(timeout=10)
        span = got["t_last"] - sent["t_start"]
        return {"msgs_per_s": got["count"] / span if got["count"] and span > 0 else 0.0,
                "delivered": got["count"], "gaps": got.get("gaps", 0),
                "complete": got["count"] == n and got["out_of_order"] == 0}
    return run


BENCHES = [
    Bench("gw_request", "posa gateway: POST /v1/request/{name} → echo peer (tcp), one "
          "keep-alive HTTP connection", _request, N_RR, RR),
    Bench("gw_sse", "posa gateway: GET /v1/subscribe/{channel} (SSE) ← Publisher → "
          "EventChannel, 1 reader", _stream(True), N_EVENTS, STREAM, versus="gw_sse_direct"),
    Bench("gw_sse_direct", "the same channel read by 1 posa.Subscriber process (reference)",
          _stream(False), N_EVENTS, STREAM,
          note="events/s from the publisher's first publish to the reader's last event; "
               "the SSE row's ratio is against the direct Subscriber"),
]

GOALS = [
    Goal("gw-request", "issue 19", "gateway request-reply calls/s ≥ 2× Pyro5's HTTP gateway",
         ("gw_request", "calls_per_s"), ("pyro_http", "calls_per_s"), ">=", 2.0),
]
