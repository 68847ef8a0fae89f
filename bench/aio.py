"""asyncio concurrency: tasks sharing one ``posa.aio.Peer``.

Rows: 1 task, then 10 tasks, awaiting ``Peer.request`` on one ``posa.aio.Peer``
to an echo peer in another process over tcp; the tasks take the next call from
one shared count until ``n`` calls are done.  While they run, a ticker task
sleeps 1 ms at a time and records how late it wakes: the event loop's lag, which
a call that blocks the loop shows at once.  The goals: 10 tasks make at least
1.5× the calls/s of 1 task (their requests travel together), and the lag's p99
stays under 5 ms (nothing blocks the loop).
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import posa
import posa.aio
from bench import Bench, Column, Goal
from bench.anchors import N_RR
from bench.common import MAX_MEASURE_S, emit, latency_summary, make_msg, now, ready, wait_release

MODULE = "bench.aio"
TICK = 0.001            # the ticker's sleep, seconds
WARMUP = 200            # calls before timing, spread over the tasks
COLUMNS: tuple[Column, ...] = (("calls_per_s", "calls/s", "rate"),
                               ("p50_us", "p50 µs", "us"), ("p99_us", "p99 µs", "us"),
                               ("lag_p99_ms", "loop lag p99 ms", "ms"),
                               ("lag_max_ms", "loop lag max ms", "ms"))


def _name(role: str) -> str:
    return f"bench/{role}-{secrets.token_hex(3)}"


# ------------------------------------------------------------- process roles
def role_echo(dispatcher: str, name: str, listen: str) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(name, registry=reg, listen=listen, handler=lambda msg: msg.body):
            ready()
            wait_release()
            emit({})


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    clock = time.perf_counter
    while not stop.is_set():
        start = clock()
        await asyncio.sleep(TICK)
        lags.append(clock() - start - TICK)


async def _calls(request: Callable[[int], Any], n: int, tasks: int) -> dict[str, Any]:
    """``n`` calls of ``request(i)`` made by ``tasks`` tasks at once (stopping after
    ``MAX_MEASURE_S``), with the loop's lag measured meanwhile."""
    samples: list[int] = []
    issued = 0
    clock = time.perf_counter_ns
    t0 = now()

    async def worker() -> None:
        nonlocal issued
        while issued < n and now() - t0 < MAX_MEASURE_S:
            i = issued
            issued += 1
            start = clock()
            await request(i)
            samples.append(clock() - start)

    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(lags, stop))
    t0 = now()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = now() - t0
    stop.set()
    await ticker
    result = latency_summary(samples, elapsed, len(samples))
    lags.sort()
    result.update(tasks=tasks, ticks=len(lags),
                  lag_p99_ms=lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000
                  if lags else 0.0,
                  lag_max_ms=lags[-1] * 1000 if lags else 0.0)
    return result


def role_client(dispatcher: str, target: str, listen: str, n: int, tasks: int) -> None:
    async def main() -> dict[str, Any]:
        with posa.RegistryClient(dispatcher) as reg:
            async with posa.aio.Peer(_name("aio-tasks"), registry=reg, listen=listen) as peer:
                request = peer.request

                def call(i: int) -> Any:
                    return request(target, make_msg(i), timeout=10.0)
                await _calls(call, WARMUP, tasks)
                return await _calls(call, n, tasks)

    emit(asyncio.run(main()))


# ------------------------------------------------------------------ the rows
def _tasks(count: int) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        echo_name = _name("aio-echo")
        echo = ctx.spawn(MODULE, "echo", hold=True, dispatcher=dispatcher, name=echo_name,
                         listen=ctx.address("tcp"))
        echo.wait_ready()
        result: dict[str, Any] = ctx.spawn(MODULE, "client", dispatcher=dispatcher,
                                           target=echo_name, listen=ctx.address("tcp"),
                                           n=n, tasks=count).result()
        echo.result(timeout=10)
        return result
    return run


BENCHES = [
    Bench("aio_tasks1", "posa.aio.Peer.request, 1 task, tcp", _tasks(1), N_RR, COLUMNS),
    Bench("aio_tasks10", "posa.aio.Peer.request, 10 tasks sharing the peer, tcp", _tasks(10),
          N_RR, COLUMNS,
          note=f"loop lag = how late a task sleeping {TICK * 1000:g} ms at a time wakes "
               "while the calls run"),
]

ASYNCIO = "issue 15 (asyncio)"
GOALS = [
    Goal("aio-tasks", ASYNCIO, "posa.aio: 10 tasks sharing one Peer ≥ 1.5× the calls/s of 1 task",
         ("aio_tasks10", "calls_per_s"), ("aio_tasks1", "calls_per_s"), ">=", 1.5),
    Goal("aio-lag", ASYNCIO, "posa.aio: event-loop lag p99 < 5 ms while 10 tasks call",
         ("aio_tasks10", "lag_p99_ms"), None, "<", 5.0, unit="ms"),
]
