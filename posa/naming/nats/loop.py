"""One asyncio loop on a background thread, shared by every NATS client of a process.

nats-py is asyncio; posa's callers are threads. Rather than a loop per registry,
a process runs one daemon thread (``posa-nats``) whose loop carries every
connection, watch and timer of the NATS registries. ``call(coro, timeout)`` runs
a coroutine there from any other thread and waits for its result; from the loop
thread itself it refuses (it would wait on itself forever).

What it costs: a round trip between threads, about 50-100 µs on a 2-core
machine, on top of the NATS round trip (docs/scale.md has the measures).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from posa.errors import PosaError, Timeout

__all__ = ["loop", "call", "in_loop"]

_T = TypeVar("_T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's NATS loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            new = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()
            _thread = threading.Thread(target=run, name="posa-nats", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new
        return _loop


def in_loop() -> bool:
    """True on the loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def call(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """Run ``coro`` on the loop; its result, or ``Timeout`` after ``timeout`` s."""
    if in_loop():
        coro.close()
        raise PosaError("a blocking NATS registry call was made on the posa-nats loop "
                        "thread (from a watcher?); make it from another thread")
    future = asyncio.run_coroutine_threadsafe(coro, loop())
    done, _ = concurrent.futures.wait([future], timeout)
    if not done:    # (its own TimeoutError, nats-py's included, is raised as it is)
        future.cancel()
        raise Timeout(f"NATS did not answer within {timeout} s; is a server of the "
                      "cluster reachable?")
    return future.result()
