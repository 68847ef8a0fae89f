"""The receiving half every inproc endpoint has.

A ``Receiver`` holds a deque of what is ready for its owner, the wake-up
descriptor for pollers and the threads asleep in ``recv()``:

- ``fileno()`` is created on first use. A sender writes it only when
  ``_signalled`` is false, and sets the flag. A reader that finds its deque
  empty clears the flag, drains the descriptor and looks once more before it
  reports ``None``: a frame appended before the flag was cleared is found by
  that look, one appended after writes the descriptor. Readiness may be
  spurious; it is never missed. Until ``fileno()`` is called the flag stays
  set, so endpoints nobody polls make no system calls.
- A thread that must block enters ``Sleepers``, takes a last look, and sleeps.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from posa.errors import Timeout
from posa.transport.base import Options
from posa.transport.inproc.wakeup import ONE, Sleepers, wakeup_pair

__all__ = ["Receiver", "as_frame"]

_T = TypeVar("_T")
_Item = TypeVar("_Item")


def as_frame(frame: bytes) -> bytes:
    """Copy a mutable bytes-like object that is not ``bytes`` (the receiver
    must not see it change)."""
    try:
        return memoryview(frame).tobytes()
    except TypeError:
        raise TypeError(f"a frame is bytes, not {type(frame).__name__}") from None


class Receiver(Generic[_Item]):
    """The receiving half every inproc endpoint has: a deque of what is ready,
    the wake-up descriptor for pollers and the threads asleep in ``recv()``."""

    def __init__(self, address: str, options: Options) -> None:
        self.address = address
        self._options = options
        self._ready: deque[_Item] = deque()
        self._closed = False
        self._signalled = True      # no descriptor yet: nothing to signal
        self._rfd = -1
        self._wfd = -1
        self._fd_lock = threading.Lock()
        self._readers = Sleepers()     # threads blocked in recv()

    def fileno(self) -> int:
        """A descriptor that becomes readable when ``recv_nowait()`` may return
        a frame; drain ``recv_nowait()`` before waiting on it. -1 once closed."""
        if self._rfd < 0 and not self._closed:
            with self._fd_lock:
                if self._rfd < 0 and not self._closed:
                    self._rfd, self._wfd = wakeup_pair()
                    self._signalled = False
                    if self._ready:
                        self._signalled = True
                        os.write(self._wfd, ONE)
        return self._rfd

    def pending(self) -> bool:
        """True if ``recv_nowait()`` may return a frame without the descriptor firing."""
        return bool(self._ready)

    def _signal(self) -> None:
        """Make the descriptor readable; a sender calls it when ``_signalled`` is false."""
        with self._fd_lock:
            if not self._signalled and self._wfd >= 0:
                self._signalled = True
                try:
                    os.write(self._wfd, ONE)
                except BlockingIOError:   # a full pipe is readable already
                    pass

    def _unsignal(self) -> bool:
        """Clear the signal before a last look at the deque; False if none was set."""
        if not self._signalled or self._rfd < 0:
            return False
        with self._fd_lock:
            if self._rfd < 0:
                return False
            self._signalled = False
            try:
                os.read(self._rfd, 4096)
            except BlockingIOError:
                pass
        return True

    def _wait_for_frame(self, take: Callable[[], _T | None], timeout: float | None,
                        what: str) -> _T:
        item = self._readers.sleep_until(take, timeout)
        if item is None:
            raise Timeout(f"no frame arrived on {what} within {timeout} s")
        return item

    def _mark_closed(self) -> bool:
        """Set ``_closed``; False if it was already set (close is idempotent)."""
        with self._fd_lock:
            if self._closed:
                return False
            self._closed = True
            return True

    def _forked(self) -> None:
        """(in a forked child, from the fork hook) This endpoint is the parent's:
        closed here, its descriptor copies closed without a write (the eventfd is
        the parent's too: a write would wake the parent's poller for nothing),
        its locks new (a thread of the parent, absent here, may have held one)."""
        self._fd_lock = threading.Lock()
        self._closed = self._signalled = True
        for fd in {self._rfd, self._wfd} - {-1}:
            os.close(fd)
        self._rfd = self._wfd = -1
        self._ready.clear()
        self._readers = Sleepers()

    def _release(self) -> None:
        """Wake every reader and poller, then close the descriptor. Can run again
        (a close interrupted): a descriptor is forgotten before it is closed."""
        with self._fd_lock:
            self._signalled = True          # no more writes by senders
            rfd, wfd = self._rfd, self._wfd
            if wfd >= 0:
                try:
                    os.write(wfd, ONE)      # a poller wakes and meets Closed
                except OSError:
                    pass    # full (readable already), or its read end closed before
            if rfd >= 0 and rfd != wfd:     # a pipe's read end
                self._rfd = -1
                os.close(rfd)
            if wfd >= 0:
                self._rfd = self._wfd = -1
                os.close(wfd)
        self._readers.wake_all()
