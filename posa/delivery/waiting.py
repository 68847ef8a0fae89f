"""Blocking waits for protocol steps written once (``Forwarder.request_steps``,
``flush_steps``): a step yields ``(connection, seconds)`` when it must wait for
input and is sent whether the connection became readable (the connection's own
``wait_readable`` where it has one: ``posa.transport.base.waiter``).  A step with
nothing to wait for yields ``(None, seconds)``.  ``drive`` runs the
steps in the calling thread with ``poll`` (``select`` where there is no poll:
``select.select`` refuses descriptors from 1024 up, which a process holding
many sockets reaches); ``posa.aio`` drives the same steps with the event
loop.  The lock a step runs under is released while it waits.

``drive_reads`` is ``drive`` for the one thread that waits on a forwarder's
connections (``Forwarder.request``, ``posa.Client.call``): a wait on a
connection whose reads can wait themselves (``block_reads``: plain tcp on
Linux) is that read, one system call where a poll and a read took two, and
the frame it brings is taken in (``absorb``, under the lock) before the steps
go on, so they find the answer without reading again. A read returns at the
latest when the wait ends, or within ``_CLOSE_SEEN`` s of a ``close`` from
another thread (``posa.transport.tcp.connection``). Any other wait is
``drive``'s.

The wait on a descriptor is ``posa.transport.base.wait_fd``: one ``poll`` call
with this thread's poll object for that descriptor number, none made and
registered per request (0.8 us less per wait here), in slices for a wait of
weeks.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from posa.errors import PosaError
from posa.transport.base import Connection, Wait, default_wait_readable, wait_fd, waiter

__all__ = ["drive", "drive_reads", "run_held", "readable", "Steps"]

_T = TypeVar("_T")
Steps = Generator[tuple[Connection | None, float], bool, _T]


def drive(lock: threading.Lock, steps: Steps[_T]) -> _T:
    """Run protocol steps holding ``lock``, waiting for each connection with
    ``select`` without it."""
    try:
        with lock:
            conn, wait = next(steps)
        while True:
            ready = readable(conn, wait)
            with lock:
                conn, wait = steps.send(ready)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def drive_reads(lock: threading.Lock, steps: Steps[_T],
                absorb: Callable[[bytes], None]) -> _T:
    """``drive``, where a wait on a connection that can block its reads is a read
    that waits, whose frame ``absorb`` takes in (holding ``lock``) before the
    steps are told the connection was readable. Only for steps whose every
    frame goes to ``absorb`` (a forwarder's), in the one thread reading them."""
    try:
        with lock:
            conn, wait = next(steps)
        while True:
            blocks = _blocks.get(conn.__class__, _UNKNOWN)
            if blocks is _UNKNOWN:
                blocks = _blocks[conn.__class__] = getattr(
                    conn.__class__, "block_reads", None)
            try:
                if blocks is None or not blocks(conn):
                    blocks = None
            except (OSError, ValueError, PosaError):
                blocks = None       # closed under us: the steps' receive says how
            if blocks is None:
                ready = readable(conn, wait)
                with lock:
                    conn, wait = steps.send(ready)
                continue
            end = _monotonic() + wait
            try:
                got: bytes | bool | None = conn.recv_within(  # type: ignore[union-attr]
                    wait if wait > 0.0 else 1e-6)
            except (OSError, ValueError, PosaError):
                got = True          # closed, broken: the steps' receive says how
            if got is None:         # nothing, or a part of a frame: read on until ``end``
                got = _read_until(conn, end)
            with lock:
                if got is True or got is False:
                    conn, wait = steps.send(got)
                else:
                    absorb(got)
                    conn, wait = steps.send(True)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _read_until(conn: Any, end: float) -> bytes | bool:
    """A frame read by ``end`` (``monotonic``); False if none came in time; True if
    the read failed (closed, broken: the steps' receive says how)."""
    while True:
        wait = end - _monotonic()
        if wait <= 0.0:
            return False
        try:
            frame: bytes | None = conn.recv_within(wait)
        except (OSError, ValueError, PosaError):
            return True
        if frame is not None:
            return frame


def run_held(steps: Steps[_T]) -> _T:
    """Run protocol steps in a thread that already holds their lock (it is kept
    while waiting: nothing else may use the forwarder meanwhile)."""
    try:
        conn, wait = next(steps)
        while True:
            conn, wait = steps.send(readable(conn, wait))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def readable(conn: Connection | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``conn``'s descriptor; True if it fired.
    With no connection (a step that backs off) just wait."""
    if conn is None:
        time.sleep(max(0.0, timeout))
        return False
    try:
        try:
            waits = _waits[conn.__class__]
        except KeyError:
            waits = _waits[conn.__class__] = waiter(conn.__class__)
        if waits is default_wait_readable:  # the steps looked at ``pending()`` before
            return wait_fd(conn.fileno(), timeout)
        return bool(waits(conn, timeout))   # it waits itself (nats://: reading its socket)
    except (OSError, ValueError, PosaError):
        return True  # closed under us: the next receive says how


_monotonic = time.monotonic
_UNKNOWN: Any = object()
_blocks: dict[type, Callable[[Any], bool] | None] = {}  # each class's ``block_reads``
_waits: dict[type, Wait] = {}   # how each connection class is waited on (``waiter``)
