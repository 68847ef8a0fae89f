"""The one asyncio thread of a process that runs every nats-py client.

nats-py is asyncio; posa's reactor polls descriptors. The two meet here: a daemon
thread runs an event loop (started on first use, and again in a forked child,
which inherits no threads), the clients live on it, and the transport's
endpoints hand work to it with ``call_soon_threadsafe`` (batched: one wake-up per
burst, see ``posa.transport.nats.link``) and hand frames back through the
wake-up descriptors of ``posa.transport.inproc.receiver``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from posa.errors import Timeout

__all__ = ["event_loop", "call"]

_T = TypeVar("_T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = -1


def event_loop() -> asyncio.AbstractEventLoop:
    """This process's nats loop, running in its own daemon thread."""
    global _loop, _pid
    loop = _loop
    if loop is not None and _pid == os.getpid():
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="posa-nats",
                                      daemon=True)
            thread.start()
            _loop, _pid = loop, os.getpid()
        return _loop


def call(coro: Coroutine[Any, Any, _T], timeout: float, what: str) -> _T:
    """Run ``coro`` on the loop and wait for its result; ``Timeout`` after
    ``timeout`` seconds (the coroutine is cancelled)."""
    future = asyncio.run_coroutine_threadsafe(coro, event_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise Timeout(f"{what} took longer than {timeout} s") from None
