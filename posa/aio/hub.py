"""The event loop's driver of protocol steps: many tasks, one forwarder, one reader
per descriptor.

A forwarder's protocol is written once, as steps (``Forwarder.request_steps``,
``flush_steps``, ``Forwarder.send_steps``): a step yields
``(connection, seconds)`` when it must wait for input and is sent whether the
connection became readable.  ``drive`` runs such steps on the event loop,
holding the forwarder's lock while a step runs and not while it waits.

Any number of tasks may drive steps of one forwarder at once, and they share
its connections.  asyncio keeps one reader per descriptor, so the ``Hub`` of a
loop is that reader: it maps a descriptor to the tasks waiting on it.  When it
fires, one of them (the oldest) is woken to read; what it reads lands in the
forwarder's tables (replies, acknowledgements).  After every step the driver
asks the hub to wake the waiting tasks of that forwarder the step may concern
(``stepped``): a task whose ``wanted`` holds (a request: its reply is in the
table; by default: the forwarder's progress mark, ``Forwarder.progress_mark``,
moved), and one task to read a connection that still holds frames read from
the socket (its descriptor will not fire for them).  A task woken for nothing
runs one step that changes nothing, so wake-ups cannot chase each other; a
task that is not woken waits out its step's own timeout, which every step
bounds (``ack_timeout``).  A task alone on its forwarder pays for none of
this (no mark, no wake-ups to look for), and a descriptor nobody waits on any
more keeps its reader until the end of the turn of the loop, so that a task's
next request on the same connection does not remove and add it again.

The hub keeps counts (``stats``: waits, fired, woken, expired) for tests and
diagnosis: an ``expired`` wait is a task that was not woken by its input.
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

__all__ = ["Hub", "drive", "Wanted", "changed"]

_T = TypeVar("_T")
Wanted = Callable[[bool], bool]
"""What a waiting task waits for: called after another task's step of its
group with whether the group's progress mark moved; True wakes the task."""


def changed(moved: bool) -> bool:
    """The default ``Wanted``: any progress of the group."""
    return moved

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


class _Fd:
    """The tasks waiting on one descriptor: each future with its group (whose
    steps it runs) and what it waits for (``wanted``)."""

    __slots__ = ("conn", "waiters", "sweeping")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.waiters: dict[asyncio.Future[bool], tuple[Hashable, Wanted]] = {}
        self.sweeping = False


class Hub:
    """The one reader of each descriptor a loop's tasks wait on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the hubs are kept by loop in a WeakKeyDictionary, which a strong
        # reference back would keep from ever letting a closed loop go
        self._loop: asyncio.AbstractEventLoop = weakref.proxy(loop)
        self._fds: dict[int, _Fd] = {}
        self.waiting: dict[Hashable, int] = {}     # group -> its tasks waiting now
        self.stats = {"waits": 0, "fired": 0, "woken": 0, "expired": 0}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Hub:
        """The hub of ``loop`` (made on first use)."""
        hub = _hubs.get(loop)
        if hub is None:
            hub = _hubs[loop] = cls(loop)
        return hub

    async def readable(self, conn: Connection | None, timeout: float, group: Hashable,
                       wanted: Wanted = changed) -> bool:
        """Wait up to ``timeout`` s for ``conn``'s descriptor, or until a step of
        ``group`` makes ``wanted(changed)`` true; True unless the time ran out.
        No ``conn``: a pause of ``timeout`` s."""
        loop = self._loop
        if conn is None:
            await asyncio.sleep(max(0.0, timeout))
            return False
        try:
            fd = conn.fileno()
        except (OSError, ValueError, PosaError):
            return True         # closed under us: the next receive says how
        entry = self._fds.get(fd)
        if entry is None or entry.conn is not conn:
            if entry is not None:       # a descriptor number used again
                self._wake_all(fd)
            try:
                loop.add_reader(fd, self._fire, fd)
            except (OSError, ValueError):
                return True
            entry = self._fds[fd] = _Fd(conn)
        ready: asyncio.Future[bool] = loop.create_future()
        entry.waiters[ready] = (group, wanted)
        self.stats["waits"] += 1
        waiting = self.waiting
        waiting[group] = waiting.get(group, 0) + 1
        expiry = loop.call_later(max(0.0, timeout), self._expire, fd, ready)
        try:
            return await ready
        finally:
            expiry.cancel()
            self._forget(fd, ready)
            if waiting[group] == 1:
                del waiting[group]
            else:
                waiting[group] -= 1

    def stepped(self, group: Hashable, changed: bool) -> None:
        """After a step of ``group`` (``changed``: its progress mark moved): wake
        the tasks of ``group`` it may concern, and one task to read a connection
        that still holds frames (its descriptor will not fire for them)."""
        for fd, entry in list(self._fds.items()):
            reader: asyncio.Future[bool] | None = None
            mine = False
            for ready, (of, wanted) in list(entry.waiters.items()):
                if of is not group:
                    continue
                mine = True
                if wanted(changed):
                    self._wake(entry, ready)
                elif reader is None:
                    reader = ready
            if reader is not None and _pending(entry.conn):
                self._wake(entry, reader)
            if mine and not entry.waiters:
                self._idle(fd, entry)

    def _wake(self, entry: _Fd, ready: asyncio.Future[bool]) -> None:
        del entry.waiters[ready]
        if not ready.done():
            ready.set_result(True)
            self.stats["woken"] += 1

    def _fire(self, fd: int) -> None:
        """The descriptor is readable: wake one task to read it (the oldest); what
        its step reads wakes the others it concerns (``stepped``)."""
        self.stats["fired"] += 1
        entry = self._fds.get(fd)
        if entry is None or not entry.waiters:
            self._drop(fd)      # input for nobody: stop watching until someone waits
            return
        for ready in list(entry.waiters):
            del entry.waiters[ready]
            if not ready.done():
                ready.set_result(True)
                break
        if not entry.waiters:
            self._idle(fd, entry)

    def _wake_all(self, fd: int) -> None:
        entry = self._drop(fd)
        if entry is not None:
            for ready in entry.waiters:
                if not ready.done():
                    ready.set_result(True)

    def _expire(self, fd: int, ready: asyncio.Future[bool]) -> None:
        self._forget(fd, ready)
        if not ready.done():
            self.stats["expired"] += 1
            ready.set_result(False)

    def _forget(self, fd: int, ready: asyncio.Future[bool]) -> None:
        entry = self._fds.get(fd)
        if entry is not None and entry.waiters.pop(ready, None) is not None \
                and not entry.waiters:
            self._idle(fd, entry)

    def _idle(self, fd: int, entry: _Fd) -> None:
        """Nobody waits on ``fd`` now: stop watching it after this turn of the loop
        unless a task waits on it again by then (the next request of a task that
        just got its reply: no reader to remove and add again)."""
        if not entry.sweeping:
            entry.sweeping = True
            self._loop.call_soon(self._sweep, fd, entry)

    def _sweep(self, fd: int, entry: _Fd) -> None:
        entry.sweeping = False
        if self._fds.get(fd) is entry and not entry.waiters:
            self._drop(fd)

    def _drop(self, fd: int) -> _Fd | None:
        entry = self._fds.pop(fd, None)
        try:
            self._loop.remove_reader(fd)
        except (OSError, ValueError):
            pass    # the descriptor was closed (a connection replaced): nothing to remove
        return entry


def _pending(conn: Connection) -> bool:
    try:
        return conn.pending()
    except (OSError, ValueError, PosaError):
        return True     # closed: a step finds out how


async def drive(steps: Steps[_T], lock: threading.Lock, group: Hashable,
                mark: Callable[[], object], wanted: Wanted = changed,
                hub: Hub | None = None) -> _T:
    """Run ``steps`` on the running loop (whose hub is ``hub``), holding ``lock``
    while a step runs.

    ``group`` is what the steps share with other tasks' (their forwarder) and
    ``mark()`` its progress mark; while other tasks of ``group`` wait, the hub
    is told after each step whether it moved the mark (``Hub.stepped``), and
    wakes those it concerns. ``wanted`` says what these steps wait for
    (default: any progress). Cancelling the task closes the steps."""
    if hub is None:
        hub = Hub.of(asyncio.get_running_loop())
    waiting = hub.waiting
    ready: bool | None = None
    try:
        while True:
            with lock:
                if group not in waiting:    # alone: nobody to tell
                    conn, wait = next(steps) if ready is None else steps.send(ready)
                else:
                    before = mark()
                    try:
                        conn, wait = next(steps) if ready is None else steps.send(ready)
                    finally:
                        hub.stepped(group, mark() != before)
            ready = await hub.readable(conn, wait, group, wanted)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        with lock:
            steps.close()
        raise
