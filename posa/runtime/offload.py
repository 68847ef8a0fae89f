"""Blocking calls for asyncio proxies: ``Offload``.

The asyncio faces of blocking objects (``posa.aio``'s Publisher, Subscriber,
Worker, Slave, Master) derive from it: each runs the calls that may block on
one worker thread of its own, in the caller's context (so a trace, or any
context variable, goes with the call), and never on the event loop. Closed in a
forked child, a proxy made by the parent runs the close on a worker thread of
the child's own, in the child's loop, and leaves the parent's worker be.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any

from posa.runtime.pools import Pool

__all__ = ["Offload"]


class Offload:
    """One worker thread for a proxy's blocking calls (create it in a running loop)."""

    def __init__(self, role: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = Pool(1, thread_name_prefix=f"posa-aio-{role}")

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the worker thread, in the caller's context."""
        return await self._loop.run_in_executor(
            self._worker, functools.partial(contextvars.copy_context().run, fn, *args,
                                            **kwargs))

    async def _shutdown(self, close: Callable[[], Any]) -> None:
        """Run ``close`` on the worker thread, then let the thread go. In a forked
        child the worker (its thread, its lock) and the loop are the parent's: the
        close runs on a worker of the child's own, in the running loop."""
        if self._worker.inherited:
            self._loop, self._worker = asyncio.get_running_loop(), self._worker.here()
        try:
            await self._run(close)
        finally:
            self._worker.shutdown(wait=False)
