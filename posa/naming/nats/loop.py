"""The NATS registries' way onto the process's one asyncio thread.

nats-py is asyncio; posa's callers are threads. The registries share the loop
the ``nats://`` transport runs its clients on (``posa.transport.nats.loop``: one
daemon thread, ``posa-nats``, per process, started again in a forked child):
every connection, watch and sweep of a ``NatsRegistry`` lives there.
``call(coro, timeout)`` runs a coroutine on it from any other thread and waits
for its result; from the loop thread itself it refuses (it would wait on itself).

What it costs: a round trip between threads, about 50-100 µs on a 2-core
machine, on top of the NATS round trip (docs/scale.md).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from posa.errors import PosaError, Timeout
from posa.transport.nats.loop import event_loop

__all__ = ["loop", "call", "in_loop"]

_T = TypeVar("_T")


def loop() -> asyncio.AbstractEventLoop:
    """The process's NATS loop, started on first use."""
    return event_loop()


def in_loop() -> bool:
    """True on the loop's own thread."""
    try:
        return asyncio.get_running_loop() is event_loop()
    except RuntimeError:
        return False


def call(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """Run ``coro`` on the loop; its result (or its exception, a ``TimeoutError``
    of its own included), or ``Timeout`` after ``timeout`` s."""
    if in_loop():
        coro.close()
        raise PosaError("a blocking NATS registry call was made on the posa-nats loop "
                        "thread; make it from another thread")
    future = asyncio.run_coroutine_threadsafe(coro, event_loop())
    done, _ = concurrent.futures.wait([future], timeout)
    if not done:
        future.cancel()
        raise Timeout(f"NATS did not answer within {timeout} s; is a server of the "
                      "cluster reachable?")
    return future.result()
