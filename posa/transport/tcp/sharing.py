"""A ``tcp://`` listener served from its reactor's poller: ``SharedPolling``.

On its own a listener polls an inner poller that holds its listening socket,
its connections and its wake-up socket; a reactor watches that poller's one
descriptor. Every request then costs two polls (the reactor's, then the
listener's inner one) and the kernel a nested wake-up. A reactor that offers
its poller (``PollerShare``, see ``posa.runtime.reactor``) takes the
listener's descriptors over instead: ``attach`` moves them into the reactor's
poller, the reactor hands each event to ``serve(fd, mask)`` (accept, flush,
read: what one round of the inner poll would do for that descriptor) and then
calls its drain callback, whose ``recv_nowait`` serves the queued frames and
never polls. ``detach`` (the reactor lets the listener go) moves them back;
``close`` while attached takes them out of the reactor's poller first, so no
closed or reaped socket stays watched. Attaching and serving take the I/O
lock, as every poll does.

A subclass whose poll does more than serve events (``TlsListener`` expires
handshakes after each poll) keeps its own poller: ``shared_poll = False``.
"""
from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from posa.transport.poller import READ, WRITE, PollerType

__all__ = ["SharedPolling"]


class SharedPolling:
    """``attach``/``detach``/``serve`` of ``TcpListener`` (a base class of it)."""

    shared_poll: ClassVar[bool] = True   # False: always poll an inner poller
    _poller: PollerType
    _own: PollerType | None               # the inner poller while attached, else None
    _owners: dict[int, Any]
    _io_lock: threading.Lock
    _closed: bool
    _accepting: bool
    _now: float
    _sock: Any

    def _event(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def _after_events(self, now: float) -> None:
        raise NotImplementedError

    def attach(self, share: PollerType) -> bool:
        """Move every descriptor into ``share``; False (nothing done) if this
        listener keeps its own poller or is closed."""
        if not self.shared_poll:
            return False
        with self._io_lock:
            if self._closed or self._own is not None:
                return False
            own = self._poller
            for fd, mask in self._watched():
                own.unregister(fd)
                share.register(fd, mask)
            self._own, self._poller = own, share
            return True

    def detach(self) -> None:
        """Move every descriptor back to the listener's own poller."""
        with self._io_lock:
            own = self._own
            if own is None or self._closed:
                return
            share = self._poller
            for fd, mask in self._watched():
                try:
                    share.unregister(fd)
                except (OSError, ValueError, KeyError):
                    pass    # the reactor's poller is closed already
                own.register(fd, mask)
            self._own, self._poller = None, own

    def serve(self, fd: int, mask: int) -> None:
        """One event of the reactor's poller for descriptor ``fd``."""
        with self._io_lock:
            if self._closed:
                return
            now = self._now = time.monotonic()
            self._event(fd, mask)
            self._after_events(now)

    def _release_share(self) -> None:
        """(closing, I/O lock held) Take every descriptor out of the reactor's poller."""
        own = self._own
        if own is None:
            return
        share = self._poller
        if share is not own:    # (it is: a close interrupted after the swap below)
            for fd, _ in self._watched():
                try:
                    share.unregister(fd)
                except (OSError, ValueError, KeyError):
                    pass    # closed already: the poller forgot it by itself
            self._poller = own
        self._own = None

    def _watched(self) -> list[tuple[int, int]]:
        """Every descriptor the poller watches now, with its mask."""
        watched = []
        listening = self._sock.fileno()
        for fd, owner in self._owners.items():
            if fd == listening and not self._accepting:
                continue
            writes = getattr(owner, "watching_writes", False)
            watched.append((fd, READ | WRITE if writes else READ))
        return watched
