"""The NATS registries' way onto the process's one asyncio thread.

nats-py is asyncio; posa's callers are threads. The registries run nats-py on
one asyncio loop per process (a daemon thread, ``posa-nats-registry``, started
on first use and again in a forked child, which inherits no threads): every
connection, watch and sweep of a ``NatsRegistry`` lives there. (The ``nats://``
transport has a client of its own and no asyncio: ``posa.transport.nats.loop``.)
``call(coro, timeout)`` runs a coroutine on it from any other thread and waits
for its result; from the loop thread itself it refuses (it would wait on itself).

What it costs: a round trip between threads, about 50-100 µs on a 2-core
machine, on top of the NATS round trip (docs/scale.md).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from posa.errors import PosaError, Timeout

__all__ = ["loop", "call", "in_loop", "event_loop"]

_T = TypeVar("_T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = -1


def event_loop() -> asyncio.AbstractEventLoop:
    """This process's registry loop, running in its own daemon thread."""
    global _loop, _pid
    running = _loop
    if running is not None and _pid == os.getpid():
        return running
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="posa-nats-registry",
                                      daemon=True)
            thread.start()
            _pid = os.getpid()
        return _loop


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
