"""What a ZeroMQ listener and connection share: receiving cheaply, waiting, closing.

Strategy
--------
* A receive that finds nothing is what costs most: pyzmq raises ``zmq.Again``
  and builds a traceback, the price of four receives or more, where an
  ``EVENTS`` check costs two. Whoever drains an endpoint receives until
  nothing comes, so every drain ends in one such receive. After a lone frame
  (the previous drain held one frame too: request-reply), the endpoint asks
  ``EVENTS`` before receiving again; in a burst it receives at once and pays
  the exception once per burst. A receive or check that found nothing also
  answers ``pending()`` until the socket is used again: the descriptor fires
  for the next frame then, and ``pending()`` need not ask.
* Only when a call would block does an endpoint poll, and then it polls
  its socket together with a wake-up pipe: ``close()`` from another thread sets
  a flag and writes the pipe; the blocked thread wakes, closes the socket itself
  (ZeroMQ sockets must never be used by two threads at once) and raises
  ``Closed``. ``close()`` with no thread blocked closes the socket at once.
  Apart from that one case, an endpoint belongs to one thread at a time.
* In a forked child every endpoint the parent opened is closed at the fork
  (``posa.transport.zmq.inherited``): libzmq's I/O thread is not in the child.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import zmq

from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options
from posa.transport.refusals import RefusalLog
from posa.transport.zmq.context import note_linger
from posa.transport.zmq.inherited import opened, parents
from posa.transport.zmq.sockets import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    POLLOUT,
    RCVMORE,
    PollItems,
    ZMQError,
    poll,
    socket_error,
)

__all__ = ["Endpoint"]

_log = logging.getLogger("posa.transport.zmq")


class Endpoint:
    """What listener and connection share: closing, waking, waiting, polling."""

    address: str
    listening = False                      # a listener's (bound) socket

    def __init__(self, address: str, sock: zmq.Socket[bytes], options: Options) -> None:
        self.address = address
        self.rejections: Counter[str] = Counter()
        self._refusals = RefusalLog(_log)
        self._options = options
        self._sock = sock
        # pyzmq types get() as int | bytes, as a few options are bytes; the
        # options asked here (EVENTS, RCVMORE) are ints
        self._get = cast(Callable[[int], int], sock.get)
        self._fd: int = sock.fileno()
        self._lock = threading.Lock()
        self._closed = False
        self._sock_closed = False
        self._blocked = 0                  # threads inside a blocking wait
        self._idle = False                 # nothing to receive, socket untouched since
        self._run = 0                      # frames received since the last empty receive
        self._lone = False                 # the run before that was a single frame
        self._wake: tuple[int, int] | None = None   # pipe, made on first blocking wait
        self._poll_in: PollItems = []      # zmq_poll items: socket + pipe
        self._poll_out: PollItems = []
        self._parents = False              # (in a forked child) the parent's
        opened(self)

    def _closed_error(self) -> Closed:
        if self._parents:
            return Closed(parents(self.address))
        return Closed(f"{self.address} is closed; open a new endpoint to go on")

    def _forked(self) -> None:
        """(in a forked child, from the fork hook) The parent's endpoint: closed
        here without a call to libzmq (the socket is left to the parent) and
        without a write to the wake-up pipe (the parent's too), whose copies are
        closed; the lock is new (a thread of the parent may have held it)."""
        self._lock = threading.Lock()
        self._closed = self._sock_closed = self._parents = True
        if self._wake is not None:
            for fd in self._wake:
                if fd >= 0:     # (-1: closed by a close that was interrupted)
                    os.close(fd)
            self._wake = None
        self._poll_in = self._poll_out = []

    def fileno(self) -> int:
        """The socket's descriptor; edge-triggered: drain ``recv_nowait`` first."""
        if self._closed:
            raise self._closed_error()
        return self._fd

    def pending(self) -> bool:
        """True if ``recv_nowait`` may return a frame without the descriptor firing."""
        if self._closed:
            raise self._closed_error()
        if self._idle:
            return False
        try:
            ready = bool(self._get(EVENTS) & POLLIN)
        except ZMQError as exc:
            raise socket_error("poll", self.address, exc) from None
        if not ready:
            self._drained()     # as a receive that found nothing: the run ends
        return ready

    def _nothing_left(self) -> bool:
        """After a lone frame of a lone-frame drain, whether ``EVENTS`` says that
        nothing is left to receive (see the module docstring)."""
        return self._run == 1 and self._lone and not self._get(EVENTS) & POLLIN

    def _drained(self) -> None:
        """A receive found nothing: the run of frames ends."""
        self._idle = True
        self._lone = self._run == 1
        self._run = 0

    def close(self) -> None:
        """Close; a thread blocked in this endpoint wakes with ``Closed``. Idempotent;
        a close interrupted (``KeyboardInterrupt``) is finished by the next one."""
        with self._lock:
            self._closed = True
            if self._sock_closed:
                return
            if self._blocked and self._wake is not None:
                os.write(self._wake[1], b"!")  # (again after an interrupted close)
                return                         # the blocked thread closes the socket
            self._close_socket()

    def _close_socket(self) -> None:
        """Close the socket, then the wake-up pipe; each step can run again (a
        descriptor is forgotten before it is closed: never closed twice)."""
        self._sock.close()
        wake = self._wake
        if wake is not None:
            if wake[0] >= 0:
                self._wake = (-1, wake[1])
                os.close(wake[0])
            self._wake = None
            os.close(wake[1])
        note_linger(self._options.linger)
        self._refusals.flush()      # what was only counted: no later refusal will log it
        self._sock_closed = True

    def _enter_wait(self) -> None:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._wake is None:
                self._wake = os.pipe()
                self._poll_in = [(self._sock, POLLIN), (self._wake[0], POLLIN)]
                self._poll_out = [(self._sock, POLLOUT), (self._wake[0], POLLIN)]
            self._blocked += 1

    def _leave_wait(self) -> None:
        with self._lock:
            self._blocked -= 1
            if self._closed and not self._blocked and not self._sock_closed:
                self._close_socket()

    def _wait(self, items: PollItems, deadline: float | None) -> bool:
        """Between ``_enter_wait`` and ``_leave_wait``: poll ``items`` (the socket
        and the wake-up pipe) until the socket is ready (True) or ``deadline``
        passes (False). Raises ``Closed``. Polling first, rather than trying a
        receive, spares the ``zmq.Again`` exception: it costs pyzmq ~6 us."""
        sock = self._sock
        while True:
            ms = -1 if deadline is None else max(
                0, math.ceil((deadline - time.monotonic()) * 1000))
            try:
                ready = poll(items, ms)
            except ZMQError as exc:
                raise socket_error("poll", self.address, exc) from None
            if self._closed:
                raise self._closed_error()
            for polled, _ in ready:
                if polled is sock:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + max(timeout, 0.0)

    def _drop_garbage(self, source: str, parts: int) -> None:
        """Drain the rest of a multi-part message (``parts`` frames of it read so
        far, not counting a ROUTER's identity frame) and count it; logged once
        per interval (``posa.transport.refusals``)."""
        while self._get(RCVMORE):
            self._sock.recv(NOBLOCK)
            parts += 1
        self.rejections["garbage"] += 1
        self._refusals.refused("garbage", "%s dropped a message of %d frames from %s "
                               "(expected one frame); %d dropped so far", self.address,
                               parts, source, self.rejections["garbage"])

    def _too_big(self, frame: bytes) -> TransportError:
        return TransportError(f"frame of {len(frame)} bytes exceeds max_frame_size "
                              f"({self._options.max_frame_size}) of {self.address}; "
                              "split it or raise Options.max_frame_size on both sides")

    def _send_timeout(self) -> Timeout:
        return Timeout(f"could not send to {self.address} within "
                       f"{self._options.send_timeout:g} s: nobody accepts frames there "
                       "(no listener, or its queue is full); check the address or raise "
                       "Options.send_timeout")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.address} {state}>"
