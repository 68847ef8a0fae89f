"""Area 3, the dispatcher: name lookups and service calls through a real dispatcher process.

- Uncached lookups: ``RegistryClient(addr, cache=False).lookup(name)`` of one
  registered name, sequentially, timed per call like the Pyro5 name-server
  anchor (which reuses its name-server proxy).
- Cached lookups: ``RegistryClient(addr)`` once its watch is live (a batch of
  100 lookups served in under 1 ms tells it is), in a loop without per-call
  timing; p50/p99 come from a second, timed loop.
- ``Client.call``: a ``posa.Server`` echo service and a ``posa.Client`` calling
  it by service name, sequentially, 500 warm-up calls first; ``bind_ms`` is the
  first call (dispatcher pick, connect, call), as Pyro5's PYRONAME bind.
- Lookups among many names: a dispatcher started from a state file holding
  100, or 100k, registrations (made once per run by a ``posa.Dispatcher`` in a
  helper process and saved by its ``close()``), looked up uncached in a random
  order over 1000 of them.  The time the dispatcher process takes from its
  start to listening (loading the state file) is reported as ``start_ms``.
"""
from __future__ import annotations

import os
import random
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import posa
from bench import LOOKUP, RR, Bench, Goal
from bench.anchors import N_LOOKUP, N_RR
from bench.common import (
    HARD_LIFETIME_S,
    MAX_MEASURE_S,
    emit,
    make_msg,
    now,
    ready,
    timed_calls,
    wait_release,
)

MODULE = "bench.dispatcher"
N_CACHED = 200_000
SLOW_S = 1.5                  # the slow handler's seconds (issue 15: once answered, run once)
SLOW_COLUMNS = (("answers", "answers", "int"), ("executions", "executions", "int"),
                ("seconds", "s for all", "ms"))
SCALE_SAMPLE = 1000           # distinct names looked up in the scale rows
FAKE_ADDRESS = "zmq+tcp://127.0.0.1:9"   # lookups return it; nobody connects
MANY_NAMES = LOOKUP + (("names", "names held", "int"),
                       ("start_ms", "dispatcher start-up from its state file, ms", "ms"))


def scale_name(i: int) -> str:
    return f"bench/scale/g{i // 1000:03d}/n{i:06d}"


# ------------------------------------------------------------- process roles
def _timed(lookup: Callable[[int], Any], n: int) -> dict[str, Any]:
    summary = timed_calls(lookup, n, warmup=0, limit_s=MAX_MEASURE_S / 2)
    summary["lookups_per_s"] = summary.pop("calls_per_s")
    return summary


def role_lookups(dispatcher: str, n: int, names: int = 0) -> None:
    """Uncached lookups: of one name registered here, or (``names`` > 0) of a sample
    of the ``scale_name`` names the dispatcher was started with."""
    with posa.RegistryClient(dispatcher, cache=False) as reg:
        if names:
            rng = random.Random(7)
            sample = [scale_name(rng.randrange(names)) for _ in range(SCALE_SAMPLE)]
        else:
            sample = [f"bench/lookup-{secrets.token_hex(3)}"]
            reg.register(sample[0], [FAKE_ADDRESS], credential=secrets.token_hex(8),
                         lease=HARD_LIFETIME_S)
        lookup = reg.lookup
        cycle = iter(sample * (1 + (n + 100) // len(sample)))
        for _ in range(100):
            lookup(next(cycle))
        emit(_timed(lambda _: lookup(next(cycle)), n))


def role_cached_lookups(dispatcher: str, n: int) -> None:
    with posa.RegistryClient(dispatcher, timeout=10.0) as reg:
        name = f"bench/cached-{secrets.token_hex(3)}"
        reg.register(name, [FAKE_ADDRESS], credential=secrets.token_hex(8),
                     lease=HARD_LIFETIME_S)
        try:            # returns once the dispatcher took the watch: the cache is live
            reg.watch(lambda name, registration: None)
        except posa.Timeout as exc:
            emit({"error": f"the cache never went live: {exc}"})
            return
        lookup = reg.lookup
        lookup(name)    # asked once, cached from now on
        t0 = now()
        for _ in range(n):
            lookup(name)
        untimed = n / (now() - t0)
        result = _timed(lambda _: lookup(name), min(n, 100_000))
        result["lookups_per_s"] = untimed
        emit(result)


def role_service(dispatcher: str, service: str, listen: str) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Server(service, lambda body: body, registry=reg, listen=listen):
            ready()
            wait_release()
            emit({})


def role_caller(dispatcher: str, service: str, n: int) -> None:
    with posa.Client(dispatcher=dispatcher) as client:
        call = client.call
        start = now()
        call(service, make_msg(0), timeout=5.0)
        bind_ms = (now() - start) * 1000
        result = timed_calls(lambda i: call(service, make_msg(i), timeout=5.0), n)
        result["bind_ms"] = bind_ms
        emit(result)


def role_slow_service(dispatcher: str, service: str, listen: str, seconds: float,
                      workers: int) -> None:
    runs = []

    def slow(body: Any) -> Any:
        runs.append(body)       # list.append is atomic: the executions, counted
        time.sleep(seconds)     # the handler's work
        return body
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Server(service, slow, registry=reg, listen=listen, workers=workers):
            ready()
            wait_release()
            emit({"executions": len(runs)})


def role_slow_caller(dispatcher: str, service: str, n: int) -> None:
    with posa.Client(dispatcher=dispatcher) as client, ThreadPoolExecutor(n) as pool:
        start = now()
        calls = [pool.submit(client.call, service, i, timeout=30.0) for i in range(n)]
        answers = sum(1 for i, call in enumerate(calls) if call.result() == i)
        emit({"answers": answers, "seconds": now() - start})


def role_make_state(path: str, names: int) -> None:
    """Save a dispatcher state file holding ``names`` registrations."""
    dispatcher = posa.Dispatcher("tcp://127.0.0.1:0", state=path)
    try:
        credential = secrets.token_hex(8)
        register = dispatcher.registry.register
        for i in range(names):
            register(scale_name(i), [FAKE_ADDRESS], credential=credential, lease=3600.0)
    finally:
        dispatcher.close()          # saves the state file
    emit({"names": names})


# ------------------------------------------------------------------ the rows
def _uncached(ctx: Any, n: int) -> dict[str, Any]:
    return ctx.spawn(MODULE, "lookups", dispatcher=ctx.dispatcher(), n=n).result()  # type: ignore[no-any-return]


def _cached(ctx: Any, n: int) -> dict[str, Any]:
    result: dict[str, Any] = ctx.spawn(MODULE, "cached_lookups", dispatcher=ctx.dispatcher(),
                                       n=n).result()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _call(scheme: str) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        service = f"bench/echo-{secrets.token_hex(3)}"
        server = ctx.spawn(MODULE, "service", hold=True, dispatcher=dispatcher,
                           service=service, listen=ctx.address(scheme))
        server.wait_ready()
        result: dict[str, Any] = ctx.spawn(MODULE, "caller", dispatcher=dispatcher,
                                           service=service, n=n).result()
        server.result(timeout=10)
        return result
    return run


def _slow(ctx: Any, n: int) -> dict[str, Any]:
    dispatcher = ctx.dispatcher()
    service = f"bench/slow-{secrets.token_hex(3)}"
    server = ctx.spawn(MODULE, "slow_service", hold=True, dispatcher=dispatcher,
                       service=service, listen=ctx.address("tcp"), seconds=SLOW_S, workers=n)
    server.wait_ready()
    result: dict[str, Any] = ctx.spawn(MODULE, "slow_caller", dispatcher=dispatcher,
                                       service=service, n=n).result(timeout=120)
    result.update(server.result(timeout=30))
    return result


def _state_file(ctx: Any, names: int) -> str:
    """A dispatcher state file holding ``names`` registrations (made once per run),
    copied so that each dispatcher starts from the same file."""
    pristine = os.path.join(ctx.tmpdir, f"names-{names}.state")
    if not os.path.exists(pristine):
        ctx.spawn(MODULE, "make_state", path=pristine, names=names).result()
    copy = os.path.join(ctx.tmpdir, f"run-{secrets.token_hex(3)}.state")
    shutil.copyfile(pristine, copy)
    return copy


def _among(names: int) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        count = names if names <= SCALE_SAMPLE else max(SCALE_SAMPLE,
                                                        int(names * min(1.0, ctx.scale)))
        state = _state_file(ctx, count)
        started = time.perf_counter()
        dispatcher = ctx.start_dispatcher(state=state)
        start_ms = (time.perf_counter() - started) * 1000
        result: dict[str, Any] = ctx.spawn(MODULE, "lookups", dispatcher=dispatcher, n=n,
                                           names=count).result()
        result.update(names=count, start_ms=start_ms)
        return result
    return run


BENCHES = [
    Bench("disp_lookup", "RegistryClient(cache=False).lookup, one name",
          _uncached, N_LOOKUP, LOOKUP),
    Bench("disp_lookup_cached", "RegistryClient.lookup, cached (watched)", _cached,
          N_CACHED, LOOKUP),
    Bench("disp_call", "Client.call through the dispatcher (posa.Server echo, zmq+tcp)",
          _call("zmq+tcp"), N_RR, RR + (("bind_ms", "first call ms", "ms"),)),
    Bench("disp_call_tcp", "Client.call through the dispatcher (posa.Server echo, tcp)",
          _call("tcp"), N_RR, RR + (("bind_ms", "first call ms", "ms"),)),
    Bench("disp_slow", f"Client.call of a {SLOW_S:g} s handler, 100 calls at once (tcp)",
          _slow, 100, SLOW_COLUMNS,
          note="the server runs 100 workers; every call must be answered and run once"),
    Bench("disp_lookup_100", "uncached lookups, dispatcher holding 100 names",
          _among(100), N_LOOKUP, MANY_NAMES),
    Bench("disp_lookup_100k", "uncached lookups, dispatcher holding 100k names",
          _among(100_000), N_LOOKUP, MANY_NAMES,
          note="with --scale below 1 the dispatcher holds scale × 100k names (at least 1000)"),
]

DISPATCH = "dispatcher"
GOALS = [
    Goal("disp-lookup", DISPATCH, "uncached lookups/s ≥ 1.2× Pyro5 NS lookups (proxy reused)",
         ("disp_lookup", "lookups_per_s"), ("pyro_lookup", "lookups_per_s"), ">=", 1.2),
    Goal("disp-cached", DISPATCH, "cached lookups/s ≥ 100× uncached lookups/s",
         ("disp_lookup_cached", "lookups_per_s"), ("disp_lookup", "lookups_per_s"), ">=", 100.0),
    Goal("disp-call", DISPATCH,
         "Client.call (zmq+tcp) calls/s ≥ 1.1× Pyro5 proxy calls via PYRONAME:",
         ("disp_call", "calls_per_s"), ("pyro_ns", "calls_per_s"), ">=", 1.1),
    Goal("disp-call-tcp", DISPATCH,
         "Client.call (tcp) calls/s ≥ 1.1× Pyro5 proxy calls via PYRONAME:",
         ("disp_call_tcp", "calls_per_s"), ("pyro_ns", "calls_per_s"), ">=", 1.1),
    Goal("i21-call-cpu", "issue 21", "Client.call (tcp) CPU per call ≤ 0.7× a Pyro5 call's",
         ("disp_call_tcp", "cpu_us_per_op"), ("pyro_ns", "cpu_us_per_op"), "<=", 0.7),
    Goal("i21-call", "issue 21", "Client.call (tcp) calls/s ≥ 1.5× Pyro5 via PYRONAME:",
         ("disp_call_tcp", "calls_per_s"), ("pyro_ns", "calls_per_s"), ">=", 1.5),
    Goal("i21-lookup", "issue 21", "uncached lookups/s ≥ 1.5× Pyro5 NS lookups",
         ("disp_lookup", "lookups_per_s"), ("pyro_lookup", "lookups_per_s"), ">=", 1.5),
    Goal("disp-slow-answers", "issue 15", f"a {SLOW_S:g} s handler called 100 times: 100 answers",
         ("disp_slow", "answers"), None, ">=", 100, unit=""),
    Goal("disp-slow-runs", "issue 15", f"a {SLOW_S:g} s handler called 100 times: 100 executions",
         ("disp_slow", "executions"), None, "<=", 100, unit=""),
    Goal("disp-scale", DISPATCH, "lookup p50 with 100k names ≤ 1.5× p50 with 100 names",
         ("disp_lookup_100k", "p50_us"), ("disp_lookup_100", "p50_us"), "<=", 1.5),
]
