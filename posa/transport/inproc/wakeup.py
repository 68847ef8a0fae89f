"""Wake-ups for the inproc transport: a descriptor for pollers, locks for sleepers.

Wake-ups cost a system call or a lock, so the inproc endpoints pay them per
batch, not per frame (see ``posa.transport.inproc``). Two primitives serve:

- ``wakeup_pair()``: an eventfd (a pipe where there is none), non-blocking,
  which a receiver's ``fileno()`` hands to pollers; ``ONE`` is what a sender
  writes to it.
- ``Sleepers``: threads blocked until something happens, each asleep on a lock
  of its own. A waker pops the lock it releases, so each sleeper is woken once;
  a counter of sleepers (what a Condition offers) stays up until the sleeper
  runs again, and meanwhile every frame would pay a wake-up.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ONE", "wakeup_pair", "Sleepers"]

ONE = (1).to_bytes(8, sys.byteorder)   # an eventfd takes 8-byte counters; a pipe any bytes

_T = TypeVar("_T")


def wakeup_pair() -> tuple[int, int]:
    """A non-blocking (read end, write end); the same descriptor for an eventfd."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    return rfd, wfd



class Sleepers(deque[threading.Lock]):
    """Threads blocked until something happens, each asleep on its own lock.

    Wakers pop the locks they release, so ``bool(sleepers)`` is "someone sleeps
    and nobody has woken it yet": cheap to test on every frame."""

    def wake_one(self) -> None:
        try:
            self.popleft().release()
        except IndexError:
            pass

    def wake_all(self) -> None:
        while True:
            try:
                self.popleft().release()
            except IndexError:
                return

    def sleep_until(self, attempt: Callable[[], _T | None],
                    timeout: float | None) -> _T | None:
        """Call ``attempt`` until it returns non-None and return that; sleep
        between attempts. ``None`` once ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            lock = threading.Lock()
            lock.acquire()
            self.append(lock)
            try:
                result = attempt()   # the last look, now that a waker will see us
                remaining = -1.0 if deadline is None else deadline - time.monotonic()
                if result is None and (deadline is None or remaining > 0):
                    lock.acquire(True, min(remaining, threading.TIMEOUT_MAX))
            finally:
                woken = self._leave(lock)
            if result is not None:
                if woken:
                    self.wake_one()   # pass on a wake-up this thread did not need
                return result
            if deadline is not None and deadline <= time.monotonic():
                return attempt()

    def _leave(self, lock: threading.Lock) -> bool:
        """Leave the deque; True if a waker had already taken ``lock`` out."""
        try:
            self.remove(lock)
        except ValueError:
            return True
        return False
