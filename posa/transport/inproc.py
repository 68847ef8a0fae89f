"""In-process transport: ``inproc://NAME``, frames handed over by reference.

A listener is entered under NAME in a process-global table; ``connect`` finds it
there, so both ends must live in the same process. Nothing is serialised or
copied: the ``bytes`` object a sender passes is the one the receiver gets.

Strategy
--------
Each connection owns two deques: ``_up`` (connection -> listener) and
``_ready`` (listener -> connection). A listener's ``_ready`` holds connections,
one entry per frame waiting in that connection's ``_up``; popping an entry and
then that connection's oldest frame yields each connection's frames in order
and the connections in arrival order. ``deque.append``/``popleft`` are atomic,
so the data path takes no lock, and ``len()`` of a deque is the exact number of
frames in flight in one direction, which ``Options.high_water_mark`` bounds.

Wake-ups cost a system call or a lock, so they are paid per batch, not per frame:

- ``fileno()`` is an eventfd (a pipe where there is none), created on first use.
  A sender writes it only when ``_signalled`` is false, and sets the flag. A
  reader that finds its deque empty clears the flag, drains the descriptor and
  looks once more before it reports ``None``: a frame appended before the flag
  was cleared is found by that look, one appended after writes the descriptor.
  Readiness may be spurious; it is never missed. Until ``fileno()`` is called
  the flag stays set, so endpoints nobody polls make no system calls.
- A thread that must block (``recv()``, or ``send`` at the high-water mark)
  enters a ``_Sleepers`` deque with a lock of its own, takes a last look, and
  sleeps on that lock. A waker pops the lock it releases, so each sleeper is
  woken once; a counter of sleepers (what a Condition offers) stays up until
  the sleeper runs again, and meanwhile every frame would pay a wake-up.
- A blocked sender is woken when the receiver has taken the queue down to half
  the mark: one wake-up per half-queue, not per frame.

``Options.linger`` has nothing to do here: a sent frame is already in the
receiver's memory, and frames a connection sent before closing stay deliverable.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Generic, TypeVar

from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options, Route

__all__ = ["InprocTransport", "InprocListener", "InprocConnection"]

_PREFIX = "inproc://"
_ONE = (1).to_bytes(8, sys.byteorder)   # an eventfd takes 8-byte counters; a pipe any bytes

_listeners: dict[str, InprocListener] = {}
_listeners_lock = threading.Lock()

_T = TypeVar("_T")
_Item = TypeVar("_Item")


def _name_of(address: str) -> str:
    if not address.startswith(_PREFIX) or len(address) == len(_PREFIX):
        raise TransportError(f"{address!r} is not an inproc address; write it as "
                             "inproc://NAME, e.g. inproc://agent-3")
    return address[len(_PREFIX):]


def _wakeup_pair() -> tuple[int, int]:
    """A non-blocking (read end, write end); the same descriptor for an eventfd."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    return rfd, wfd


def _as_frame(frame: object) -> bytes:
    """Copy a mutable bytes-like object (the receiver must not see it change)."""
    try:
        return memoryview(frame).tobytes()  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a frame is bytes, not {type(frame).__name__}") from None


class _Sleepers(deque):  # type: ignore[type-arg]
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


class _Receiver(Generic[_Item]):
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
        self._readers = _Sleepers()     # threads blocked in recv()

    def fileno(self) -> int:
        """A descriptor that becomes readable when ``recv_nowait()`` may return
        a frame; drain ``recv_nowait()`` before waiting on it. -1 once closed."""
        if self._rfd < 0 and not self._closed:
            with self._fd_lock:
                if self._rfd < 0 and not self._closed:
                    self._rfd, self._wfd = _wakeup_pair()
                    self._signalled = False
                    if self._ready:
                        self._signalled = True
                        os.write(self._wfd, _ONE)
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
                    os.write(self._wfd, _ONE)
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

    def _release(self) -> None:
        """Wake every reader and poller, then close the descriptor."""
        with self._fd_lock:
            if self._wfd >= 0:
                try:
                    os.write(self._wfd, _ONE)   # a poller wakes and meets Closed
                except BlockingIOError:
                    pass
                os.close(self._wfd)
                if self._rfd != self._wfd:
                    os.close(self._rfd)
            self._rfd = self._wfd = -1
            self._signalled = True
        self._readers.wake_all()


class InprocListener(_Receiver["InprocConnection"]):
    """An ``inproc://NAME`` listener; routes are connection ids (``int``)."""

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(_PREFIX + name, options)
        self.rejections: Counter[str] = Counter()
        self._name = name
        self._routes: dict[Route, InprocConnection] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()   # guards _routes, rejections and accepting
        self._max_frame_size = options.max_frame_size
        self._hwm = options.high_water_mark

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._routes)} connections"
        return f"<InprocListener {self.address} {state}>"

    def _closed_error(self) -> Closed:
        return Closed(f"the inproc listener {self.address} is closed; listen again")

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        try:
            conn = self._ready.popleft()
        except IndexError:
            if not self._unsignal():
                return None
            try:
                conn = self._ready.popleft()
            except IndexError:
                return None
        up = conn._up
        try:
            frame = up.popleft()
        except IndexError:   # close() emptied it after we took the entry
            raise self._closed_error() from None
        if conn._blocked and len(up) <= conn._up_low:
            conn._blocked.wake_all()
        return conn._route, frame

    def recv(self, timeout: float | None = None) -> tuple[Route, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        item = self.recv_nowait()
        if item is not None:
            return item
        return self._wait_for_frame(self.recv_nowait, timeout,
                                    f"the inproc listener {self.address}")

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` to the connection ``route`` came from.

        Blocks while that connection has ``high_water_mark`` frames unread.
        Raises ``TransportError`` (no such connection, oversize frame),
        ``Timeout`` after ``send_timeout``, ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        conn = self._routes.get(route)
        if conn is None:
            raise TransportError(f"the inproc listener {self.address} has no connection "
                                 f"{route!r}: it was closed or dropped; a route is valid "
                                 "only while its connection is open")
        if frame.__class__ is not bytes:
            frame = _as_frame(frame)
        if len(frame) > self._max_frame_size:
            raise TransportError(f"a frame of {len(frame)} bytes exceeds max_frame_size "
                                 f"{self._max_frame_size} of the inproc listener "
                                 f"{self.address}; split it or raise Options.max_frame_size")
        ready = conn._ready
        if len(ready) >= self._hwm:
            conn._wait_for_room(ready, self._hwm, self._options.send_timeout,
                                lambda: self._check_route(conn),
                                f"connection {route!r} of the inproc listener {self.address}")
        ready.append(frame)
        if not conn._signalled:
            conn._signal()
        if conn._readers:
            conn._readers.wake_one()

    def _check_route(self, conn: InprocConnection) -> None:
        if self._closed:
            raise self._closed_error()
        if conn._closed:
            raise TransportError(f"connection {conn._route!r} of the inproc listener "
                                 f"{self.address} was closed by its owner")

    def close(self) -> None:
        """Stop listening and drop every connection: their sends and, once they
        have read what was sent to them, their receives raise ``Closed``. Idempotent."""
        if not self._mark_closed():
            return
        with _listeners_lock:
            if _listeners.get(self._name) is self:
                del _listeners[self._name]
        with self._lock:
            conns = list(self._routes.values())
            self._routes.clear()
        for conn in conns:
            conn._drop(f"the inproc listener {self.address} was closed")
        self._ready.clear()
        for conn in conns:
            conn._up.clear()
        self._release()

    def _accept(self, options: Options) -> InprocConnection:
        with self._lock:
            if self._closed:
                raise TransportError(f"no inproc listener named {self._name!r} in this "
                                     "process: it was closed; listen again first")
            limit = self._options.max_connections
            if len(self._routes) >= limit:
                self.rejections["too-many-connections"] += 1
                raise TransportError(f"the inproc listener {self.address} refused a "
                                     f"connection: it has {limit} already (its "
                                     "max_connections); close some or raise "
                                     "Options.max_connections")
            conn = InprocConnection(self, next(self._ids), options)
            self._routes[conn._route] = conn
            return conn

    def _forget(self, conn: InprocConnection) -> None:
        with self._lock:
            if self._routes.get(conn._route) is conn:
                del self._routes[conn._route]

    def _reject(self, conn: InprocConnection, cause: str, why: str) -> None:
        """Drop ``conn`` for a limit it broke, counted in ``rejections``."""
        with self._lock:
            if self._routes.get(conn._route) is conn:
                del self._routes[conn._route]
                self.rejections[cause] += 1
        conn._drop(why)


class InprocConnection(_Receiver[bytes]):
    """A connection to an ``inproc://NAME`` listener of this process."""

    def __init__(self, listener: InprocListener, route: Route, options: Options) -> None:
        super().__init__(listener.address, options)
        self._listener = listener
        self._route = route
        self._up: deque[bytes] = deque()
        self._blocked = _Sleepers()   # senders held by a high-water mark, either way
        self._hwm = options.high_water_mark
        self._up_low = self._hwm // 2
        self._down_low = listener._hwm // 2
        self._max_frame_size = options.max_frame_size
        self._send_limit = min(options.max_frame_size, listener._max_frame_size)
        self._gone: str | None = None        # why the listener dropped us
        self._send_error: str | None = None  # why send must fail: closed or dropped

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("dropped" if self._gone else "open")
        return f"<InprocConnection {self._route!r} to {self.address} {state}>"

    def send(self, frame: bytes) -> None:
        """Send one frame; blocks while ``high_water_mark`` frames are unread.

        Raises ``TransportError`` (oversize frame), ``Timeout`` after
        ``send_timeout``, ``Closed`` after close or once the listener is gone."""
        if self._send_error is not None:
            raise Closed(self._send_error)
        if frame.__class__ is not bytes:
            frame = _as_frame(frame)
        if len(frame) > self._send_limit:
            self._refuse(len(frame))
        up = self._up
        if len(up) >= self._hwm:
            self._wait_for_room(up, self._hwm, self._options.send_timeout,
                                self._check_send, f"the inproc listener {self.address}")
        up.append(frame)
        listener = self._listener
        listener._ready.append(self)
        if not listener._signalled:
            listener._signal()
        if listener._readers:
            listener._readers.wake_one()

    def _check_send(self) -> None:
        if self._send_error is not None:
            raise Closed(self._send_error)

    def _refuse(self, size: int) -> None:
        if size > self._max_frame_size:
            raise TransportError(f"a frame of {size} bytes exceeds max_frame_size "
                                 f"{self._max_frame_size}; split it or raise "
                                 "Options.max_frame_size")
        limit = self._listener._max_frame_size
        why = (f"the inproc listener {self.address} dropped this connection: it sent a "
               f"frame of {size} bytes, over the listener's max_frame_size of {limit}")
        self._listener._reject(self, "oversize", why)
        raise TransportError(why)

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``.

        Raises ``Closed`` after close, and once the listener is gone and every
        frame it sent has been read."""
        if self._closed:
            raise Closed(f"this inproc connection to {self.address} is closed; connect again")
        ready = self._ready
        try:
            frame = ready.popleft()
        except IndexError:
            last = self._last_look()
            if last is None:
                return None
            frame = last
        if self._blocked and len(ready) <= self._down_low:
            self._blocked.wake_all()
        return frame

    def _last_look(self) -> bytes | None:
        if self._unsignal():
            try:
                return self._ready.popleft()
            except IndexError:
                pass
        if self._gone is not None:
            try:
                return self._ready.popleft()
            except IndexError:
                raise Closed(self._gone) from None
        return None

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame from the listener. Raises ``Timeout``, ``Closed``."""
        frame = self.recv_nowait()
        if frame is not None:
            return frame
        return self._wait_for_frame(self.recv_nowait, timeout,
                                    f"the inproc connection to {self.address}")

    def close(self) -> None:
        """Close; frames already sent stay deliverable to the listener. Idempotent."""
        if not self._mark_closed():
            return
        self._send_error = f"this inproc connection to {self.address} is closed; connect again"
        self._listener._forget(self)
        self._ready.clear()
        self._blocked.wake_all()
        self._release()

    def _drop(self, why: str) -> None:
        """The listener side is gone: fail sends now, receives once drained."""
        self._gone = why
        if self._send_error is None:
            self._send_error = why
        self._blocked.wake_all()
        if not self._signalled:
            self._signal()
        self._readers.wake_all()

    def _wait_for_room(self, queue: deque[bytes], mark: int, timeout: float | None,
                       check: Callable[[], None], towards: str) -> None:
        """Sleep until ``queue`` holds fewer than ``mark`` frames; ``check``
        raises if the way is closed meanwhile."""
        def room() -> bool | None:
            check()
            return True if len(queue) < mark else None

        if self._blocked.sleep_until(room, timeout) is None:
            raise Timeout(f"send to {towards} blocked for {timeout} s: {mark} frames "
                          "are queued and the receiver is not taking them; receive "
                          "faster, or raise Options.high_water_mark or "
                          "Options.send_timeout")


class InprocTransport:
    """Serves ``inproc://NAME``: listeners and connections inside one process."""

    schemes = ("inproc",)

    def listen(self, address: str, options: Options) -> InprocListener:
        """Enter a listener under NAME. Raises ``TransportError`` if NAME is taken."""
        name = _name_of(address)
        with _listeners_lock:
            if name in _listeners:
                raise TransportError(f"the inproc name {name!r} is already taken by a "
                                     "listener in this process; close that listener "
                                     "first or pick another name")
            listener = InprocListener(name, options)
            _listeners[name] = listener
        return listener

    def connect(self, address: str, options: Options) -> InprocConnection:
        """Connect to the listener entered under NAME. Raises ``TransportError``."""
        name = _name_of(address)
        listener = _listeners.get(name)
        if listener is None:
            raise TransportError(f"no inproc listener named {name!r} in this process; "
                                 "an inproc:// address reaches only listeners of the "
                                 "process itself: listen on it first, or use tcp:// or "
                                 "zmq+ipc:// between processes")
        return listener._accept(options)
