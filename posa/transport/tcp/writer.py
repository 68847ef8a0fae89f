"""The sending half of a ``tcp://`` connection: coalesced writes and a flusher.

A system call per 100-byte frame would cap a sender at ~200k frames/s (on
loopback the kernel delivers to the receiver inside the sender's call). An
idle connection writes a frame at once, so a request costs one system call and
no thread hop. A frame that follows the last write within ``_BURST_GAP`` (and
no answer came in between) joins a ``SendQueue`` instead; the sender writes the
queue itself every ``_SYNC_FLUSH`` frames, and a flusher thread, woken when the
queue stops being empty, takes what the burst leaves behind after
``_TAIL_DELAY``, so every frame leaves without waiting for a next ``send``
(``recv`` and ``close`` write the queue at once). The flusher also waits for
room in the kernel's buffer when the listener reads slowly; ``send`` blocks only
while ``high_water_mark`` entries wait in the queue (beyond the kernel's buffer
of a few MiB; a frame over 64 KiB counts as two). The flusher ends after
``_FLUSHER_IDLE`` seconds without work.

``QueuedWriter`` holds the state both halves of a connection guard with one
lock (the socket, the queue, whether it is closing, closed or failed); its
subclass ``TcpConnection`` adds the receiving half and gives the socket up.
Methods named ``*_locked`` run with the lock held.

*Losses.* Frames queued on a connection that fails are lost (a forwarder's
stream still holds them and resends them on its next connection); the line
that says so is logged once per address per ``LOSS_INTERVAL`` (``LossLog``):
a sender retries a connection that keeps failing dozens of times a second.

*Memory.* An idle connection holds no queue, no condition and no poll object:
the queue is made by the first send the socket does not take at once and
dropped again when the flush empties it (an empty one is shared), the
condition by the first thread that waits (the flusher, a sender waiting for
room, a lingering close), the poll object by the flusher's first wait. Made
at once, they were 3 of the 4.5 KB of Python memory an idle connection held
(the queue is two deques), and a process may hold thousands of idle clients.
"""
from __future__ import annotations

import errno
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options
from posa.transport.framing import MAX_LENGTH, SendQueue, pack_length
from posa.transport.tcp.sockets import DIRECT_LIMIT, NOSIGNAL, error_text, too_large

__all__ = ["QueuedWriter", "LossLog", "LOSS_INTERVAL"]

log = logging.getLogger("posa.transport.tcp")

_BURST_GAP = 50e-6                 # s: a send this soon after a write joins the queue
_SYNC_FLUSH = 256                  # queued entries at which the sender writes them itself
_TAIL_DELAY = 100e-6               # s: the flusher's pause before it takes a burst's tail
_FLUSHER_IDLE = 1.0                # s: an idle flusher thread ends after this long
_NO_QUEUE = SendQueue()            # an idle connection's queue: shared, never pushed to
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN,
         errno.ESHUTDOWN, errno.ETIMEDOUT)
LOSS_INTERVAL = 10.0               # s: one "frames ... are lost" line per address this often


class LossLog:
    """The "frames queued ... are lost" warning, once per address per ``interval``.

    A connection that keeps failing (a listener whose certificate does not verify,
    one that resets every connection) is made again by its sender on every retry,
    dozens of times a second, and each attempt loses what it had queued: the first
    loss of an address is logged at once, the next ones within ``interval`` are
    counted, and the next line for that address says how many there were. A
    count still held back when its interval ends is logged at the next loss of
    any address (or by ``flush``), a line that starts the address's next
    interval; an address quiet for a whole interval is forgotten."""

    def __init__(self, logger: logging.Logger, interval: float = LOSS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval, self._clock = logger, interval, clock
        self._lock = threading.Lock()
        # address -> [until, losses, frames, the last loss's frames, its why]
        self._quiet: dict[str, list[Any]] = {}
        self._due = math.inf    # no address's interval ends before (a lower bound)

    def lost(self, address: str, frames: int, why: str) -> bool:
        """Report ``frames`` lost on the connection to ``address`` because ``why``;
        True if a line was logged."""
        now = self._clock()
        with self._lock:
            ended = self._ended_locked(now) if now >= self._due else {}
            before = ended.pop(address, None)   # its count held back, if any
            state = None if before is not None else self._quiet.get(address)
            if state is not None:       # within its interval: counted
                state[1:] = [state[1] + 1, state[2] + frames, frames, why]
            else:
                self._quiet[address] = [now + self.interval, 0, 0, frames, why]
                self._due = min(self._due, now + self.interval)
        self._report(ended)
        if state is not None:
            return False
        message, args = "%d frames queued for %s are lost: %s", [frames, address, why]
        if before is not None:
            message += " (and %d more times, %d frames, since the last such line)"
            args += [before[1], before[2]]
        else:
            message += " (repeats within %g s are only counted)"
            args.append(self.interval)
        self.logger.warning(message, *args)
        return True

    def flush(self) -> None:
        """Log every count held back now, its interval ended or not, and forget
        every address."""
        with self._lock:
            quiet, self._quiet, self._due = self._quiet, {}, math.inf
        self._report({a: s for a, s in quiet.items() if s[1]})

    def _ended_locked(self, now: float) -> dict[str, list[Any]]:
        """The addresses whose interval ended with losses held back, each in a new
        interval (its count's line is one); the others, quiet, are forgotten."""
        ended = {a: s for a, s in self._quiet.items() if s[0] <= now}
        for address, state in ended.items():
            if state[1]:
                self._quiet[address] = [now + self.interval, 0, 0, 0, ""]
            else:
                del self._quiet[address]
        self._due = min((s[0] for s in self._quiet.values()), default=math.inf)
        return {a: s for a, s in ended.items() if s[1]}

    def _report(self, ended: dict[str, list[Any]]) -> None:
        for address, (_, times, total, frames, why) in ended.items():
            self.logger.warning("%d frames queued for %s are lost: %s (the last of %d "
                                "times, %d frames, only counted since the last such "
                                "line)", frames, address, why, times, total)


losses = LossLog(log)


class QueuedWriter:
    """The sending half of a connection to a ``tcp://`` listener; see the
    module docstring."""

    def __init__(self, sock: socket.socket, address: str, options: Options) -> None:
        self.address = address
        self._sock = sock
        self._max_frame = min(options.max_frame_size, MAX_LENGTH)
        self._high_water_mark = options.high_water_mark
        self._send_timeout = options.send_timeout
        self._linger = options.linger
        self._lock = threading.Lock()         # guards everything below and writes
        self._cond: threading.Condition | None = None   # made by the first waiter
        self._out = _NO_QUEUE                 # made by the first frame that must wait
        self._last_write = 0.0                # time.monotonic() of the last write
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False            # the flusher waits for work
        self._space_waiters = 0               # threads waiting for _out to shrink
        self._closing = False                 # close() began: no more sends
        self._closed = False                  # closed: nothing more at all
        self._waiting = 0                     # threads waiting on the socket
        self._close_deadline = 0.0            # close() + linger
        self._failure: tuple[type[TransportError], str] | None = None  # unusable since
        self._writable: select.poll | None = None     # made by the flusher's first wait

    def send(self, frame: bytes) -> None:
        """Send one frame. It is written at once or queued for the flusher;
        blocks, at most ``send_timeout``, while ``high_water_mark`` entries wait.

        Raises ``TransportError`` (frame too large, listener gone), ``Timeout``
        (the frame was not sent), ``Closed``."""
        size = len(frame)
        if size > self._max_frame:
            raise too_large(size, self._max_frame, f"to {self.address}")
        with self._lock:
            if self._closing or self._failure is not None:
                raise self._failure_error()
            out = self._out
            if out and len(out) >= self._high_water_mark:
                self._wait_for_room_locked()
                out = self._out           # the flush may have dropped the emptied queue
            if out:                       # the flusher is at work: join the queue
                if out.push(frame) >= _SYNC_FLUSH:
                    self._flush_locked()
                return
            now = time.monotonic()
            if now - self._last_write < _BURST_GAP:
                self._queue_locked().push(frame)  # a burst: the flusher or a later send
                self._kick_locked()               # writes it
                return
            self._last_write = now
            if size > DIRECT_LIMIT:
                self._queue_locked().push(frame)
                self._flush_locked()
                if self._out:
                    self._kick_locked()
                return
            data = pack_length(size) + frame  # (size <= _max_frame <= MAX_LENGTH)
            try:
                sent = self._sock.send(data, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise self._broken_locked(exc) from None
            if sent < len(data):
                self._queue_locked().push_raw(memoryview(data)[sent:] if sent else data)
                self._kick_locked()

    def _queue_locked(self) -> SendQueue:
        """The queue to push to, made if the connection has none (see Memory)."""
        if self._out is _NO_QUEUE:
            self._out = SendQueue()
        return self._out

    def _condition_locked(self) -> threading.Condition:
        """The condition to wait on, made by the first waiter (see Memory)."""
        if self._cond is None:
            self._cond = threading.Condition(self._lock)
        return self._cond

    def _notify_locked(self) -> None:
        """Wake every thread waiting on the condition (none if it was never made)."""
        if self._cond is not None:
            self._cond.notify_all()

    def _discard_locked(self) -> None:
        """Forget every queued frame and wake every waiting thread."""
        self._out = _NO_QUEUE
        self._notify_locked()

    def _flush_locked(self) -> None:
        """Write what the kernel takes of the queue without waiting; an emptied
        queue is dropped (see Memory)."""
        out = self._out
        before = len(out)
        while out:
            data = out.head()
            try:
                sent = self._sock.send(data, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise self._broken_locked(exc) from None
            out.consume(sent)
            if sent < len(data):
                break
        self._last_write = time.monotonic()
        if not out:
            self._out = _NO_QUEUE
        if self._space_waiters and len(out) < before:
            self._notify_locked()

    def _kick_locked(self) -> None:
        """Make sure a flusher thread will write the queue."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._run_flusher, daemon=True,
                                             name=f"posa-tcp-flusher {self.address}")
            self._flusher.start()
        elif self._flusher_idle:
            self._flusher_idle = False
            self._notify_locked()

    def _run_flusher(self) -> None:
        """The flusher thread: write what a burst of sends leaves queued."""
        with self._lock:
            try:
                while True:
                    # a burst began: its sender writes most of it (every _SYNC_FLUSH
                    # frames); wait a moment and take what it leaves behind
                    self._unlocked(time.sleep, _TAIL_DELAY)
                    while self._out and not self._closed and self._failure is None:
                        self._flush_locked()
                        if self._out:
                            self._unlocked(self._writable_locked().poll)
                    if self._closed or self._failure is not None:
                        break
                    self._flusher_idle = True
                    woken = self._condition_locked().wait(_FLUSHER_IDLE)
                    self._flusher_idle = False
                    if self._closed or self._failure is not None or not (woken or self._out):
                        break
            except TransportError:
                pass  # recorded in _failure: the next send raises it
            finally:
                self._flusher = None
                self._notify_locked()
                self._release_if_unused_locked()

    def _writable_locked(self) -> select.poll:
        """The poll object that waits for room in the socket's buffer."""
        if self._writable is None:
            self._writable = select.poll()
            self._writable.register(self._sock, select.POLLOUT)
        return self._writable

    def _unlocked(self, wait: Callable[..., object], *args: float) -> None:
        """Call ``wait`` without the lock, counted as a thread using the socket."""
        self._waiting += 1
        self._lock.release()
        try:
            wait(*args)
        finally:
            self._lock.acquire()
            self._waiting -= 1

    def _wait_for_room_locked(self) -> None:
        """Wait until fewer than ``high_water_mark`` entries are queued."""
        deadline = None if self._send_timeout is None else (
            time.monotonic() + self._send_timeout)
        self._flush_locked()
        self._space_waiters += 1
        try:
            while len(self._out) >= self._high_water_mark:
                if self._closing or self._failure is not None:
                    raise self._failure_error()
                self._kick_locked()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"cannot send to {self.address}: {len(self._out)} "
                                  "frames wait for a listener that has not read for "
                                  f"{self._send_timeout} s (Options.send_timeout); "
                                  "the frame was not sent")
                self._condition_locked().wait(remaining)
        finally:
            self._space_waiters -= 1
        if self._closing or self._failure is not None:
            raise self._failure_error()

    def _linger_locked(self) -> None:
        """Let the flusher write the queue until the close deadline."""
        deadline = self._close_deadline
        try:
            self._flush_locked()
        except TransportError:
            return  # the connection failed: _broken_locked reported the loss
        self._space_waiters += 1
        try:
            while self._out and self._failure is None:
                self._kick_locked()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("closing the connection to %s with %d frames unsent "
                                "after %s s (Options.linger): the listener is not "
                                "reading", self.address, len(self._out), self._linger)
                    return
                self._condition_locked().wait(remaining)
        finally:
            self._space_waiters -= 1

    def _broken_locked(self, exc: OSError) -> TransportError:
        """Record that the stream failed with ``exc``; the error to raise."""
        if self._closed:
            return self._closed_error()
        if exc.errno in _GONE:
            self._failure = (Closed, f"the listener at {self.address} closed the "
                                     f"connection ({error_text(exc)}); connect again to "
                                     "go on")
        else:
            self._failure = (TransportError, f"the connection to {self.address} "
                                             f"failed: {error_text(exc)}")
        if self._out:
            losses.lost(self.address, len(self._out), self._failure[1])
        self._discard_locked()
        return self._failure_error()

    def _release_locked(self) -> None:
        """Give up the socket, once no thread uses it (the subclass decides how)."""
        raise NotImplementedError

    def _release_if_unused_locked(self) -> None:
        """Once closed, give up the socket when no thread waits on it any more."""
        if self._closed and not self._waiting:
            self._release_locked()

    def _failure_error(self) -> TransportError:
        if self._closing or self._failure is None:
            return self._closed_error()
        cls, message = self._failure
        return cls(message)

    def _closed_error(self) -> Closed:
        return Closed(f"the connection to {self.address} is closed; connect again "
                      "to go on")
