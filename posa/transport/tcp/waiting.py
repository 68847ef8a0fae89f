"""Waiting for room to write on a listener's connections.

Two waits of a ``TcpListener`` that leave its inner poller alone: before a
``send`` while ``high_water_mark`` entries wait for one connection (at most
``send_timeout``), and before ``close`` while replies are queued (at most
``linger``). Both poll the sockets with ``select.poll`` and flush through the
listener's own ``flush``, which drops a connection that failed.
"""
from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Mapping

from posa.errors import Timeout
from posa.transport.base import Route
from posa.transport.tcp.accepting import Accepted
from posa.transport.tcp.sockets import poll_ms

__all__ = ["wait_for_room", "flush_before_close"]

log = logging.getLogger("posa.transport.tcp")


def wait_for_room(peer: Accepted, peers: Mapping[Route, Accepted], limit: int,
                  send_timeout: float | None, flush: Callable[[Accepted], None],
                  where: str) -> bool:
    """Flush ``peer`` until fewer than ``limit`` entries wait; False if it was
    dropped meanwhile. Raises ``Timeout`` after ``send_timeout``."""
    deadline = None if send_timeout is None else time.monotonic() + send_timeout
    poller = select.poll()
    poller.register(peer.sock, select.POLLOUT)
    while len(peer.out) >= limit:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"cannot send on connection {peer.route} of {where}: "
                          f"{len(peer.out)} frames wait for a peer that has not read for "
                          f"{send_timeout} s (Options.high_water_mark); the frame was "
                          "not sent")
        poller.poll(poll_ms(remaining))
        flush(peer)
        if peer.route not in peers:
            return False
    return True


def flush_before_close(peers: Mapping[Route, Accepted], deadline: float, linger: float,
                       flush: Callable[[Accepted], None], where: str) -> None:
    """Flush every connection's queue until ``deadline`` (``time.monotonic()``)."""
    while True:
        waiting = [peer for peer in peers.values() if peer.out]
        remaining = deadline - time.monotonic()
        if not waiting:
            return
        if remaining <= 0:
            log.warning("%s: closed with frames unsent to %d connections after %s s "
                        "(Options.linger)", where, len(waiting), linger)
            return
        poller = select.poll()
        for peer in waiting:
            poller.register(peer.sock, select.POLLOUT)
        poller.poll(poll_ms(remaining))
        for peer in waiting:
            if peer.route in peers:
                flush(peer)
