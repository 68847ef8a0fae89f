"""The event loop's driver of protocol steps: many tasks, one forwarder, one reader
per descriptor.

A forwarder's protocol is written once, as steps (``Forwarder.request_steps``,
``flush_steps``, ``posa.delivery.flow.send_steps``): a step yields
``(connection, seconds)`` when it must wait for input and is sent whether the
connection became readable.  ``drive`` runs such steps on the event loop,
holding the forwarder's lock while a step runs and not while it waits.

Any number of tasks may drive steps of one forwarder at once, and they share
its connections.  asyncio keeps one reader per descriptor, so the ``Hub`` of a
loop is that reader: it maps a descriptor to the tasks waiting on it, and when
it fires wakes every one of them.  The first to run reads what came (replies
and acknowledgements land in the forwarder's tables), the others find theirs
there: a step checks its reply before it waits.  A step may also read what
another task waits for without its descriptor firing (a request that finds
frames queued after sending); the driver sees it by the forwarder's progress
mark (``posa.delivery.flow.mark``) and wakes the other tasks of that forwarder
to look again.  A wake that finds nothing new costs one step and changes
nothing, so wake-ups cannot chase each other.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

from posa.delivery.waiting import Steps
from posa.errors import PosaError
from posa.transport.base import Connection

__all__ = ["Hub", "drive"]

_T = TypeVar("_T")
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


class Hub:
    """The one reader of each descriptor a loop's tasks wait on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # descriptor -> its waiting tasks' futures, each with the group (forwarder)
        # whose state it waits for
        self._waiting: dict[int, dict[asyncio.Future[bool], Hashable]] = {}
        self.stats = {"waits": 0, "fired": 0, "woken": 0, "expired": 0}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Hub:
        """The hub of ``loop`` (made on first use)."""
        hub = _hubs.get(loop)
        if hub is None:
            hub = _hubs[loop] = cls(loop)
        return hub

    async def readable(self, conn: Connection | None, timeout: float,
                       group: Hashable) -> bool:
        """Wait up to ``timeout`` s for ``conn``'s descriptor, or for a ``wake`` of
        ``group``; True unless the time ran out. No ``conn``: a pause of ``timeout`` s."""
        loop = self._loop
        if conn is None:
            await asyncio.sleep(max(0.0, timeout))
            return False
        try:
            fd = conn.fileno()
        except (OSError, ValueError, PosaError):
            return True         # closed under us: the next receive says how
        waiters = self._waiting.get(fd)
        if waiters is None:
            try:
                loop.add_reader(fd, self._fire, fd)
            except (OSError, ValueError):
                return True
            waiters = self._waiting[fd] = {}
        ready: asyncio.Future[bool] = loop.create_future()
        waiters[ready] = group
        self.stats["waits"] += 1
        expiry = loop.call_later(max(0.0, timeout), self._expire, fd, ready)
        try:
            return await ready
        finally:
            expiry.cancel()
            self._forget(fd, ready)

    def wake(self, group: Hashable) -> None:
        """Wake every task of ``group`` that waits (its steps look again)."""
        for fd, waiters in list(self._waiting.items()):
            for ready, of in list(waiters.items()):
                if of is group:
                    del waiters[ready]
                    if not ready.done():
                        ready.set_result(True)
                        self.stats["woken"] += 1
            if not waiters:
                self._drop(fd)

    def _fire(self, fd: int) -> None:
        self.stats["fired"] += 1
        waiters = self._drop(fd)
        for ready in waiters:
            if not ready.done():
                ready.set_result(True)

    def _expire(self, fd: int, ready: asyncio.Future[bool]) -> None:
        self._forget(fd, ready)
        if not ready.done():
            self.stats["expired"] += 1
            ready.set_result(False)

    def _forget(self, fd: int, ready: asyncio.Future[bool]) -> None:
        waiters = self._waiting.get(fd)
        if waiters is not None and waiters.pop(ready, None) is not None and not waiters:
            self._drop(fd)

    def _drop(self, fd: int) -> dict[asyncio.Future[bool], Hashable]:
        waiters = self._waiting.pop(fd, {})
        try:
            self._loop.remove_reader(fd)
        except (OSError, ValueError):
            pass    # the descriptor was closed (a connection replaced): nothing to remove
        return waiters


async def drive(steps: Steps[_T], lock: threading.Lock, group: Hashable,
                mark: Callable[[], object]) -> _T:
    """Run ``steps`` on the running loop, holding ``lock`` while a step runs.

    ``group`` is what the steps share with other tasks' (their forwarder) and
    ``mark()`` its progress mark: when a step changes it, the other waiting
    tasks of ``group`` are woken. Cancelling the task closes the steps."""
    hub = Hub.of(asyncio.get_running_loop())
    ready: bool | None = None
    try:
        while True:
            with lock:
                before = mark()
                try:
                    conn, wait = next(steps) if ready is None else steps.send(ready)
                finally:
                    if mark() != before:
                        hub.wake(group)
            ready = await hub.readable(conn, wait, group)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        with lock:
            steps.close()
        raise
