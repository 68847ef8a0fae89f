"""The one I/O thread of a process that runs every NATS connection of the transport.

A plain poller loop (``posa.transport.poller``), not asyncio: the sockets to the
NATS servers are non-blocking and in its poller; a readable socket is read,
parsed and delivered in the same turn (``posa.transport.nats.client``), a
writable one written from its connection's send queue. Other threads hand work
over with ``call_soon`` (a deque append; the wake-up pipe is written only when
the loop may be asleep) and schedule with ``call_later``. The thread starts on
first use, and again in a forked child, which inherits no threads: a loop made
by the parent takes no work in the child (``call_soon`` drops it).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from posa.errors import Timeout
from posa.transport.poller import READ, Poller

__all__ = ["Loop", "Timer", "event_loop", "pid"]

log = logging.getLogger("posa.transport.nats")
_pid = [os.getpid()]         # this process's, kept current in a forked child


def _forked() -> None:
    global _lock
    _pid[0] = os.getpid()
    _lock = threading.Lock()    # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's id, without a system call."""
    return _pid[0]


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """A poller, timers and hand-offs, run by a daemon thread of its own."""

    def __init__(self) -> None:
        self.pid = _pid[0]
        self.poller = Poller()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._handoffs: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._signalled = False
        self.poller.register(self._wake_r, READ)
        self._handlers[self._wake_r] = self._drain_wakeups
        self.thread = threading.Thread(target=self._run, name="posa-nats", daemon=True)
        self.thread.start()

    def in_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop, soon. Safe from any thread."""
        if self.pid != _pid[0]:
            return                      # the parent's loop, in a forked child
        self._handoffs.append((fn, args))
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass                    # the pipe is full: the loop is awake

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        """Run ``fn()`` on the loop after ``delay`` seconds. Safe from any thread."""
        timer = Timer(time.monotonic() + delay, fn)
        if self.in_thread():
            self._push(timer)
        else:
            self.call_soon(self._push, timer)
        return timer

    def _push(self, timer: Timer) -> None:
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))

    def call(self, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        """Run ``fn()`` on the loop and wait for its result (or what it raised);
        ``Timeout`` after ``timeout`` seconds."""
        if self.in_thread():
            return fn()
        done = threading.Event()
        outcome: list[Any] = [None, None]

        def run() -> None:
            try:
                outcome[0] = fn()
            except BaseException as exc:       # handed back to the caller
                outcome[1] = exc
            done.set()

        self.call_soon(run)
        if not done.wait(timeout):
            raise Timeout(f"{what} took longer than {timeout} s")
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    # -- descriptors (the loop's thread) -------------------------------------------------

    def watch(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self.poller.register(fd, mask)
        self._handlers[fd] = handler

    def modify(self, fd: int, mask: int) -> None:
        self.poller.modify(fd, mask)

    def unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self.poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:
                log.exception("the nats:// I/O loop: a callback raised; going on")

    def _turn(self) -> None:
        handoffs = self._handoffs
        for _ in range(len(handoffs)):
            fn, args = handoffs.popleft()
            self._guard(fn, *args)
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                self._guard(timer.callback)
        wait = -1.0                 # until a descriptor is ready
        if handoffs:
            wait = 0.0
        elif timers:
            wait = max(0.0, timers[0][0] - now)
        handlers = self._handlers
        for fd, mask in self.poller.poll(wait):
            handler = handlers.get(fd)
            if handler is not None:
                self._guard(handler, mask)

    @staticmethod
    def _guard(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("the nats:// I/O loop: %r raised; going on", fn)

    def _drain_wakeups(self, mask: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass
        self._signalled = False


_lock = threading.Lock()
_loop: Loop | None = None


def event_loop() -> Loop:
    """This process's loop, its thread started on first use (in a forked child too)."""
    global _loop
    loop = _loop
    if loop is not None and loop.pid == _pid[0]:
        return loop
    with _lock:
        if _loop is None or _loop.pid != _pid[0]:
            _loop = Loop()
        return _loop
