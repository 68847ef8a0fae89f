"""A peer's inbox: what was delivered while no handler serves, for ``receive()``.

Bounded by flow control, not by refusing: the reactor stops reading a peer's
listeners once the inbox holds ``size`` messages (senders' windows fill and they
wait) and reads them again when a reader has taken it below half (``low``).
Closing leaves a marker that wakes every reader, now and later, with ``Closed``.
"""
from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from posa.errors import Closed, Timeout
from posa.wire.codec import Message

__all__ = ["Inbox"]

_CLOSED = object()      # wakes receive() on close


class Inbox:
    """Delivered messages, oldest first; ``put`` and ``qsize`` are the queue's
    own (the delivery path calls them with no wrapper in between)."""

    __slots__ = ("size", "put", "qsize", "_queue")

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"inbox_size must be a whole number of messages >= 1, not "
                             f"{size!r}: the peer stops reading once its inbox holds that "
                             "many, and reads again when receive() took it below half")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.size = size
        self.put = self._queue.put
        self.qsize = self._queue.qsize

    def get(self, timeout: float | None, owner: str) -> Message:
        """The next message; blocks up to ``timeout`` (None: forever, 0: don't
        block). Raises ``Timeout`` if none came, ``Closed`` after ``close``."""
        try:
            if timeout is not None and timeout <= 0:
                msg = self._queue.get_nowait()
            else:
                msg = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no message for {owner!r} within {timeout} s") from None
        except (ValueError, OverflowError):     # nan; longer than a thread can wait
            if timeout != timeout:
                raise ValueError("receive's timeout must be a number of seconds or None "
                                 "(wait until a message comes), not nan") from None
            msg = self._queue.get()
        if msg is _CLOSED:
            self._queue.put(_CLOSED)
            raise Closed(f"peer {owner!r} is closed")
        return msg  # type: ignore[no-any-return]

    def low(self) -> bool:
        """True once readers have taken the inbox below half its size."""
        return self._queue.qsize() * 2 < self.size      # (size 1: when empty)

    def take_all(self) -> Iterator[Message]:
        """Every message queued now, oldest first (not past ``close``)."""
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                return
            if msg is _CLOSED:
                self._queue.put(_CLOSED)
                return
            yield msg

    def close(self) -> None:
        """Wake every reader with ``Closed``."""
        self._queue.put(_CLOSED)
