"""Closing a ``tcp://`` listener: ``ListenerClosing``.

``close()`` flushes, ends the sending side of every connection and hands the
sockets to the reaper (``posa.transport.tcp.closing``); a connection whose
stream ended has been read to its end and is closed at once. In a forked
child, closing a listener it inherited closes the child's descriptors only
(``closing.close_copies``).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from posa.transport.base import Route
from posa.transport.poller import PollerType
from posa.transport.tcp.closing import close_copies, reaper
from posa.transport.tcp.guard import Guard
from posa.transport.tcp.waiting import flush_before_close

if TYPE_CHECKING:
    from collections import deque

    from posa.transport.tcp.accepting import Accepted

__all__ = ["ListenerClosing"]


class ListenerClosing:
    """``close`` of ``TcpListener`` (a base class of it)."""

    if TYPE_CHECKING:       # what the listener provides
        address: str
        _sock: socket.socket
        _wake_r: socket.socket
        _wake_w: socket.socket
        _poller: PollerType
        _own: PollerType | None
        _guard: Guard
        _peers: dict[Route, Accepted]
        _ready: deque[tuple[int, bytes]]
        _io_lock: threading.Lock
        _close_lock: threading.Lock
        _closed: bool
        _ended: bool                      # closed, and every step of close done
        _pid: int
        _linger: float

        def _wake_up(self) -> None: ...
        def _release_share(self) -> None: ...
        def _flush(self, peer: Accepted) -> None: ...

    def close(self) -> None:
        """Stop listening, flush queued replies and end every connection, within
        ``linger`` seconds. Idempotent; wakes a ``recv`` blocked in another
        thread, which raises ``Closed``. Frames not yet received are dropped.

        A close interrupted (``KeyboardInterrupt``) is finished by the next one:
        each step can run again, and only the last marks the listener ended."""
        if self._pid != os.getpid():    # inherited: the parent's connections (and
            if not self._ended:         # locks, which a thread absent here may hold)
                self._closed = True
                close_copies(self._sock, self._wake_r, self._wake_w,
                             *(peer.sock for peer in self._peers.values()))
                (self._poller if self._own is None else self._own).close()
                self._ended = True
            return
        with self._close_lock:
            if self._ended:
                return
            self._closed = True
        self._wake_up()
        self._guard.close()
        with self._io_lock:
            if not self._ended:         # (another thread's close may have ended it)
                self._finish_close()

    def _finish_close(self) -> None:
        """(I/O lock held) Every step of close that touches the sockets."""
        self._release_share()
        deadline = time.monotonic() + self._linger
        flush_before_close(self._peers, deadline, self._linger, self._flush,
                           self.address)
        self._end_connections(deadline)
        self._ready.clear()
        self._poller.close()
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self._ended = True

    def _end_connections(self, deadline: float) -> None:
        """End the sending side of every connection and hand it to the reaper
        (which closes it by ``deadline``); one a close interrupted before ended
        already (the reaper holds it, or it is closed) is only forgotten."""
        peers = self._peers
        for route in list(peers):
            sock = peers[route].sock
            if sock.fileno() >= 0 and not reaper.holds(sock):
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    sock.close()    # reset already: nothing to deliver
                else:
                    reaper.adopt(sock, deadline)  # see posa.transport.tcp.closing
            del peers[route]
