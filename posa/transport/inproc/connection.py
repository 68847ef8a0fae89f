"""The dialling end of ``inproc://NAME``: ``InprocConnection``.

A connection owns two deques: ``_up`` (connection -> listener) and ``_ready``
(listener -> connection); ``len()`` of each is the exact number of frames in
flight in that direction, which ``Options.high_water_mark`` bounds. A blocked
sender, either way, sleeps in the connection's ``_blocked`` and is woken when
the receiver has taken the queue down to half the mark: one wake-up per
half-queue, not per frame.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options, Route
from posa.transport.inproc.receiver import Receiver, as_frame
from posa.transport.inproc.wakeup import Sleepers

if TYPE_CHECKING:
    from posa.transport.inproc.listener import InprocListener

__all__ = ["InprocConnection"]


class InprocConnection(Receiver[bytes]):
    """A connection to an ``inproc://NAME`` listener of this process."""

    def __init__(self, listener: InprocListener, route: Route, options: Options) -> None:
        super().__init__(listener.address, options)
        self._listener = listener
        self._route = route
        self._up: deque[bytes] = deque()
        self._blocked = Sleepers()   # senders held by a high-water mark, either way
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
            frame = as_frame(frame)
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
            raise Closed(self._send_error or f"this inproc connection to {self.address} "
                         "is closed; connect again")
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

    def _forked(self) -> None:
        """(in a forked child) The parent's connection: closed here (see Receiver)."""
        super()._forked()
        self._up.clear()
        self._blocked = Sleepers()

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
