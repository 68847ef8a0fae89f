"""A thread that waits for a frame reads the client's socket itself.

The socket is polled by the nats loop's thread, or by a reactor's it is lent to
(``polling``). A frame read there reaches a thread blocked in a connection's
``wait_readable`` through the connection's descriptor: one more thread woken
per message, and on a busy machine a wait for a processor, on the path of
every request. Instead, a thread about to wait for its connection takes the
reader's part of the socket (``Watch.take``, under the client's I/O lock),
polls the socket and its connection's descriptor, and when the socket is
readable reads, parses and delivers what came (to its own connection, and to
any other subscription, each signalled as usual), until its connection has a
frame or has ended, or the time is up. Then it gives the part back, and the
poller's thread reads again. Only one thread reads at a time; the others wait
on their descriptors as before.

The reader polls its connection's descriptor beside the socket: the
connection's end (its link lost on another thread: the ping lease) and its
close wake it there, and so does a frame another thread delivered to it.
"""
from __future__ import annotations

import math
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Protocol

from posa.transport.base import POLL_SLICE, wait_fd
from posa.transport.nats.loop import log, pid

if TYPE_CHECKING:
    from posa.transport.nats.client import Client

__all__ = ["wait", "Waiter", "POSSIBLE"]

POSSIBLE = hasattr(select, "poll") and hasattr(select, "epoll")   # epoll_ctl from any thread
_IN = getattr(select, "POLLIN", 1)
_local = threading.local()
_get_ident = threading.get_ident
_KEEP = 64           # poll objects kept per thread, one per pair (one descriptor:
#                      posa.transport.base.wait_fd's)


class Waiter(Protocol):
    """A connection as ``wait`` sees it; ``reading`` and ``others`` change
    under the client's I/O lock, under which the connection's callback runs."""
    reading: int        # the thread that reads the socket for it, while one does
    others: int         # threads waiting on its descriptor meanwhile

    def arrived(self) -> bool: ...
    def fileno(self) -> int: ...


def wait(client: Client, waiter: Waiter, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``waiter.arrived()``, reading the client's
    socket in this thread unless another thread does (then waiting on the
    waiter's descriptor); ``arrived()`` at the end (it may be spurious)."""
    wake = waiter.fileno()
    if wake < 0:
        return True                     # closed
    if POSSIBLE:
        with client.io:
            sock = client.sock
            if sock is not None and client.connected and client.pid == pid() \
                    and client.watch.take(sock):
                waiter.reading = _get_ident()
            else:
                sock = None
                waiter.others += 1
        if sock is not None:
            return _read_until(client, sock, waiter, wake, timeout)
        try:        # a frame delivered before ``others`` counted this thread is ready
            return waiter.arrived() or wait_fd(wake, timeout) or waiter.arrived()
        finally:
            with client.io:
                waiter.others -= 1
    return wait_fd(wake, timeout)


def _read_until(client: Client, sock: socket.socket, waiter: Waiter, wake: int,
                timeout: float) -> bool:
    try:
        poller = _poller(sock.fileno(), wake)
        deadline = time.monotonic() + timeout
        arrived = waiter.arrived
        while not arrived():
            left = deadline - time.monotonic()
            if left <= 0.0 or sock is not client.sock:
                return arrived()
            if poller.poll(math.ceil((left if left < POLL_SLICE else POLL_SLICE) * 1000)):
                with client.io:
                    if sock is client.sock:
                        _read(client, sock)
                    client.watch.nudge()
        return True
    finally:
        with client.io:
            waiter.reading = 0
            client.watch.give(sock)


def _read(client: Client, sock: socket.socket) -> None:
    try:
        client.read(sock)
    except Exception:       # a callback's bug: the waiting thread is not its victim
        log.exception("the nats:// client: a callback raised on a waiting thread; "
                      "going on")


def _poller(fd: int, wake: int) -> select.poll:
    try:
        pollers: dict[tuple[int, int], select.poll] = _local.pollers
    except AttributeError:
        pollers = _local.pollers = {}
    poller = pollers.get((fd, wake))
    if poller is None:
        if len(pollers) >= _KEEP:
            pollers.clear()
        poller = pollers[(fd, wake)] = select.poll()
        poller.register(fd, _IN)
        if wake >= 0:
            poller.register(wake, _IN)
    return poller
