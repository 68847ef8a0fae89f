"""What every benchmark process shares: the message, the handshake, the clock, statistics.

The message model and method are those of the anchors (``../shared/anchors/common.py``),
so that posa rows and anchor rows measure the same work:

- every message is ``msgpack({"seq": i, "body": b"x" * 83})``, 96-100 bytes;
  frame-level senders encode each with ``msgpack.packb`` and receivers decode
  each (posa's own envelope codec does this inside posa's rows);
- a process prints ``READY [extra]`` when it can be talked to and one
  ``RESULT {json}`` line with what it measured;
- a sender keeps its connection open after its last send until the runner
  closes its stdin (``wait_release``), so nothing is lost to an early close;
- ``time.perf_counter()`` is CLOCK_MONOTONIC, shared by all processes, so the
  runner combines a sender's start with a receiver's last receive;
- with ``BENCH_MALLOC=warm`` (the default) every process frees a 1 MiB block
  at start-up, raising glibc's mmap threshold once, as the anchors' helpers do
  (their pitfall 4): rows compare systems, not allocator states.
"""
from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

__all__ = ["BODY", "make_msg", "encode", "decode", "now", "ready", "emit", "wait_release",
           "latency_summary", "oneway_metrics", "timed_calls", "timed_calls_async",
           "send_stream", "MAX_MEASURE_S", "IDLE_TIMEOUT_S",
           "FIRST_MSG_TIMEOUT_S", "HARD_LIFETIME_S", "WARMUP"]

BODY = b"x" * 83
MAX_MEASURE_S = 10.0        # a measuring loop stops after this long, whatever its count
IDLE_TIMEOUT_S = 3.0        # a receiver gives up after this long without traffic
FIRST_MSG_TIMEOUT_S = 20.0  # ... or this long before the first message
HARD_LIFETIME_S = 60.0      # no helper process outlives this
WARMUP = 500                # request-reply calls made before timing, as the anchors do

if os.environ.get("BENCH_MALLOC", "warm") == "warm":
    _big = bytes(1 << 20)   # mmap'ed, then freed: glibc raises its thresholds
    del _big

encode_packb = msgpack.packb
decode = msgpack.unpackb


def make_msg(i: int) -> dict[str, Any]:
    return {"seq": i, "body": BODY}


def encode(i: int) -> bytes:
    return encode_packb({"seq": i, "body": BODY})  # type: ignore[no-any-return]


def now() -> float:
    return time.perf_counter()


def ready(extra: str = "") -> None:
    """Tell the runner this process can be talked to (``extra``: e.g. its address)."""
    sys.stdout.write(f"READY {extra}\n")
    sys.stdout.flush()


def emit(result: dict[str, Any]) -> None:
    """Hand the runner this process's result (one line of JSON)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def wait_release(timeout: float = HARD_LIFETIME_S) -> None:
    """Block until the runner closes our stdin (or sends a line), at most ``timeout`` s."""
    readable, _, _ = select.select([sys.stdin], [], [], timeout)
    if readable:
        sys.stdin.readline()


def latency_summary(samples_ns: list[int], total_s: float, n: int) -> dict[str, Any]:
    """p50/p99 in µs of per-call times in ns, and calls/s over ``total_s``."""
    s = sorted(samples_ns)
    if not s:
        return {"n": 0, "calls_per_s": 0.0}

    def pct(p: float) -> float:
        return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))] / 1000.0

    return {"n": n, "p50_us": pct(50), "p99_us": pct(99),
            "calls_per_s": n / total_s if total_s > 0 else 0.0}


def timed_calls(call: Callable[[int], Any], n: int, *, warmup: int = WARMUP,
                limit_s: float = MAX_MEASURE_S) -> dict[str, Any]:
    """``call(i)`` ``warmup`` times untimed, then up to ``n`` times timed (stopping
    after ``limit_s``): the ``latency_summary`` of the timed calls."""
    for i in range(warmup):
        call(i)
    samples: list[int] = []
    append = samples.append
    clock = time.perf_counter_ns
    t0 = now()
    done = 0
    for i in range(n):
        start = clock()
        call(i)
        append(clock() - start)
        done += 1
        if done & 255 == 0 and now() - t0 > limit_s:
            break
    return latency_summary(samples, now() - t0, done)


async def timed_calls_async(call: Callable[[int], Awaitable[Any]], n: int, *,
                            warmup: int = WARMUP) -> dict[str, Any]:
    """``timed_calls`` for a coroutine function."""
    for i in range(warmup):
        await call(i)
    samples: list[int] = []
    clock = time.perf_counter_ns
    t0 = now()
    done = 0
    for i in range(n):
        start = clock()
        await call(i)
        samples.append(clock() - start)
        done += 1
        if done & 255 == 0 and now() - t0 > MAX_MEASURE_S:
            break
    return latency_summary(samples, now() - t0, done)


def send_stream(send: Callable[[int], Any], n: int) -> dict[str, Any]:
    """``send(i)`` for i in 0..n-1 (stopping after ``MAX_MEASURE_S``). The clock
    starts before the first send, whose lookup and connect it includes, as the
    anchors' senders do; ``first_send_ms`` says what that first send took."""
    t_start = now()
    send(0)
    first_send = now() - t_start
    sent = 1
    for i in range(1, n):
        send(i)
        sent += 1
        if sent & 1023 == 0 and now() - t_start > MAX_MEASURE_S:
            break
    return {"sent": sent, "t_start": t_start, "t_end": now(), "first_send_ms": first_send * 1000}


def oneway_metrics(send: dict[str, Any], recv: dict[str, Any], n: int) -> dict[str, Any]:
    """The anchors' one-way metrics: end to end (sender's first send -> receiver's
    last receive) and receiver-side (first -> last receive)."""
    count = recv.get("count", 0)
    e2e = recv["t_last"] - send["t_start"] if count else 0.0
    rx = recv["t_last"] - recv["t_first"] if count > 1 else 0.0
    return {"msgs_per_s": count / e2e if e2e > 0 else 0.0,
            "rx_msgs_per_s": (count - 1) / rx if rx > 0 else 0.0,
            "delivered": count, "complete": count == n}
