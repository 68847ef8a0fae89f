"""The accept path of a ``tcp://`` listener, and what it keeps per connection.

A listener accepts at most ``ACCEPT_BATCH`` connections per poll, so that a
flood of connections cannot starve the ones already open. A connection past
``max_connections`` is closed at once and counted in ``rejections`` as
``"too-many-connections"``; an accepted one is made non-blocking with
``TCP_NODELAY`` (a reply must not wait for Nagle's algorithm). ``Accepted`` is
the state a listener keeps for each connection it serves.
"""
from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterator

from posa.transport.framing import FrameDecoder, SendQueue
from posa.transport.tcp.address import format_address
from posa.transport.tcp.sockets import error_text

__all__ = ["ACCEPT_BATCH", "Accepted", "accept_ready"]

log = logging.getLogger("posa.transport.tcp")

ACCEPT_BATCH = 64                  # connections accepted per poll


class Accepted:
    """One accepted connection of a listener."""

    __slots__ = ("route", "sock", "remote", "decoder", "out", "watching_writes")

    def __init__(self, route: int, sock: socket.socket, remote: str,
                 decoder: FrameDecoder) -> None:
        self.route = route
        self.sock = sock
        self.remote = remote
        self.decoder = decoder
        self.out = SendQueue()            # what the kernel has not taken yet
        self.watching_writes = False      # registered for EVENT_WRITE


def accept_ready(listening: socket.socket, address: str, full: Callable[[], bool],
                 limit: int, rejections: Counter[str]) -> Iterator[tuple[socket.socket, str]]:
    """Accept the connections waiting at ``listening`` (the listener at
    ``address``), at most ``ACCEPT_BATCH``; yield each that may be served, with
    its address. While ``full()``, a connection is refused: closed and counted."""
    for _ in range(ACCEPT_BATCH):
        try:
            sock, remote = listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("%s: cannot accept a connection: %s", address, error_text(exc))
            return
        where = format_address(remote[0], remote[1])
        if full():
            sock.close()
            rejections["too-many-connections"] += 1
            log.warning("%s: refused a connection from %s: %d connections are "
                        "open (Options.max_connections)", address, where, limit)
            continue
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()  # reset before it could be used: nothing to serve
            continue
        yield sock, where
