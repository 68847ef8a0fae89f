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
"""
from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from posa.transport.nats.loop import Loop
from posa.transport.poller import PollerType

__all__ = ["Watch"]


class Watch:
    """The poller that watches a client's socket now, and with what mask."""

    __slots__ = ("loop", "handler", "share", "lender", "sock", "mask")

    def __init__(self, loop: Loop, handler: Callable[[socket.socket, int], None]) -> None:
        self.loop, self.handler = loop, handler
        self.share: PollerType | None = None    # a reactor's, while lent
        self.lender: object | None = None
        self.sock: socket.socket | None = None
        self.mask = 0

    @property
    def lent(self) -> bool:
        return self.share is not None

    def add(self, sock: socket.socket, mask: int) -> None:
        self.sock, self.mask = sock, mask
        self._register(sock, mask)

    def set_mask(self, sock: socket.socket, mask: int) -> None:
        if sock is self.sock and mask != self.mask:
            self.mask = mask
            if self.share is not None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self.share.modify(sock.fileno(), mask)
            else:
                self.loop.modify(sock.fileno(), mask)

    def remove(self, sock: socket.socket) -> None:
        if sock is self.sock:
            self._unregister(sock)
            self.sock = None

    def lend(self, share: PollerType, lender: object) -> bool:
        """Move the socket into ``share``; False (nothing moved) if it is lent."""
        if self.share is not None:
            return False
        sock = self.sock
        if sock is not None:
            self._unregister(sock)
        self.share, self.lender = share, lender
        if sock is not None:
            self._register(sock, self.mask)
        return True

    def reclaim(self, lender: object) -> None:
        """Move the socket back to the loop, if ``lender`` lent it."""
        if self.lender is not lender or self.share is None:
            return
        sock = self.sock
        if sock is not None:
            self._unregister(sock)
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
        """An event of the lent socket, from the reactor's poller."""
        sock = self.sock
        if sock is not None and self.share is not None and sock.fileno() == fd:
            self.handler(sock, mask)

    def _register(self, sock: socket.socket, mask: int) -> None:
        if self.share is not None:
            self.share.register(sock.fileno(), mask)
        else:
            self.loop.watch(sock.fileno(), mask, lambda got: self._polled(sock, got))

    def _polled(self, sock: socket.socket, mask: int) -> None:
        if self.share is None:          # not an event from before it was lent
            self.handler(sock, mask)

    def _unregister(self, sock: socket.socket) -> None:
        if self.share is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):   # a closed reactor
                self.share.unregister(sock.fileno())
        else:
            self.loop.unwatch(sock.fileno())
