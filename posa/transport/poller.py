"""``Poller``: the readiness poller under the reactor and the tcp listener.

On Linux it is ``select.epoll`` itself. Elsewhere it is ``SelectorPoller``, built
on ``selectors`` with the same calls (``register``, ``modify``, ``unregister``,
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["Poller", "PollerType", "PollerShare", "SelectorPoller", "READ", "WRITE",
           "readable", "writable"]

READ: int = getattr(select, "EPOLLIN", selectors.EVENT_READ)
WRITE: int = getattr(select, "EPOLLOUT", selectors.EVENT_WRITE)


class PollerType(Protocol):
    """The calls of ``select.epoll`` that posa uses: what a ``Poller()`` offers."""

    def fileno(self) -> int: ...

    def register(self, fd: FileDescriptorLike, mask: int, /) -> None: ...

    def modify(self, fd: FileDescriptorLike, mask: int, /) -> None: ...

    def unregister(self, fd: FileDescriptorLike, /) -> None: ...

    def poll(self, timeout: float = -1, /) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...


class SelectorPoller:
    """``select.epoll``'s calls and masks over the platform's ``selectors``
    selector: the poller where there is no epoll (tested on Linux as well)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def fileno(self) -> int:
        return self._selector.fileno()

    def register(self, fd: FileDescriptorLike, mask: int) -> None:
        try:
            self._selector.register(fd, _events(mask))
        except KeyError:
            # a number still held for a descriptor closed without being
            # unregistered (epoll forgets those by itself): drop the stale entry
            # (a modify would keep it, and nothing would be watched) and register
            self._selector.unregister(fd)
            self._selector.register(fd, _events(mask))

    def modify(self, fd: FileDescriptorLike, mask: int) -> None:
        self._selector.modify(fd, _events(mask))

    def unregister(self, fd: FileDescriptorLike) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        """Ready ``(fd, mask)`` pairs; a negative timeout waits for ever, as epoll's."""
        wait = None if timeout < 0 else timeout
        return [(key.fd, (READ if events & selectors.EVENT_READ else 0)
                 | (WRITE if events & selectors.EVENT_WRITE else 0))
                for key, events in self._selector.select(wait)]

    def close(self) -> None:
        self._selector.close()


class PollerShare:
    """A source's part of another poller (a reactor's): what the source registers
    is polled with that poller's own descriptors, and each of its events is
    handed to ``serve(fd, mask)`` through ``served`` (the owner's table of such
    descriptors). It offers a poller's calls but no ``poll``: the owner polls.
    So a listener with many sockets costs its reactor no nested poller and no
    second poll per event (see ``posa.transport.tcp.sharing``)."""

    __slots__ = ("_poller", "_served", "_serve")

    def __init__(self, poller: PollerType, served: dict[int, Callable[[int, int], None]],
                 serve: Callable[[int, int], None]) -> None:
        self._poller = poller
        self._served = served
        self._serve = serve

    def fileno(self) -> int:
        return self._poller.fileno()

    def register(self, fd: FileDescriptorLike, mask: int) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        self._poller.register(number, mask)
        self._served[number] = self._serve

    def modify(self, fd: FileDescriptorLike, mask: int) -> None:
        self._poller.modify(fd, mask)

    def unregister(self, fd: FileDescriptorLike) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        if self._served.get(number) is self._serve:
            del self._served[number]
        self._poller.unregister(number)

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        raise RuntimeError("a shared poller is polled by its owner")

    def close(self) -> None:
        """Nothing: the poller is its owner's."""


def _events(mask: int) -> int:
    return ((selectors.EVENT_READ if mask & READ else 0)
            | (selectors.EVENT_WRITE if mask & WRITE else 0))


# a class, called for a new poller: epoll itself where there is one
Poller: Callable[[], PollerType] = (select.epoll if hasattr(select, "epoll")
                                    else SelectorPoller)


def readable(mask: int) -> bool:
    """The event calls for a read (input, or an error to find out about)."""
    return bool(mask & ~WRITE)


def writable(mask: int) -> bool:
    """The event calls for a write (room, or an error to find out about)."""
    return bool(mask & ~READ)
