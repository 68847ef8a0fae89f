"""The accept path of a ``tcp://`` listener, and what it keeps per connection.

A listener accepts at most ``ACCEPT_BATCH`` connections per poll, so that a
flood of connections cannot starve the ones already open. Each accepted
connection is first offered to ``admit`` (the listener's connection hygiene:
it may shed older connections to make room, or refuse this one, which is then
closed at once); one that may be served is made non-blocking with
``TCP_NODELAY`` (a reply must not wait for Nagle's algorithm). An ``accept``
that fails for want of descriptors is handed to ``failed``, which sheds a
connection (try again) or pauses accepting (stop); so does any other failure
that is not a connection aborted before it was accepted. ``Accepted`` is the
state a listener keeps for each connection it serves; ``AcceptPath``, the base
class of ``TcpListener``, holds the listener's side of it: accepting, making
room, the back-off, the sweep of connections past a deadline (a listener of
another stream transport built on ``TcpListener`` inherits all of it).
"""
from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from posa.transport.base import Route
from posa.transport.framing import FrameDecoder, SendQueue
from posa.transport.hygiene import Hygiene, Tracked
from posa.transport.poller import READ, PollerType
from posa.transport.tcp.address import format_address
from posa.transport.tcp.guard import OUT_OF_DESCRIPTORS, Guard
from posa.transport.tcp.sockets import error_text

__all__ = ["ACCEPT_BATCH", "Accepted", "accept_ready", "AcceptPath"]

log = logging.getLogger("posa.transport.tcp")

ACCEPT_BATCH = 64                  # connections accepted per poll
_ABORTED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


class Accepted:
    """One accepted connection of a listener."""

    __slots__ = ("route", "sock", "remote", "decoder", "out", "watching_writes", "tracked")

    def __init__(self, route: int, sock: socket.socket, remote: str,
                 decoder: FrameDecoder, tracked: Tracked) -> None:
        self.route = route
        self.sock = sock
        self.remote = remote
        self.decoder = decoder
        self.out = SendQueue()            # what the kernel has not taken yet
        self.watching_writes = False      # registered for EVENT_WRITE
        self.tracked = tracked            # its hygiene record (posa.transport.hygiene)


def accept_ready(listening: socket.socket, address: str, admit: Callable[[str, str], bool],
                 failed: Callable[[OSError], bool]) -> Iterator[tuple[socket.socket, str, str]]:
    """Accept the connections waiting at ``listening`` (the listener at
    ``address``), at most ``ACCEPT_BATCH``; yield each that ``admit(host,
    where)`` lets be served, with its address and host. When ``accept`` fails
    (out of descriptors, say), ``failed(error)`` says whether to try again."""
    for _ in range(ACCEPT_BATCH):
        try:
            sock, remote = listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _ABORTED:
                log.debug("%s: a connection ended before it was accepted: %s", address,
                          error_text(exc))
                continue
            if failed(exc):
                continue
            return
        where = format_address(remote[0], remote[1])
        if not admit(remote[0], where):
            sock.close()
            continue
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()  # reset before it could be used: nothing to serve
            continue
        yield sock, where, remote[0]


class AcceptPath:
    """The accept path and the hygiene sweep of ``TcpListener`` (its base class):
    they run with the listener's I/O lock held."""

    address: str
    _sock: socket.socket
    _poller: PollerType
    _guard: Guard
    _hygiene: Hygiene
    _now: float
    _accepting: bool
    _shed_for_descriptor: bool
    _max_frame: int
    _ids: Iterator[int]
    _peers: dict[Route, Accepted]
    _owners: dict[int, Any]

    def _drop(self, peer: Accepted, cause: str | None, detail: str,
              graceful: bool = False) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        self._shed_for_descriptor = False
        guard, hygiene = self._guard, self._hygiene
        for sock, where, host in accept_ready(self._sock, self.address, self._admit,
                                              self._accept_failed):
            try:
                self._poller.register(sock, READ)
            except OSError as exc:     # the kernel is out of room for watches
                sock.close()
                guard.refuse("accept-failed", "%s: cannot watch a connection from %s: %s",
                             self.address, where, error_text(exc))
                continue
            route = next(self._ids)
            peer = Accepted(route, sock, where, FrameDecoder(self._max_frame),
                            hygiene.open(route, host, self._now))
            self._peers[route] = peer
            self._owners[sock.fileno()] = peer
            guard.accepted()
        guard.arm(self._now)

    def _admit(self, host: str, where: str) -> bool:
        """Make room for a connection from ``where``; False: refuse it."""
        shed, admitted = self._guard.admit(host, where, self._now)
        for route, cause in shed:
            self._shed(route, cause)
        return admitted

    def _accept_failed(self, exc: OSError) -> bool:
        """``accept`` failed: shed one connection for a descriptor (once per
        poll) and try again, or pause accepting."""
        now = self._now
        if exc.errno in OUT_OF_DESCRIPTORS and not self._shed_for_descriptor:
            self._shed_for_descriptor = True
            victim = self._hygiene.shed_one(now)
            if victim is not None:
                self._shed(*victim)
                return True
        cause = "out-of-descriptors" if exc.errno in OUT_OF_DESCRIPTORS else "accept-failed"
        self._guard.pause(cause, error_text(exc), now)
        self._poller.unregister(self._sock)
        self._accepting = False
        return False

    def _sweep(self, now: float) -> None:
        """Shed the connections past a deadline; accept again after a back-off."""
        for route, cause in self._hygiene.expired(now):
            self._shed(route, cause)
        if self._guard.resume(now) and not self._accepting:
            self._poller.register(self._sock, READ)
            self._accepting = True
            self._accept()
        self._guard.arm(now)

    def _shed(self, route: Route, cause: str) -> None:
        peer = self._peers.get(route)
        if peer is not None:
            self._drop(peer, cause, self._guard.detail(cause),
                       graceful=cause == "idle-timeout")
