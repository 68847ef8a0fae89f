"""A live feed to browsers: a snapshot first, then every update, as Server-Sent Events.

``Feed`` joins any number of producer threads (a registry's watch callback, a
sampler, an application's own thread) to the browsers connected to it. A
producer changes its state and publishes the updates that change produced
under ``feed.lock`` (``feed.apply(fn)`` does both), and a browser that
connects gets the snapshot taken under the same lock, so it misses no update
and sees none twice.

On the wire (``text/event-stream``): one ``data:`` line of JSON per update,
the snapshot first (``{"type": "snapshot", ...}``), a comment every
``keepalive`` seconds. A browser that falls ``backlog`` updates behind is sent
``{"type": "reset"}`` and its stream ends: ``EventSource`` reconnects by itself
and starts again from a fresh snapshot, so a slow viewer costs bounded memory
and never slows a producer.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

__all__ = ["Feed"]

Update = dict[str, Any]


class _Viewer:
    """One connected browser: its pending updates and how to wake its handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop, backlog: int) -> None:
        self.loop = loop
        self.pending: deque[Update] = deque()
        self.backlog = backlog
        self.overflow = False
        self.wake = asyncio.Event()

    def push(self, updates: list[Update]) -> None:
        if len(self.pending) + len(updates) > self.backlog:
            self.overflow = True
            self.pending.clear()
        else:
            self.pending.extend(updates)
        with contextlib.suppress(RuntimeError):      # its loop has closed
            self.loop.call_soon_threadsafe(self.wake.set)


class Feed:
    """Snapshot-then-updates to every connected browser. Thread-safe."""

    def __init__(self, snapshot: Callable[[], Update], *, backlog: int = 5000,
                 max_viewers: int = 64, keepalive: float = 15.0) -> None:
        self.lock = threading.RLock()
        self._snapshot = snapshot
        self._viewers: set[_Viewer] = set()
        self.backlog = backlog
        self.max_viewers = max_viewers
        self.keepalive = keepalive
        self.published = 0

    @property
    def viewers(self) -> int:
        """Browsers connected now."""
        with self.lock:
            return len(self._viewers)

    def publish(self, updates: Iterable[Update]) -> None:
        """Send ``updates`` to every browser (call it under ``lock`` with the
        change that produced them)."""
        batch = list(updates)
        if not batch:
            return
        with self.lock:
            self.published += len(batch)
            for viewer in self._viewers:
                viewer.push(batch)

    def apply(self, change: Callable[[], Iterable[Update]]) -> None:
        """Run ``change()`` under the lock and publish the updates it returns."""
        with self.lock:
            self.publish(change())

    def snapshot(self) -> Update:
        """The producer's snapshot, taken under the lock."""
        with self.lock:
            return self._snapshot()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET`` handler: the event stream (503 when ``max_viewers`` are connected)."""
        viewer = _Viewer(asyncio.get_running_loop(), self.backlog)
        with self.lock:
            if len(self._viewers) >= self.max_viewers:
                raise web.HTTPServiceUnavailable(
                    text=f"{self.max_viewers} viewers are connected already; close one")
            first = self._snapshot()
            self._viewers.add(viewer)
        try:
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-store",
                "X-Accel-Buffering": "no"})
            await response.prepare(request)
            await response.write(_message(first))
            await self._stream(viewer, response)
            return response
        except ConnectionResetError:       # the browser went away: nothing to answer
            return response
        finally:
            with self.lock:
                self._viewers.discard(viewer)

    async def _stream(self, viewer: _Viewer, response: web.StreamResponse) -> None:
        while True:
            try:
                await asyncio.wait_for(viewer.wake.wait(), self.keepalive)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            with self.lock:
                viewer.wake.clear()
                batch, overflow = list(viewer.pending), viewer.overflow
                viewer.pending.clear()
            if overflow:
                await response.write(_message({"type": "reset"}))
                return
            await response.write(b"".join(_message(u) for u in batch))


def _message(update: Update) -> bytes:
    return b"data: " + json.dumps(update, separators=(",", ":"),
                                  default=str).encode() + b"\n\n"
