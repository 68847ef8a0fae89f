"""Closing tcp sockets without loss: the reaper.

A TCP socket closed while input is unread, or receiving input after it was
closed, answers with a reset, and a reset makes the other kernel discard what
its application has not read yet. So a connection's ``close()`` ends only its
sending side and hands the socket to the reaper thread, which discards input
until the listener ends its side too (or ``linger`` runs out) and only then
closes it; a program that sends, closes and exits keeps the reaper alive until
then. A closing listener hands its connections to the reaper the same way; a
listener that sees a connection's stream end has read all of it, and closes
that socket at once.

A forked child inherits its parent's sockets: the descriptors are the child's
copies, the connections the parent's. Ending one there (``shutdown``), writing
to it, reading it (the reaper's discarding reads) or unwatching it in a shared
poller would end, corrupt or take the parent's stream; so a connection or
listener closed in a process other than the one that made it only closes that
process's descriptors (``close_copies``).
"""
from __future__ import annotations

import atexit
import os
import select
import socket
import threading
import time

from posa.transport.tcp.sockets import poll_ms

__all__ = ["Reaper", "close_copies", "reaper"]

_DISCARD_SIZE = 64 * 1024          # the reaper's buffer for input it discards
_REAP_POLL = 0.05                  # s: how often the reaper takes new sockets in


class Reaper:
    """Closes the sockets that closed endpoints hand over (their sending side
    already ended) once the other side has ended too, or at their deadline,
    discarding what still arrives.

    One thread for the process, started when a socket is handed over and ended
    when none is left; at interpreter exit, it is given until the last deadline
    to finish, so that a program that sends, closes and exits loses nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[socket.socket, float] = {}
        self._thread: threading.Thread | None = None

    def adopt(self, sock: socket.socket, deadline: float) -> None:
        """Close ``sock`` once the other side ends its stream too, or at
        ``deadline`` (``time.monotonic()``), discarding what arrives meanwhile."""
        with self._lock:
            self._sockets[sock] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="posa-tcp-reaper")
                self._thread.start()

    def holds(self, sock: socket.socket) -> bool:
        """True while ``sock`` waits here to be closed."""
        with self._lock:
            return sock in self._sockets

    def finish(self, deadline: float | None = None) -> None:
        """Wait for the sockets handed over so far (until their deadlines), or
        until ``deadline`` (``time.monotonic()``) if that comes first: a command
        that must end by a time gives it (``posa.cli``)."""
        with self._lock:
            thread = self._thread
            last = max(self._sockets.values(), default=0.0) + _REAP_POLL
        if deadline is not None:
            last = min(last, deadline)
        if thread is not None:
            thread.join(max(0.0, last - time.monotonic()))

    def forget_parents(self) -> None:
        """(in a forked child) The sockets handed over so far are the parent's, and
        so is the thread reaping them: close this process's copies of their
        descriptors and start afresh (a thread of its own, made when the child
        hands a socket over)."""
        self._lock = threading.Lock()
        parents, self._sockets, self._thread = list(self._sockets), {}, None
        close_copies(*parents)

    def _run(self) -> None:
        sink = bytearray(_DISCARD_SIZE)
        while True:
            with self._lock:
                if not self._sockets:
                    self._thread = None
                    return
                waiting = list(self._sockets.items())
            poller = select.poll()
            for sock, _ in waiting:
                poller.register(sock, select.POLLIN)
            first = min(deadline for _, deadline in waiting)
            ready = {fd for fd, _ in poller.poll(
                poll_ms(min(_REAP_POLL, max(0.0, first - time.monotonic()))))}
            now = time.monotonic()
            for sock, deadline in waiting:
                done = now >= deadline
                if not done and sock.fileno() in ready:
                    try:
                        done = not sock.recv_into(sink)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        done = True   # reset: nothing more will come
                if done:
                    with self._lock:
                        del self._sockets[sock]
                    sock.close()


def close_copies(*sockets: socket.socket) -> None:
    """Close this process's descriptors of ``sockets``, inherited across fork, and
    nothing else: without ``shutdown`` the connections stay the parent's."""
    for sock in sockets:
        sock.close()


reaper = Reaper()
atexit.register(reaper.finish)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reaper.forget_parents)
