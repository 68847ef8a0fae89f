"""Idle connections: what 2,000 idle clients cost a dispatcher, its clients and its lookups.

One row (and its Pyro5 anchor), measured in one rep, in this order:

1. a dispatcher of the row's own, its connection limits raised past 2,000
   (``--max-connections``, ``--max-connections-per-source``: every client is on
   127.0.0.1), its resident memory read (``VmRSS`` of ``/proc/<pid>/status``);
2. a lookup process holding no other connection: uncached lookups of one name,
   one caller, ``n`` timed (p50, p99, lookups/s): the idle-free figures;
3. a holder process raises its descriptor limit, opens 2,000 clients
   (``RegistryClient(cache=False)``, one lookup each, so each holds one
   connection to the dispatcher) and leaves them idle; its own VmRSS is read
   before the first and after the last, the dispatcher's again once all are open;
4. a second lookup process as in 2, now beside the 2,000 idle clients;
5. the holder itself, still holding its 2,000 connections, makes the same
   lookups with one more client: a process with 2,000 sockets against one with none.

Memory per connection = VmRSS growth / 2,000, in the dispatcher (server) and in
the holder (client: everything one more client costs, its objects included).
The Pyro5 anchor does the same with Pyro5's name server (``SERVERTYPE =
"multiplex"``: its default threaded server refuses connections past its pool of
80 threads) and 2,000 name-server proxies, one lookup each.  With ``--scale``
below 1 the holder opens scale × 2,000 clients (at least 20).
"""
from __future__ import annotations

import gc
import os
import resource
import secrets
from collections.abc import Callable
from typing import Any

import posa
from bench import Bench, Goal
from bench.anchors import IDLE as COLUMNS
from bench.anchors import N_LOOKUP
from bench.common import emit, ready, wait_release
from bench.scale import FAKE_ADDRESS, NAME, measure_calls, need

__all__ = ["BENCHES", "GOALS", "rss_kb"]

MODULE = "bench.idle"
IDLE_CLIENTS = 2000             # idle clients at --scale 1
LIMIT = str(4 * IDLE_CLIENTS)   # the dispatcher's connection limits in the row


def rss_kb(pid: int) -> int:
    """The resident memory of ``pid``, KB (``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _raise_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------- process roles
def _hold(count: int, open_one: Callable[[], Any], lookup_with: Callable[[Any], Any],
          fresh: Callable[[], Any], n: int) -> None:
    """Open ``count`` clients, each used once; READY with the RSS growth; on release,
    lookups (one caller) with one more client while the others stay open."""
    _raise_descriptors(count)
    held = [open_one()]            # the modules and the reactor loaded before measuring
    lookup_with(held[0])
    gc.collect()
    before = rss_kb(os.getpid())
    for _ in range(count):
        client = open_one()
        lookup_with(client)
        held.append(client)
    gc.collect()
    ready(str(rss_kb(os.getpid()) - before))
    wait_release()

    def make_call() -> Callable[[int], Any]:
        client = fresh()            # made by the thread that uses it (a Pyro5 proxy's rule)
        return lambda i: lookup_with(client)
    result = measure_calls(make_call, n, 1, rate="lookups_per_s")
    emit({"lookups_per_s": result["lookups_per_s"], "held": len(held) - 1})


def role_holder(dispatcher: str, name: str, count: int, n: int) -> None:
    _hold(count, lambda: posa.RegistryClient(dispatcher, cache=False),
          lambda reg: reg.lookup(name), lambda: posa.RegistryClient(dispatcher, cache=False), n)


def role_register(dispatcher: str, name: str) -> None:
    """Register ``name`` and keep it until released."""
    with posa.RegistryClient(dispatcher, cache=False) as reg:
        reg.register(name, [FAKE_ADDRESS], credential=secrets.token_hex(8), lease=120.0)
        ready()
        wait_release()
        emit({})


def role_pyro_holder(ns: str, count: int, n: int) -> None:
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"
    host, port = ns.rsplit(":", 1)

    def proxy() -> Any:
        return Pyro5.api.locate_ns(host=host, port=int(port))

    _hold(count, proxy, lambda ns_proxy: ns_proxy.lookup(NAME), proxy, n)


# ------------------------------------------------------------------ the rows
def _connections(ctx: Any) -> int:
    return max(20, int(IDLE_CLIENTS * min(1.0, ctx.scale)))


def _measure(ctx: Any, server_pid: int, lookups: Callable[[], dict[str, Any]],
             start_holder: Callable[[int], Any]) -> dict[str, Any]:
    """Steps 2-5 of the module's docstring, against a server already started."""
    count = _connections(ctx)
    base = lookups()
    server_before = rss_kb(server_pid)
    holder = start_holder(count)        # it opens its clients at once
    client_kb = int(holder.wait_ready(timeout=50))
    server_kb = rss_kb(server_pid) - server_before
    idle = lookups()
    held = holder.result(timeout=50)
    if held["held"] != count:
        raise RuntimeError(f"the holder held {held['held']} clients, not {count}")
    return {"server_kb_per_conn": server_kb / count, "client_kb_per_conn": client_kb / count,
            "base_p99_us": base["p99_us"], "idle_p99_us": idle["p99_us"],
            "p99_ratio": idle["p99_us"] / base["p99_us"],
            "base_lookups_per_s": base["lookups_per_s"],
            "held_lookups_per_s": held["lookups_per_s"],
            "held_ratio": held["lookups_per_s"] / base["lookups_per_s"],
            "p50_us": idle["p50_us"], "connections": count}


def _posa(ctx: Any, n: int) -> dict[str, Any]:
    dispatcher = ctx.start_dispatcher(args=("--max-connections", LIMIT,
                                            "--max-connections-per-source", LIMIT))
    pid = ctx.group.procs[-1].p.pid      # the row's newest process: that dispatcher
    name = f"bench/idle-{secrets.token_hex(3)}"
    ctx.spawn(MODULE, "register", hold=True, dispatcher=dispatcher, name=name).wait_ready()

    def lookups() -> dict[str, Any]:
        result: dict[str, Any] = ctx.spawn("bench.scale", "posa_lookups", dispatcher=dispatcher,
                                           n=n, callers=1).result(timeout=50)
        return result

    return _measure(ctx, pid, lookups, lambda count: ctx.spawn(
        MODULE, "holder", hold=True, dispatcher=dispatcher, name=name, count=count, n=n))


def pyro_idle(ctx: Any, n: int) -> dict[str, Any]:
    """The Pyro5 anchor (``bench.anchors.ANCHORS``)."""
    need("Pyro5", "Pyro5")
    server = ctx.spawn("bench.scale", "pyro_ns", hold=True, servertype="multiplex")
    ns = server.wait_ready()

    def lookups() -> dict[str, Any]:
        result: dict[str, Any] = ctx.spawn("bench.scale", "pyro_lookups", ns=ns, n=n,
                                           callers=1).result(timeout=50)
        return result

    return _measure(ctx, server.p.pid, lookups, lambda count: ctx.spawn(
        MODULE, "pyro_holder", hold=True, ns=ns, count=count, n=n))


BENCHES = [
    Bench("idle_2000", "posa dispatcher, 2,000 idle RegistryClient connections", _posa,
          N_LOOKUP, COLUMNS, beside=("idle_pyro_2000",),
          note="server = the dispatcher's VmRSS growth, client = the holding process's, "
               "per connection; lookups: one caller, uncached"),
]

ISSUE = "issue 21"
GOALS = [
    Goal("i21-idle-server", ISSUE, "2,000 idle clients: dispatcher memory ≤ 8 KB per connection",
         ("idle_2000", "server_kb_per_conn"), None, "<=", 8.0, unit="KB"),
    Goal("i21-idle-client", ISSUE, "2,000 idle clients: client memory ≤ 8 KB per connection",
         ("idle_2000", "client_kb_per_conn"), None, "<=", 8.0, unit="KB"),
    Goal("i21-idle-p99", ISSUE, "2,000 idle clients: lookup p99 ≤ 1.2× the idle-free p99",
         ("idle_2000", "p99_ratio"), None, "<=", 1.2),
    Goal("i21-idle-held", ISSUE, "a process holding 2,000 connections: lookups/s ≥ 0.95× "
         "a process holding none (no slower, within a rep's noise)",
         ("idle_2000", "held_ratio"), None, ">=", 0.95),
]
