"""Scale: request-reply and lookups with 1, 4, 16 and 64 concurrent callers.

Every caller is a thread of one client process (posa: one ``Peer``, whose
forwarder is per thread; Pyro5: a proxy per thread, as Pyro5 requires), all
calling one echo server process over tcp, released together after each made
its share of the warm-up calls (500 in all, at least 10 each). calls/s = all
timed calls / (last caller done - release); p50/p99 over every caller's calls.
The Pyro5 rows are this module's own (the anchors' scripts have one caller
only), listed among the anchors (``bench.anchors``, skipped with
``--no-anchors``): Pyro5's default threaded server, the msgpack serializer, the
same 100-byte message.

NATS request-reply (also anchors of this module's own): ``nc.request`` from 1,
4, 16 or 64 asyncio tasks sharing one nats-py connection, as nats-py is meant
to be used, warmed up and released the same way, against the anchors'
nats-py responder through the run's nats-server.  Beside the NATS 64 row,
``scale_aio_64`` runs 64 tasks sharing one ``posa.aio.Peer`` (``bench.aio``'s
roles): asyncio against asyncio, for reference.

Lookups: uncached ``RegistryClient(cache=False).lookup`` of one name from 1, 4,
16 or 64 threads sharing one client (its forwarder, so its connection, per
thread) against the run's dispatcher, and Pyro5's name server (its default
threaded server) looked up from as many threads, an NS proxy each; the same
warm-up and release.  ``bench.report.plot`` draws all these rows as rate
against the number of callers.
"""
from __future__ import annotations

import importlib.util
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import posa
from bench import LOOKUP, RR, Bench, Goal
from bench.anchors import N_LOOKUP, N_RR, SCALE_CALLERS
from bench.common import emit, latency_summary, make_msg, ready, wait_release

__all__ = ["BENCHES", "GOALS", "concurrent_calls", "measure_calls", "need"]

MODULE = "bench.scale"
WARM = 500                  # untimed calls before the release, shared by the callers
NAME = "bench.echo"         # the name the lookup rows look up (Pyro5's)
FAKE_ADDRESS = "tcp://127.0.0.1:9"   # what posa's lookups return; nobody connects


def concurrent_calls(make_call: Callable[[], Callable[[int], Any]], n: int, callers: int, *,
                     released: Callable[[], float] | None = None,
                     rate: str = "calls_per_s") -> None:
    """Emits ``measure_calls(...)``."""
    emit(measure_calls(make_call, n, callers, released=released, rate=rate))


def measure_calls(make_call: Callable[[], Callable[[int], Any]], n: int, callers: int, *,
                  released: Callable[[], float] | None = None,
                  rate: str = "calls_per_s") -> dict[str, Any]:
    """``callers`` threads, each with its own ``make_call()``, making ``n`` timed
    calls in all after a common release; returns the summary.  ``released``, if
    given, is called once every caller is warm and returns when the callers
    may go (the release time on ``time.monotonic``: the window of several
    processes is then taken on one clock).  ``rate`` names the rate metric."""
    per = max(1, n // callers)
    ready_at = threading.Barrier(callers + 1)
    start = threading.Barrier(callers + 1)
    samples: list[list[int]] = [[] for _ in range(callers)]
    ends = [0.0] * callers
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            call = make_call()
            for i in range(max(10, WARM // callers)):
                call(i)
        except BaseException as exc:  # reported below, the others go on
            errors.append(exc)
            ready_at.abort()
            start.abort()
            return
        ready_at.wait()
        start.wait()
        mine = samples[k]
        clock = time.perf_counter_ns
        for i in range(per):
            t = clock()
            call(i)
            mine.append(clock() - t)
        ends[k] = time.monotonic()

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for thread in threads:
        thread.start()
    try:
        ready_at.wait(timeout=120)
        released_at = released() if released is not None else time.monotonic()
        start.wait(timeout=120)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a caller failed: {errors[:1]}") from None
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise RuntimeError(f"a caller failed: {errors[:1]}")
    merged = [s for caller_samples in samples for s in caller_samples]
    ended_at = max(ends)
    result = latency_summary(merged, ended_at - released_at, len(merged))
    result[rate] = result.pop("calls_per_s")
    return dict(result, released_at=released_at, ended_at=ended_at)


# ------------------------------------------------------------- process roles
def role_posa_callers(dispatcher: str, target: str, n: int, callers: int) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(f"bench/callers-{secrets.token_hex(3)}", registry=reg,
                       listen="tcp://127.0.0.1:0") as peer:
            def make_call() -> Callable[[int], Any]:
                request = peer.request
                return lambda i: request(target, make_msg(i), timeout=30.0)
            concurrent_calls(make_call, n, callers)


def role_posa_lookups(dispatcher: str, n: int, callers: int) -> None:
    """Uncached lookups of one name, ``callers`` threads sharing one ``RegistryClient``
    (its forwarder per thread, as a ``Peer``'s)."""
    with posa.RegistryClient(dispatcher, cache=False) as reg:
        name = f"bench/scale-lookup-{secrets.token_hex(3)}"
        reg.register(name, [FAKE_ADDRESS], credential=secrets.token_hex(8), lease=60.0)

        def make_call() -> Callable[[int], Any]:
            lookup = reg.lookup
            return lambda i: lookup(name)
        concurrent_calls(make_call, n, callers, rate="lookups_per_s")


def role_pyro_ns(servertype: str = "thread") -> None:
    """Pyro5's name server holding ``NAME`` (its default threaded server, or
    ``servertype="multiplex"``: one thread, any number of connections)."""
    import Pyro5.api
    import Pyro5.nameserver

    Pyro5.config.SERIALIZER = "msgpack"
    Pyro5.config.SERVERTYPE = servertype
    uri, daemon, _ = Pyro5.nameserver.start_ns(host="127.0.0.1", port=0,
                                               enableBroadcast=False)
    daemon.nameserver.register(NAME, f"PYRO:{NAME}@127.0.0.1:9")
    threading.Thread(target=lambda: (wait_release(), daemon.shutdown()), daemon=True).start()
    ready(f"{uri.host}:{uri.port}")
    daemon.requestLoop()
    emit({})


def role_pyro_lookups(ns: str, n: int, callers: int) -> None:
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"
    host, port = ns.rsplit(":", 1)

    def make_call() -> Callable[[int], Any]:
        proxy = Pyro5.api.locate_ns(host=host, port=int(port))   # a proxy per thread
        lookup = proxy.lookup
        return lambda i: lookup(NAME)

    concurrent_calls(make_call, n, callers, rate="lookups_per_s")


def role_pyro_server() -> None:
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"

    @Pyro5.api.expose
    class Echo:
        def echo(self, body: Any) -> Any:
            return body

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Echo(), "bench.echo")
    threading.Thread(target=lambda: (wait_release(), daemon.shutdown()), daemon=True).start()
    ready(str(uri))
    daemon.requestLoop()
    emit({})


def role_pyro_callers(uri: str, n: int, callers: int) -> None:
    import Pyro5.api

    Pyro5.config.SERIALIZER = "msgpack"

    def make_call() -> Callable[[int], Any]:
        proxy = Pyro5.api.Proxy(uri)
        proxy._pyroBind()
        echo = proxy.echo
        return lambda i: echo(make_msg(i))

    concurrent_calls(make_call, n, callers)


async def _nats_tasks(url: str, subject: str, n: int, callers: int) -> dict[str, Any]:
    import asyncio

    import msgpack
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    request, packb, unpackb = nc.request, msgpack.packb, msgpack.unpackb
    per = max(1, n // callers)
    go = asyncio.Event()
    warm = asyncio.Barrier(callers + 1)
    samples: list[list[int]] = [[] for _ in range(callers)]
    ends = [0.0] * callers

    async def caller(k: int) -> None:
        for i in range(max(10, WARM // callers)):
            unpackb((await request(subject, packb(make_msg(i)), timeout=30)).data)
        await warm.wait()
        await go.wait()
        mine, clock = samples[k], time.perf_counter_ns
        for i in range(per):
            t = clock()
            unpackb((await request(subject, packb(make_msg(i)), timeout=30)).data)
            mine.append(clock() - t)
        ends[k] = time.monotonic()

    tasks = [asyncio.ensure_future(caller(k)) for k in range(callers)]
    await asyncio.wait_for(warm.wait(), 120)
    released_at = time.monotonic()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    await nc.publish(subject, b"STOP")       # the anchors' responder stops on it
    await nc.flush()
    await nc.close()
    merged = [s for caller_samples in samples for s in caller_samples]
    return latency_summary(merged, max(ends) - released_at, len(merged))


def role_nats_callers(url: str, subject: str, n: int, callers: int) -> None:
    import asyncio  # here, not above: posa's thread roles do not load it

    emit(asyncio.run(_nats_tasks(url, subject, n, callers)))


# ------------------------------------------------------------------ the rows
def _echoed(echo_module: str, client: tuple[str, str], **kwargs: Any
            ) -> Callable[[Any, int], dict[str, Any]]:
    """A row: an echo peer of ``echo_module`` on tcp, then ``client`` (module, role)
    calling it with ``kwargs``."""
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        name = f"bench/scale-echo-{secrets.token_hex(3)}"
        echo = ctx.spawn(echo_module, "echo", hold=True, dispatcher=dispatcher, name=name,
                         listen="tcp://127.0.0.1:0")
        echo.wait_ready()
        result: dict[str, Any] = ctx.spawn(*client, dispatcher=dispatcher, target=name,
                                           n=n, **kwargs).result(180)
        echo.result(timeout=10)
        return result
    return run


def _posa(callers: int) -> Callable[[Any, int], dict[str, Any]]:
    return _echoed("bench.peer", (MODULE, "posa_callers"), callers=callers)


def need(module: str, package: str) -> None:
    """``Skip`` the row unless this interpreter imports ``module`` (from ``package``)."""
    if importlib.util.find_spec(module) is None:
        from bench.runner import Skip
        raise Skip(f"{sys.executable} cannot import {module}: pip install {package} "
                   "(bash bench/setup.sh does it)")


def _pyro(ctx: Any, server_role: str, client_role: str, address: str, n: int,
          callers: int) -> dict[str, Any]:
    """Start a Pyro5 server role, then a client role given its ``address`` keyword."""
    need("Pyro5", "Pyro5")
    server = ctx.spawn(MODULE, server_role, hold=True)
    where = server.wait_ready()
    result: dict[str, Any] = ctx.spawn(MODULE, client_role, n=n, callers=callers,
                                       **{address: where}).result(180)
    server.result(timeout=10)
    return result


def pyro_calls(ctx: Any, n: int, callers: int) -> dict[str, Any]:
    """The Pyro5 row with ``callers`` threads (an anchor: ``bench.anchors.ANCHORS``)."""
    return _pyro(ctx, "pyro_server", "pyro_callers", "uri", n, callers)


def nats_calls(ctx: Any, n: int, callers: int) -> dict[str, Any]:
    """The NATS row with ``callers`` tasks (an anchor: ``bench.anchors.ANCHORS``)."""
    need("nats", "nats-py")
    runner = ctx.anchor_runner(("nats",))
    try:
        subject = f"bench.scale.{secrets.token_hex(4)}"
        responder = runner.Proc("nats_bench.py", "responder", "--url", runner.NATS_URL,
                                "--subject", subject)
        responder.wait_ready()
        result: dict[str, Any] = ctx.spawn(MODULE, "nats_callers", url=runner.NATS_URL,
                                           subject=subject, n=n,
                                           callers=callers).result(180)
        responder.result(timeout=10)
        return result
    finally:
        runner.stop_all()     # the anchors' own PID sweep of the processes it started


def _lookups(callers: int) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        result: dict[str, Any] = ctx.spawn(MODULE, "posa_lookups", dispatcher=ctx.dispatcher(),
                                           n=n, callers=callers).result(180)
        return result
    return run


def pyro_lookups(ctx: Any, n: int, callers: int) -> dict[str, Any]:
    """Pyro5 name-server lookups from ``callers`` threads (an anchor)."""
    return _pyro(ctx, "pyro_ns", "pyro_lookups", "ns", n, callers)


def _aio(tasks: int) -> Callable[[Any, int], dict[str, Any]]:
    return _echoed("bench.aio", ("bench.aio", "client"), listen="tcp://127.0.0.1:0",
                   tasks=tasks)


BENCHES = [
    Bench(f"scale_calls_{callers}", f"Peer.request over tcp, {callers} caller thread(s) "
          "of one process", _posa(callers), N_RR, RR, versus=f"scale_pyro_{callers}",
          beside=(f"scale_nats_{callers}",))
    for callers in SCALE_CALLERS
] + [
    Bench(f"scale_lookup_{callers}", f"RegistryClient(cache=False).lookup, {callers} caller "
          "thread(s) sharing one client", _lookups(callers), N_LOOKUP, LOOKUP,
          versus=f"scale_pyro_lookup_{callers}")
    for callers in SCALE_CALLERS
] + [
    Bench("scale_aio_64", "posa.aio.Peer.request, 64 tasks sharing one peer, tcp", _aio(64),
          N_RR, RR, versus="scale_nats_64",
          note="asyncio against asyncio: NATS's rows are tasks sharing one nats-py connection"),
]

GOALS = [
    Goal("i21-scale-64", "issue 21", "64 callers: Peer.request calls/s ≥ 3× Pyro5's",
         ("scale_calls_64", "calls_per_s"), ("scale_pyro_64", "calls_per_s"), ">=", 3.0),
    Goal("i21-scale-64-nats", "issue 21",
         "64 callers: Peer.request calls/s ≥ 2× NATS request-reply's (64 tasks)",
         ("scale_calls_64", "calls_per_s"), ("scale_nats_64", "calls_per_s"), ">=", 2.0),
    Goal("i21-scale-lookup-64", "issue 21",
         "64 callers: uncached lookups/s ≥ 3× Pyro5 name-server lookups (a proxy a thread)",
         ("scale_lookup_64", "lookups_per_s"), ("scale_pyro_lookup_64", "lookups_per_s"),
         ">=", 3.0),
]
