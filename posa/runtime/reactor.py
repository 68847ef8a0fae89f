"""The Reactor: one thread demultiplexes every input of a process.

Sources are transport endpoints (anything with ``fileno()`` and ``pending()``,
see ``posa/transport/base.py``); each has a callback that drains it.  Timers and
callbacks handed over from other threads run on the same thread, so handlers
are never preempted by each other (the synchronous demultiplexer of the
Reactor pattern).

Strategy:
- One poller (``posa.transport.poller``: epoll on Linux) holds the sources'
  descriptors plus a wake-up pipe.
  Other threads hand work over with ``call_soon`` (a deque append, atomic under
  the GIL) and write the pipe only when the reactor may be asleep, so a burst of
  hand-offs costs one system call, not one per call.
- A source with many descriptors (a tcp listener: ``attach``/``serve``/``detach``)
  may put them in this poller itself (``PollerShare``); each of their events is
  handed to its ``serve(fd, mask)``, then its callback drains it: one poll per
  event, no poller nested in this one.
- Descriptors may be edge-triggered (ZeroMQ's are): before every wait the loop
  asks each source ``pending()`` and runs its callback at once when true.
- A callback that raises is logged and the loop goes on: one bad handler must
  not stop the process's I/O.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from posa.errors import Closed, PosaError, Timeout
from posa.runtime.local import process_local
from posa.transport.poller import READ, Poller, PollerShare

__all__ = ["Reactor", "Source", "Timer", "default"]

log = logging.getLogger("posa.runtime.reactor")
_get_ident = threading.get_ident
_reactors: weakref.WeakSet[Reactor] = weakref.WeakSet()   # for the fork hook below


class Source(Protocol):
    def fileno(self) -> int: ...

    def pending(self) -> bool: ...


class Timer:
    """A scheduled call; ``cancel()`` stops it (and its repetitions)."""

    __slots__ = ("when", "interval", "callback", "cancelled")

    def __init__(self, when: float, interval: float | None, callback: Callable[[], Any]) -> None:
        self.when = when
        self.interval = interval
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """An event loop over transport endpoints, timers and cross-thread hand-offs."""

    def __init__(self, name: str = "posa-reactor") -> None:
        self.name = name
        self._poller = Poller()
        self._callbacks: dict[int, Callable[[], Any]] = {}   # by descriptor
        # descriptors that sources put in this poller (PollerShare): fd -> serve(fd, mask)
        self._served: dict[int, Callable[[int, int], None]] = {}
        # each source's descriptor as registered (it may not answer fileno() once
        # closed) and its callback
        self._sources: dict[Source, tuple[int, Callable[[], Any]]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._handoffs: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._signalled = False
        self._poller.register(self._wake_r, READ)
        self._callbacks[self._wake_r] = self._drain_wakeups
        self._thread: threading.Thread | None = None
        self._ident: int | None = None   # the loop's thread while it runs (a cheap check)
        _reactors.add(self)
        # (pending, callback) of every source, asked before each wait: rebuilt when
        # the sources change, not made on every turn of the loop
        self._asked: tuple[tuple[Callable[[], bool], Callable[[], Any]], ...] = ()
        self._running = False
        self._stopping = False
        self._closed = False

    # -- hand-off from any thread -------------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the reactor thread, soon. Safe from any thread."""
        if self._closed:
            raise Closed(f"reactor {self.name} is closed")
        self._handoffs.append((fn, args))
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # pipe full (already awake) or closed during shutdown

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 10.0) -> Any:
        """Run ``fn(*args)`` on the reactor thread and return its result.

        Called on the reactor thread (or before it runs) it calls ``fn`` directly.
        Raises what ``fn`` raised, or ``Timeout``."""
        if not self._running or self.in_reactor_thread():
            return fn(*args)
        done = threading.Event()
        outcome: list[Any] = [None, None]

        def run() -> None:
            try:
                outcome[0] = fn(*args)
            except BaseException as exc:  # handed back to the caller
                outcome[1] = exc
            done.set()

        self.call_soon(run)
        if not done.wait(timeout):
            raise Timeout(f"reactor {self.name} did not run {fn!r} within {timeout} s")
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def in_reactor_thread(self) -> bool:
        return self._ident == _get_ident()

    # -- sources and timers (reactor thread, or before start) ------------------
    def add_source(self, source: Source, callback: Callable[[], Any]) -> None:
        """Watch ``source``; ``callback()`` drains it whenever it may have input.

        Safe from any thread and does not wait: what arrives before the reactor
        takes the source over stays queued in the source."""
        if not self._running or self.in_reactor_thread():
            self._add_source(source, callback)
        else:
            self.call_soon(self._add_source, source, callback)

    def _add_source(self, source: Source, callback: Callable[[], Any]) -> None:
        attach = getattr(source, "attach", None)
        if attach is not None:
            serve = source.serve  # type: ignore[attr-defined]

            def served(fd: int, mask: int) -> None:
                serve(fd, mask)
                callback()

            if attach(PollerShare(self._poller, self._served, served)):
                self._sources[source] = (-1, callback)
                self._sources_changed()
                callback()  # input may have arrived before the registration
                return
        fd = source.fileno()
        self._poller.register(fd, READ)
        self._sources[source] = (fd, callback)
        self._sources_changed()
        self._callbacks[fd] = callback
        callback()  # input may have arrived before the registration

    def _sources_changed(self) -> None:
        self._asked = tuple((source.pending, callback)
                            for source, (_, callback) in self._sources.items())

    def remove_source(self, source: Source, timeout: float | None = 10.0) -> None:
        """Stop watching ``source`` (before closing it). ``Timeout`` if the loop did
        not get to it within ``timeout`` s (held by a callback): it will, later."""
        self.call(self._remove_source, source, timeout=timeout)

    def _remove_source(self, source: Source) -> None:
        entry = self._sources.pop(source, None)
        if entry is None:
            return
        self._sources_changed()
        fd, callback = entry
        if fd < 0:      # its descriptors are in this poller: give them back
            source.detach()  # type: ignore[attr-defined]
            return
        # the descriptor may have been closed and its number given to a newer source
        if self._callbacks.get(fd) is callback:
            del self._callbacks[fd]
            try:
                self._poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass    # closed already: epoll forgot it by itself

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        """Run ``fn()`` once after ``delay`` seconds. Safe from any thread."""
        timer = Timer(time.monotonic() + delay, None, fn)
        if self.in_reactor_thread():
            self._push_timer(timer)
        else:
            self.call_soon(self._push_timer, timer)
        return timer

    def call_every(self, interval: float, fn: Callable[[], Any]) -> Timer:
        """Run ``fn()`` every ``interval`` seconds. Safe from any thread."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        timer = Timer(time.monotonic() + interval, interval, fn)
        self.call_soon(self._push_timer, timer)
        return timer

    def _push_timer(self, timer: Timer) -> None:
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))

    # -- the loop ------------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> None:
        """One iteration: hand-offs, due timers, pending sources, then wait."""
        if self._handoffs:
            self._run_handoffs()
        timers = self._timers
        now = time.monotonic()     # read again only if timers ran (else nothing did)
        if timers and timers[0][0] <= now:
            self._run_timers()
            now = time.monotonic()
        busy = False
        for pending, callback in self._asked:
            try:
                if pending():
                    busy = True
                    self._guard(callback)
            except PosaError:
                pass  # a source closed under us; its owner removes it
        if busy or self._handoffs or self._stopping:
            wait: float | None = 0.0
        elif timers:        # (no min()/max() on this path: each parses keywords)
            wait = timers[0][0] - now
            if wait < 0.0:
                wait = 0.0
            if timeout is not None and timeout < wait:
                wait = timeout if timeout > 0.0 else 0.0
        else:
            wait = timeout if timeout is None or timeout > 0.0 else 0.0
        events = self._poller.poll(-1 if wait is None else wait)
        callbacks, served = self._callbacks, self._served
        for fd, mask in events:
            ready = callbacks.get(fd)
            try:            # ``_guard``, inline: one call less per event
                if ready is not None:
                    ready()
                else:
                    serve = served.get(fd)
                    if serve is not None:
                        serve(fd, mask)
            except Exception:
                log.exception("reactor %s: callback %r raised; going on", self.name,
                              ready if ready is not None else served.get(fd))

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._signalled = False

    def _run_handoffs(self) -> None:
        handoffs = self._handoffs
        for _ in range(len(handoffs)):
            fn, args = handoffs.popleft()
            self._guard(fn, *args)

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            self._guard(timer.callback)
            if timer.interval is not None and not timer.cancelled:
                timer.when = max(timer.when + timer.interval, now)
                heapq.heappush(timers, (timer.when, next(self._order), timer))

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("reactor %s: callback %r raised; going on", self.name, fn)

    def run(self, stop: threading.Event | None = None) -> None:
        """Run on the calling thread until ``stop()`` (or ``stop`` is set)."""
        self._thread = threading.current_thread()
        self._ident = _get_ident()
        self._running = True
        self._stopping = False
        try:
            while not self._stopping and not (stop is not None and stop.is_set()):
                self.run_once(0.5 if stop is not None else None)
            self._run_handoffs()
        finally:
            self._running = False
            self._ident = None      # a later thread may be given the same number

    def start(self) -> None:
        """Run the loop on a daemon thread of its own."""
        if self._running:
            return
        started = threading.Event()

        def main() -> None:
            self._thread = threading.current_thread()
            self._ident = _get_ident()
            self._running = True
            started.set()
            self.run()

        thread = threading.Thread(target=main, name=self.name, daemon=True)
        thread.start()
        started.wait()

    def stop(self) -> None:
        """Ask the loop to return after the current iteration. Safe from any thread."""
        if self._running:
            self._stopping = True
            self.call_soon(lambda: None)   # wake it if it waits

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, wait for its thread, release the poller. Idempotent."""
        if self._closed:
            return
        thread = self._thread
        self.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._closed = True
        self._poller.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _forget_threads() -> None:
    """In a forked child no reactor's loop thread exists: a thread of the child that
    is given the same number is not one."""
    for reactor in list(_reactors):
        reactor._ident = None


os.register_at_fork(after_in_child=_forget_threads)


def _started() -> Reactor:
    reactor = Reactor()
    reactor.start()
    return reactor


default = process_local(_started, alive=lambda reactor: not reactor._closed)
"""The process's reactor, started on first use on a daemon thread."""
