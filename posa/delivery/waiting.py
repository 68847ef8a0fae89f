"""Blocking waits for protocol steps written once (``Forwarder.request_steps``,
``flush_steps``): a step yields ``(connection, seconds)`` when it must wait for
input and is sent whether the connection became readable (the connection's own
``wait_readable`` where it has one: ``posa.transport.base.waiter``).  A step with
nothing to wait for yields ``(None, seconds)``.  ``drive`` runs the
steps in the calling thread with ``poll`` (``select`` where there is no poll:
``select.select`` refuses descriptors from 1024 up, which a process holding
many sockets reaches); ``posa.aio`` drives the same steps with the event
loop.  The lock a step runs under is released while it waits.

A wait never blocks in a read whose time limit is the socket's own
(``SO_RCVTIMEO``): a signal interrupts such a read, the interpreter makes it
again with its whole time limit, and with signals more often than that limit
(a sampling profiler's, a watchdog's timer) it never ends. ``poll`` is made
again with what is left of its time (PEP 475), so the deadline holds.

The wait on a descriptor is ``posa.transport.base.wait_fd``: one ``poll`` call
with this thread's poll object for that descriptor number, none made and
registered per request (0.8 us less per wait here), in slices for a wait of
weeks.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import TypeVar

from posa.errors import PosaError
from posa.transport.base import Connection, Wait, default_wait_readable, wait_fd, waiter

__all__ = ["drive", "run_held", "readable", "Steps"]

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


_waits: dict[type, Wait] = {}   # how each connection class is waited on (``waiter``)
