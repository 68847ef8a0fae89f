"""The event loop's driver of protocol steps: many tasks, one forwarder, one reader
per descriptor.

A forwarder's protocol is written once, as steps (``Forwarder.request_steps``,
``flush_steps``, ``Forwarder.send_steps``): a step yields
``(connection, seconds)`` when it must wait for input and is sent whether the
connection became readable.  ``drive`` runs such steps on the event loop,
holding the forwarder's lock while a step runs and not while it waits.

Any number of tasks may drive steps of one forwarder at once, and they share
its connections.  asyncio keeps one reader per descriptor, so the ``Hub`` of a
loop is that reader, and it reads for the tasks: when a descriptor fires, the
hub takes in what its connection holds (``Forwarder.absorb_from``, under the
forwarder's lock) and wakes the tasks it concerns, no other.  A task waits for
one of two things (``Awaited.key``):

- an answer, by its key (a request's ``(name, seq)``): the forwarder tells the
  hub the key of every answer it reads (``Forwarder.on_answer``), and the hub
  wakes the one task waiting for it, wherever it was read (by the hub, or by
  another task's step); one wake-up per answer, whatever the number of tasks;
- any progress (no key: room in the window, a flush): woken when a read or a
  step moves the forwarder's progress mark (``Forwarder.progress_mark``).

A step that replaces a connection (a recovery) changes the mark's connections,
and every task of that forwarder is woken to wait on the new one.  After a
step, a connection of the forwarder that still holds frames read from the
socket (its descriptor will not fire for them) is read at once.  A read that
finds the connection broken wakes one task, whose step recovers it (as it
would have found out by itself).  A task that is not woken waits out its step's
own timeout, which every step bounds (``ack_timeout``).  A task alone on its
forwarder pays for no mark; a descriptor nobody waits on any more keeps its
reader until the end of the turn of the loop, so that a task's next request on
the same connection does not remove and add it again.

The hub keeps counts (``stats``: waits, fired, woken, expired) for tests and
diagnosis: an ``expired`` wait is a task that was not woken by its input.
"""
from __future__ import annotations

import asyncio
import weakref
from typing import TypeVar

from posa.delivery.forwarder import Forwarder
from posa.delivery.waiting import Steps
from posa.errors import PosaError
from posa.transport.base import Connection

__all__ = ["Hub", "Awaited", "drive"]

_T = TypeVar("_T")
Key = tuple[str, int]       # an answer's: (the name that answers, the request's seq)
_EARLY = 0.0005             # a queued wait this close to its expiry expires with the others
Mark = tuple[int, int, int]  # ``Forwarder.progress_mark``: (acked, answers, connections)
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


class Awaited:
    """What a task's steps wait for: ``key`` None, any progress of its forwarder;
    else the answer with that key (a request sets it once sent)."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: Key | None = None


Held = tuple["asyncio.Future[bool]", int, "_Fd", "Key | None", "asyncio.TimerHandle | None"]
"""A wait begun (``Hub.hold``): its future, descriptor, entry, key and timer."""


class _Fd:
    """One descriptor the hub reads: its connection, the forwarder it belongs to
    (``group``) and the tasks waiting on it (each future with its key)."""

    __slots__ = ("conn", "group", "waiters", "sweeping")

    def __init__(self, conn: Connection, group: _Group) -> None:
        self.conn = conn
        self.group = group
        self.waiters: dict[asyncio.Future[bool], Key | None] = {}
        self.sweeping = False


class _Group:
    """The tasks of one forwarder waiting now: by the key of the answer each
    waits for, those waiting for any progress, and the descriptors they wait on."""

    __slots__ = ("fwd", "keyed", "loose", "entries", "count", "stats")

    def __init__(self, fwd: Forwarder, stats: dict[str, int]) -> None:
        self.fwd = fwd
        self.keyed: dict[Key, asyncio.Future[bool]] = {}
        self.loose: dict[asyncio.Future[bool], None] = {}
        self.entries: dict[int, _Fd] = {}
        self.count = 0
        self.stats = stats

    def answered(self, key: Key) -> None:
        """The forwarder read the answer ``key``: wake the task waiting for it."""
        ready = self.keyed.pop(key, None)
        if ready is not None and not ready.done():
            ready.set_result(True)
            self.stats["woken"] += 1

    def wake(self, waiters: list[asyncio.Future[bool]]) -> None:
        """Wake every task of ``waiters``."""
        for ready in waiters:
            if not ready.done():
                ready.set_result(True)
                self.stats["woken"] += 1


class Hub:
    """The one reader of each descriptor a loop's tasks wait on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the hubs are kept by loop in a WeakKeyDictionary, which a strong
        # reference back would keep from ever letting a closed loop go
        self._loop: asyncio.AbstractEventLoop = weakref.proxy(loop)
        self._fds: dict[int, _Fd] = {}
        self.waiting: dict[Forwarder, _Group] = {}   # forwarders whose tasks wait now
        # waits by expiry, the order they began in (``_expiry``): no timer each
        self._due: dict[asyncio.Future[bool], float] = {}
        self._last = 0.0            # the last expiry queued
        self._timer: asyncio.TimerHandle | None = None     # for the first of them
        self.stats = {"waits": 0, "fired": 0, "woken": 0, "expired": 0}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Hub:
        """The hub of ``loop`` (made on first use)."""
        hub = _hubs.get(loop)
        if hub is None:
            hub = _hubs[loop] = cls(loop)
        return hub

    def hold(self, conn: Connection, timeout: float, fwd: Forwarder,
             key: Key | None = None) -> Held | None:
        """Begin a wait of up to ``timeout`` s for input on ``conn``: with a
        ``key``, until the answer with that key is read; without, until ``fwd``
        makes progress. The caller awaits its future (True unless the time ran
        out), then passes it to ``release``. None: nothing to wait for (the
        answer is in, or the connection closed: the next step finds out)."""
        if key is not None and fwd.peek_reply(*key) is not None:
            return None         # read while its step ended
        try:
            fd = conn.fileno()
        except (OSError, ValueError, PosaError):
            return None         # closed under us: the next receive says how
        group = self.waiting.get(fwd)
        if group is None:
            group = self.waiting[fwd] = _Group(fwd, self.stats)
            fwd.on_answer = group.answered
        group.count += 1
        entry = self._fds.get(fd)
        if entry is None or entry.conn is not conn or entry.group is not group:
            entry = self._watch(fd, conn, group)
            if entry is None:
                self._release(group)
                return None
        ready: asyncio.Future[bool] = self._loop.create_future()
        if key is None:
            group.loose[ready] = None
        else:
            group.keyed[key] = ready
        entry.waiters[ready] = key
        self.stats["waits"] += 1
        return ready, fd, entry, key, self._expiry(ready, timeout)

    def release(self, held: Held) -> None:
        """A wait ``hold`` began ended (woken, expired or cancelled)."""
        ready, fd, entry, key, expiry = held
        if expiry is None:
            due = self._due
            if due.pop(ready, None) is not None and not due:
                self._no_due()
        else:
            expiry.cancel()
        self._forget(fd, entry, ready, key)

    def _expiry(self, ready: asyncio.Future[bool], timeout: float
                ) -> asyncio.TimerHandle | None:
        """Make ``ready`` expire (False) in ``timeout`` s: in the queue of waits
        expiring in the order they began (None) if it expires no sooner than the
        last of them, as nearly every wait does (they all wait ``ack_timeout``);
        else by a timer of its own (returned)."""
        loop = self._loop
        when = loop.time() + timeout
        if when < self._last:
            return loop.call_at(when, self._expire, ready)
        self._last = when
        self._due[ready] = when
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire_due)
        return None

    def _expire_due(self) -> None:
        """The queue's first wait may be due: expire those that are, and wait for
        the next."""
        self._timer = None
        due = self._due
        now = self._loop.time() + _EARLY
        while due:
            ready = next(iter(due))
            when = due[ready]
            if when > now:
                self._timer = self._loop.call_at(when, self._expire_due)
                return
            del due[ready]
            self._expire(ready)
        self._last = 0.0

    def _no_due(self) -> None:
        """The queue of expiries is empty: no timer for it, and any wait may
        begin it again."""
        self._last = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self, fd: int, conn: Connection, group: _Group) -> _Fd | None:
        """The entry of ``fd`` (``conn``'s), read for ``group``; None if the loop
        cannot watch it."""
        entry = self._fds.get(fd)
        if entry is None or entry.conn is not conn:
            if entry is not None:       # a descriptor number used again
                self._wake_all(fd)
            try:
                self._loop.add_reader(fd, self._fire, fd)
            except (OSError, ValueError):
                return None
            entry = self._fds[fd] = _Fd(conn, group)
        elif entry.group is not group:  # the forwarder's tasks waited before
            entry.group = group
        group.entries[fd] = entry
        return entry

    def _forget(self, fd: int, entry: _Fd, ready: asyncio.Future[bool],
                key: Key | None) -> None:
        """A wait ended (woken, expired or cancelled): drop what held it."""
        group = entry.group
        entry.waiters.pop(ready, None)
        if not entry.waiters and self._fds.get(fd) is entry:
            self._idle(fd, entry)
        if key is None:
            group.loose.pop(ready, None)
        elif group.keyed.get(key) is ready:
            del group.keyed[key]
        self._release(group)

    def _release(self, group: _Group) -> None:
        """One task of ``group`` waits no more."""
        group.count -= 1
        if group.count <= 0 and self.waiting.get(group.fwd) is group:
            del self.waiting[group.fwd]
            group.fwd.on_answer = None

    def stepped(self, group: _Group, generation: int, before: Mark | None) -> None:
        """After a step of ``group``'s forwarder while others of its tasks wait:
        read the connections that still hold frames; wake the tasks waiting for
        progress if the mark (``before``, if they wait) moved, and every task if
        a recovery ran (the forwarder's ``generation``: a connection may have
        been replaced)."""
        for entry in group.entries.values():    # (a read changes none of them)
            if entry.waiters and _pending(entry.conn):
                self._absorb(entry)
        if before is not None and group.loose:
            self._progressed(group, before)
        if group.fwd.generation != generation:
            group.wake(list(group.keyed.values()))

    @staticmethod
    def _progressed(group: _Group, before: Mark) -> None:
        if group.fwd.progress_mark() != before:
            group.wake(list(group.loose))

    def _fire(self, fd: int) -> None:
        """The descriptor is readable: take in what it holds, which wakes the tasks
        it answers (and those waiting for progress, if it made some)."""
        self.stats["fired"] += 1
        entry = self._fds.get(fd)
        if entry is None or not entry.waiters:
            self._drop(fd)      # input for nobody: stop watching until someone waits
            return
        group = entry.group
        fwd = group.fwd
        with fwd.lock:
            before = fwd.progress_mark() if group.loose else None
            if self._absorb(entry) and before is not None:
                self._progressed(group, before)

    def _absorb(self, entry: _Fd) -> bool:
        """Read ``entry``'s connection into its forwarder (whose lock the caller
        holds); a broken one wakes one waiting task to recover it (False)."""
        try:
            entry.group.fwd.absorb_from(entry.conn)
            return True
        except (OSError, ValueError, PosaError):
            for ready in entry.waiters:
                if not ready.done():
                    ready.set_result(True)
                    self.stats["woken"] += 1
                    break
            return False

    def _wake_all(self, fd: int) -> None:
        entry = self._drop(fd)
        if entry is not None:
            for ready in entry.waiters:
                if not ready.done():
                    ready.set_result(True)

    def _expire(self, ready: asyncio.Future[bool]) -> None:
        if not ready.done():
            self.stats["expired"] += 1
            ready.set_result(False)

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
        if entry is not None and entry.group.entries.get(fd) is entry:
            del entry.group.entries[fd]
        try:
            self._loop.remove_reader(fd)
        except (OSError, ValueError):
            pass    # the descriptor was closed (a connection replaced): nothing to remove
        return entry


def _pending(conn: Connection) -> bool:
    try:
        return conn.pending()
    except (OSError, ValueError, PosaError):
        return True     # closed: a read finds out how


async def drive(steps: Steps[_T], fwd: Forwarder, awaited: Awaited | None = None,
                hub: Hub | None = None) -> _T:
    """Run ``steps`` of ``fwd`` on the running loop (whose hub is ``hub``),
    holding the forwarder's lock while a step runs.

    While other tasks of ``fwd`` wait, the hub is told after each step what it
    did (``Hub.stepped``), and wakes those it concerns. ``awaited`` says what
    the steps wait for (default: any progress). Cancelling the task closes the
    steps."""
    if hub is None:
        hub = Hub.of(asyncio.get_running_loop())
    waiting = hub.waiting
    lock = fwd.lock
    ready: bool | None = None
    try:
        while True:
            with lock:
                group = waiting.get(fwd)
                if group is None:           # alone: nobody to tell
                    conn, wait = next(steps) if ready is None else steps.send(ready)
                else:
                    generation = fwd.generation
                    before = fwd.progress_mark() if group.loose else None
                    try:
                        conn, wait = next(steps) if ready is None else steps.send(ready)
                    finally:
                        hub.stepped(group, generation, before)
            if conn is None:        # a pause (a back-off)
                await asyncio.sleep(wait if wait > 0.0 else 0.0)
                ready = False
                continue
            held = hub.hold(conn, wait, fwd, None if awaited is None else awaited.key)
            if held is None:
                ready = True
                continue
            try:
                ready = await held[0]
            finally:
                hub.release(held)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except BaseException:
        with lock:
            steps.close()
        raise
