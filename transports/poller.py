"""``Poller``: the readiness poller under the reactor and the tcp listener.

On Linux it is ``select.epoll`` itself. Elsewhere it is a stand-in built on
``selectors`` with the same calls (``register``, ``modify``, ``unregister``,
``poll``, ``fileno``, ``close``). Both report ``(fd, mask)`` pairs; ``READ``
and ``WRITE`` are the mask bits.

Why not ``selectors`` everywhere: the reactor and a listener poll once or twice
per request, and ``selectors.select`` wraps every event in a key lookup and a
tuple; a bare ``epoll.poll`` costs about half as much (1.5 vs 3.1 us here).

An error or hang-up on a descriptor comes back without ``READ`` or ``WRITE``
set; ``readable``/``writable`` count it as both, so that the next read or write
finds out what happened (as ``selectors`` does).
"""
from __future__ import annotations

import select
import selectors
from typing import Any

__all__ = ["Poller", "READ", "WRITE", "readable", "writable"]

if hasattr(select, "epoll"):
    READ: int = select.EPOLLIN
    WRITE: int = select.EPOLLOUT
    Poller: Any = select.epoll
else:                                            # pragma: no cover (not Linux)
    READ = selectors.EVENT_READ
    WRITE = selectors.EVENT_WRITE

    class Poller:   # type: ignore[no-redef]
        """``select.epoll``'s calls over the platform's ``selectors`` selector."""

        def __init__(self) -> None:
            self._selector = selectors.DefaultSelector()

        def fileno(self) -> int:
            return self._selector.fileno()

        def register(self, fd: int, mask: int) -> None:
            try:
                self._selector.register(fd, mask)
            except KeyError:
                # a number still held for a descriptor closed without being
                # unregistered (epoll forgets those by itself): take it over
                self._selector.modify(fd, mask)

        def modify(self, fd: int, mask: int) -> None:
            self._selector.modify(fd, mask)

        def unregister(self, fd: int) -> None:
            self._selector.unregister(fd)

        def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
            wait = None if timeout is None or timeout < 0 else timeout
            return [(key.fd, events) for key, events in self._selector.select(wait)]

        def close(self) -> None:
            self._selector.close()


def readable(mask: int) -> bool:
    """The event calls for a read (input, or an error to find out about)."""
    return bool(mask & ~WRITE)


def writable(mask: int) -> bool:
    """The event calls for a write (room, or an error to find out about)."""
    return bool(mask & ~READ)
