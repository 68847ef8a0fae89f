"""The dialling end of ``tcp://``: ``TcpConnection``.

Strategy.

*Sending.* Frames are written at once when the connection is idle and
coalesced in a burst, with a flusher thread taking what a burst leaves behind:
the sending half, ``posa.transport.tcp.writer``, says how and why.

*Receiving.* A read goes without waiting into a 64 KiB buffer of the reading
thread's, reused by every connection that thread reads (the decoder copies what
it keeps), so an idle connection holds no read buffer: 2,000 idle connections
cost 64 KiB per reading thread, not 125 MiB. It is fed to a ``FrameDecoder``;
a read that completes one frame returns it, and only the frames after the first
of a read wait, in ``_ready`` (newest first: ``pop()`` takes the oldest), so an
idle connection holds no queue of its own; nor a poll object, made by the first
blocking wait (and the writer's queue and condition: ``writer``, *Memory*).
A wait is a ``poll`` of the descriptor, never a read with a receive timeout of
the socket's own: a signal restarts such a read with its whole timeout, so
signals more often than it would keep it waiting past any deadline
(``posa.delivery.waiting``).

*Closing.* ``close()`` writes the queue within ``linger``, ends the sending side
and hands the socket to the reaper (``posa.transport.tcp.closing``), which closes it
once the listener has ended its side too. In a forked child a connection it
inherited is the parent's: its ``close()`` closes the child's descriptors only
(``closing.close_copies``).

*Threads.* A connection may be used by several threads (writes are serialised
by one lock). ``close()`` may come from any thread and wakes a blocked ``recv``
with ``Closed``, through a wake-up socket the connection makes on its first
blocking wait. The socket is released only once no thread waits on it.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time

from posa.errors import Closed, ProtocolError, Timeout, TransportError
from posa.transport.base import Options
from posa.transport.framing import GREETING, FrameDecoder
from posa.transport.tcp.closing import close_copies, reaper
from posa.transport.tcp.sockets import poll_ms
from posa.transport.tcp.writer import QueuedWriter

__all__ = ["TcpConnection"]

_CONNECTION_READ_SIZE = 64 * 1024  # one reused buffer per reading thread
_buffers = threading.local()
_NO_FRAMES: list[bytes] = []       # what a read of nothing completes; never changed
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _read_buffer() -> memoryview:
    """This thread's read buffer, made on its first read."""
    try:
        view: memoryview = _buffers.view
    except AttributeError:
        view = _buffers.view = memoryview(bytearray(_CONNECTION_READ_SIZE))
    return view


class TcpConnection(QueuedWriter):
    """A connection to a ``tcp://`` listener; see the module docstring."""

    def __init__(self, sock: socket.socket, address: str, options: Options) -> None:
        super().__init__(sock, address, options)
        self._decoder = FrameDecoder(self._max_frame)
        self._ready: list[bytes] = []         # frames read and not returned, newest first
        self._released = False                # the socket went to the reaper
        self._pid = os.getpid()               # a forked child's copy is not its to end
        self._wake: tuple[socket.socket, socket.socket] | None = None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._readable: select.poll | None = None     # made by the first blocking wait
        with self._lock:
            self._queue_locked().push_raw(GREETING)
            self._flush_locked()
            if self._out:
                self._kick_locked()
            self._last_write = 0.0   # the first frame goes out at once

    def fileno(self) -> int:
        """The socket's descriptor: readable when a frame may have arrived."""
        if self._closed:
            raise self._closed_error()
        return self._sock.fileno()

    def pending(self) -> bool:
        """True if frames are queued (``recv_nowait`` returns one at once)."""
        return bool(self._ready)

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``.

        Raises ``Closed`` after close, or once the listener closed the connection
        and every frame it sent was returned; ``TransportError`` if the listener
        broke the protocol."""
        if self._closed:
            raise self._closed_error()
        ready = self._ready
        if not ready:
            frames = self._fill()
            if len(frames) < 2:
                return frames[0] if frames else None
            frames.reverse()
            self._ready = ready = frames
        return ready.pop()

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame. Raises ``Timeout``, ``Closed``, ``TransportError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self.recv_nowait()
            if frame is not None:
                return frame
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no frame from {self.address} within {timeout} s")
            if self._out:                 # the answer may wait for what is queued
                with self._lock:
                    if not self._closing and self._failure is None:
                        self._flush_locked()
            self._wait_readable(remaining)

    def close(self) -> None:
        """Flush queued frames and end the connection, within ``linger``
        seconds; idempotent. Wakes a ``recv`` or ``send`` blocked in another
        thread, which raises ``Closed``.

        The socket stays open, discarding what arrives, until the listener has
        read everything and ended its side too (or ``linger`` ran out): closing
        it at once would make the kernel answer a late greeting or reply with a
        reset, which destroys frames the listener has not read yet."""
        if self._pid != os.getpid():  # inherited: the parent's connection (and lock,
            if not self._closing:     # which a thread absent here may hold)
                self._closing = self._closed = self._released = True
                close_copies(self._sock, *(self._wake or ()))
            return
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + self._linger
            if self._out and self._failure is None:
                self._linger_locked()
            self._closed = True
            self._discard_locked()
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the listener reset the connection already: nothing to end
            if self._wake is not None:
                self._wake[1].send(b"\0")
            if not self._waiting:
                self._release_locked()

    def __enter__(self) -> TcpConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpConnection to {self.address}{' closed' if self._closed else ''}>"

    # -- receiving -------------------------------------------------------------

    def _fill(self) -> list[bytes]:
        """Read once without waiting; the frames that completes, oldest first."""
        if self._failure is not None:
            raise self._failure_error()
        try:
            view = _buffers.view      # (``_read_buffer``, inline: one call less per read)
        except AttributeError:
            view = _read_buffer()
        try:
            size = self._sock.recv_into(view, 0, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return _NO_FRAMES
        except OSError as exc:
            with self._lock:
                raise self._broken_locked(exc) from None
        if not size:
            try:
                self._decoder.finish()
            except ProtocolError as exc:
                self._failure = (TransportError, f"{self.address}: {exc}")
            else:
                self._failure = (Closed, f"the listener at {self.address} closed the "
                                         "connection; connect again to go on")
            raise self._failure_error()
        try:
            frames = self._decoder.feed(view[:size])
        except ProtocolError as exc:
            frames = list(self._decoder.frames_before_failure)
            self._failure = (TransportError, f"{self.address} broke the posa tcp "
                                             f"protocol: {exc}")
            if not frames:
                raise self._failure_error() from None
            return frames
        self._last_write = 0.0            # after an answer, the next send is no burst
        return frames

    def _wait_readable(self, timeout: float | None) -> None:
        """Wait for input without the lock; ``Closed`` if closed meanwhile."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            readable = self._readable
            if readable is None:          # made on the first wait, as the wake-up
                readable = self._readable = select.poll()   # socket close() writes
                self._wake = socket.socketpair()
                readable.register(self._sock, select.POLLIN)
                readable.register(self._wake[0], select.POLLIN)
            self._waiting += 1
        try:
            readable.poll(poll_ms(timeout))
        finally:
            with self._lock:
                self._waiting -= 1
                self._release_if_unused_locked()
        if self._closed:
            raise self._closed_error()

    def _release_if_unused_locked(self) -> None:
        """Once closed, give up the socket when no thread waits on it any more."""
        if self._closed and not self._waiting:
            self._release_locked()

    def _release_locked(self) -> None:
        """Give the socket, once, to the reaper, which closes it when the listener
        has ended the connection too, or at the close deadline."""
        if self._released:
            return
        self._released = True
        if self._wake is not None:
            for end in self._wake:
                end.close()
        if self._failure is None:
            reaper.adopt(self._sock, self._close_deadline)
        else:
            self._sock.close()
