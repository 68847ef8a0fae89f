"""A peer's inbox: what was delivered while no handler serves, for ``receive()``.

Bounded by flow control, not by refusing: the reactor stops reading a peer's
listeners once the inbox holds ``size`` messages (senders' windows fill and they
wait) and reads them again when a reader has taken it below half (``low``).
Closing leaves a marker that wakes every reader, now and later, with ``Closed``.

A wait with a time limit is not the queue's alone (``SimpleQueue.get(timeout=)``
starts its whole time again after each signal it is interrupted by: with
signals more often than that, a sampling profiler's or a watchdog's timer, it
never ends): a timer of the peer's reactor (``later``) also puts a wake-up of
that reader's in the queue at the deadline (the queue's own limit ends the wait
when no signal came, should the reactor be late).

Such a wake-up may come just after a message its reader took (the timer fired
as the message came): it stays queued, stale, and counts in ``qsize`` until a
reader drops it, so the inbox can look full, or not yet below half, while it
holds no message. A reader that drops one, or whose wait ends with nothing,
calls ``emptied`` (the peer reads its listeners again if they wait for it): a
peer whose listeners were paused with a stale wake-up queued is otherwise read
never again.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from posa.errors import Closed, Timeout
from posa.wire.codec import Message

__all__ = ["Inbox"]

_CLOSED = object()      # wakes receive() on close
_monotonic = time.monotonic
_LONGEST = 1e9          # a wait longer than this has no end (about 30 years)


class _Wake:
    """A reader's wake-up at its deadline: another reader puts it back while
    its reader waits, drops it once it does not (it came late)."""
    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = True


def _nothing() -> None:
    return None


class _Cancel(Protocol):
    def cancel(self) -> None: ...


# a reactor's ``call_later``; None in the reactor's own thread (it would not run)
Later = Callable[[float, Callable[[], Any]], _Cancel | None]


class Inbox:
    """Delivered messages, oldest first; ``put`` and ``qsize`` are the queue's
    own (the delivery path calls them with no wrapper in between)."""

    __slots__ = ("size", "put", "qsize", "_queue", "_later", "emptied")

    def __init__(self, size: int, later: Later | None = None,
                 emptied: Callable[[], Any] | None = None) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"inbox_size must be a whole number of messages >= 1, not "
                             f"{size!r}: the peer stops reading once its inbox holds that "
                             "many, and reads again when receive() took it below half")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.size = size
        self.put = self._queue.put
        self.qsize = self._queue.qsize
        self._later = later
        # a reader took something that was no message, or waited in vain
        self.emptied = emptied or _nothing

    def get(self, timeout: float | None, owner: str) -> Message:
        """The next message; blocks up to ``timeout`` (None: forever, 0: don't
        block). Raises ``Timeout`` if none came, ``Closed`` after ``close``."""
        while True:
            try:
                if timeout is not None and timeout <= 0:
                    msg = self._queue.get_nowait()
                elif self._later is not None and timeout is not None and timeout < _LONGEST:
                    msg = self._until(timeout)
                else:
                    msg = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.emptied()
                raise Timeout(f"no message for {owner!r} within {timeout} s") from None
            except (ValueError, OverflowError, TypeError):  # nan, no number; too long
                if timeout != timeout or not isinstance(timeout, (int, float)):
                    raise ValueError("receive's timeout must be a number of seconds or "
                                     f"None (wait until a message comes), not {timeout!r}"
                                     ) from None
                msg = self._queue.get()
            if msg is _CLOSED:
                self._queue.put(_CLOSED)
                raise Closed(f"peer {owner!r} is closed")
            if type(msg) is not _Wake:
                return msg  # type: ignore[no-any-return]
            if msg.waiting:
                self._queue.put(msg)    # another reader's: it still waits for it
            else:
                self.emptied()          # a stale one dropped: below half now?

    def _until(self, timeout: float) -> Any:
        """The next item, waited for up to ``timeout`` s by a wake-up at the
        deadline (the module's docstring); ``queue.Empty`` if it came first."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        wake = _Wake()
        put = self._queue.put
        timer = self._later(timeout, lambda: put(wake))  # type: ignore[misc]
        if timer is None:
            return self._queue.get(timeout=timeout)
        deadline = _monotonic() + timeout
        try:
            while True:     # its own limit ends it with no signal; the wake-up with them
                left = deadline - _monotonic()
                item = self._queue.get(timeout=left if left > 0.0 else 0.0)
                if item is wake:
                    raise queue.Empty
                if type(item) is not _Wake:
                    return item
                if item.waiting:
                    put(item)               # another reader's: it still waits for it
                else:
                    self.emptied()          # a stale one dropped
        finally:
            wake.waiting = False
            timer.cancel()

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
            if type(msg) is not _Wake:      # a reader's wake-up that came late
                yield msg

    def close(self) -> None:
        """Wake every reader with ``Closed``."""
        self._queue.put(_CLOSED)
