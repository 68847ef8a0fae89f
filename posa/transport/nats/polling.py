"""Where a client's socket is polled: the nats loop's poller, or a reactor's, lent.

A reactor that watches a ``nats://`` endpoint offers it a part of its poller
(``attach``, ``posa.transport.poller.PollerShare``), as it does a ``tcp://``
listener. The first endpoint of a client to be attached so lends the client's
socket to that reactor: the socket moves out of the nats loop's poller into the
reactor's, and a message is read, parsed and delivered in the reactor's thread,
with no hand-off between threads on its way in. ``reclaim`` (the endpoint is
detached or closed) moves it back. A socket dialled while lent (a failover) is
registered where its predecessor was. Every move happens holding the client's
I/O lock, which every read of the socket takes too, so no read is in flight
while the socket changes pollers.

A thread that waits for a frame may read the socket itself (``reading``): it
takes the reader's part (``take``), which leaves ``READ`` out of the poller's
mask until it gives the part back (``give``); meanwhile an event the poller
reported before is not read by the poller's thread, so every message is read
by the thread that waits. What it reads for the lending listener it signals
through ``nudge``, a descriptor of the watch's own in the reactor's poller.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from posa.transport.inproc.wakeup import ONE, wakeup_pair
from posa.transport.nats.loop import Loop
from posa.transport.poller import READ, WRITE, PollerType

__all__ = ["Watch", "Lender"]

_get_ident = threading.get_ident


class Lender(Protocol):
    def pending(self) -> bool: ...


class Watch:
    """The poller that watches a client's socket now, and with what mask."""

    __slots__ = ("loop", "handler", "io", "share", "lender", "sock", "mask", "reader",
                 "_nudge", "_nudge_w", "_nudged")

    def __init__(self, loop: Loop, handler: Callable[[socket.socket, int], None],
                 io: threading.RLock) -> None:
        self.loop, self.handler, self.io = loop, handler, io    # handler: under ``io``
        self.share: PollerType | None = None    # a reactor's, while lent
        self.lender: Lender | None = None
        self.sock: socket.socket | None = None
        self.mask = 0
        self.reader = 0                         # the thread that reads ``sock`` as it waits
        self._nudge = self._nudge_w = -1        # in the reactor's poller, while lent
        self._nudged = False

    @property
    def lent(self) -> bool:
        return self.share is not None

    def add(self, sock: socket.socket, mask: int) -> None:
        self.sock, self.mask, self.reader = sock, mask, 0
        self._register(sock, mask)

    def set_mask(self, sock: socket.socket, mask: int) -> None:
        if sock is self.sock and mask != self.mask:
            self.mask = mask
            self._modify(sock)

    def _modify(self, sock: socket.socket) -> None:
        mask = self.mask & ~READ if self.reader else self.mask
        share = self.share
        if share is None:
            self.loop.modify(sock.fileno(), mask)
            return
        try:                # (not contextlib.suppress: twice a request)
            share.modify(sock.fileno(), mask)
        except (OSError, ValueError, KeyError):
            pass            # a closed reactor

    def remove(self, sock: socket.socket) -> None:
        if sock is self.sock:
            self._unregister(sock)
            self.sock, self.reader = None, 0

    # -- a waiting thread reads (posa.transport.nats.reading; under the I/O lock) ---------
    def take(self, sock: socket.socket) -> bool:
        """This thread reads ``sock`` until ``give``; False if another thread does."""
        if self.reader or sock is not self.sock:
            return False
        self.reader = _get_ident()
        self._modify(sock)
        return True

    def give(self, sock: socket.socket) -> None:
        if self.reader == _get_ident() and sock is self.sock:
            self.reader = 0
            self._modify(sock)

    def nudge(self) -> None:
        """The lending listener has frames a waiting thread read: wake its reactor."""
        if self.share is not None and self.lender is not None and not self._nudged \
                and self._nudge >= 0 and self.lender.pending():
            self._nudged = True
            with contextlib.suppress(OSError):
                os.write(self._nudge_w, ONE)

    # -- lending -------------------------------------------------------------------------
    def lend(self, share: PollerType, lender: Lender) -> bool:
        """Move the socket into ``share``; False (nothing moved) if it is lent."""
        if self.share is not None:
            return False
        sock = self.sock
        if sock is not None:
            self._unregister(sock)
        self.share, self.lender = share, lender
        if sock is not None:
            self._register(sock, self.mask)
        self._nudge, self._nudge_w = wakeup_pair()
        self._nudged = False
        share.register(self._nudge, READ)
        return True

    def reclaim(self, lender: object) -> None:
        """Move the socket back to the loop, if ``lender`` lent it."""
        if self.lender is not lender or self.share is None:
            return
        sock, nudge = self.sock, self._nudge
        if sock is not None:
            self._unregister(sock)
        with contextlib.suppress(OSError, ValueError, KeyError):   # a closed reactor
            self.share.unregister(nudge)
        os.close(nudge)
        if self._nudge_w != nudge:
            os.close(self._nudge_w)
        self._nudge = self._nudge_w = -1
        self.share = self.lender = None
        if sock is not None:
            self._register(sock, self.mask)

    def unread(self, sock: socket.socket) -> bool:
        """Bytes wait in the lent socket: its server spoke; the reactor is busy."""
        if self.share is None:
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def serve(self, fd: int, mask: int) -> None:
        """An event of the lent socket, from the reactor's poller (or its nudge);
        the caller holds ``io``."""
        sock = self.sock
        if self.share is None:
            return
        if fd == self._nudge:
            self._nudged = False
            with contextlib.suppress(OSError):
                os.read(fd, 4096)
        elif sock is not None and sock.fileno() == fd:
            self._deliver(sock, mask)

    def _deliver(self, sock: socket.socket, mask: int) -> None:
        reader = self.reader
        if reader and reader != _get_ident():    # the waiting thread reads it
            mask &= WRITE
            if not mask:
                return
        self.handler(sock, mask)

    def _register(self, sock: socket.socket, mask: int) -> None:
        if self.reader:
            mask &= ~READ
        if self.share is not None:
            self.share.register(sock.fileno(), mask)
        else:
            self.loop.watch(sock.fileno(), mask, lambda got: self._polled(sock, got))

    def _polled(self, sock: socket.socket, mask: int) -> None:
        with self.io:
            if self.share is None:      # not an event from before it was lent
                self._deliver(sock, mask)

    def _unregister(self, sock: socket.socket) -> None:
        if self.share is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):   # a closed reactor
                self.share.unregister(sock.fileno())
        else:
            self.loop.unwatch(sock.fileno())
