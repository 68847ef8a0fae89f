"""Requests for work held while a queue has none to hand out (a long poll).

A worker's ``next`` that finds nothing pending is held up to its ``wait`` and
answered as soon as an item comes, so idle workers do not poll. ``Held`` keeps
them in arrival order; the queue manager (``posa.work.queue``) calls ``serve``
whenever items may have come or time has passed, under its lock, and sends the
answers it returns after releasing it. Sans-IO: messages in, answers out.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from posa.wire.codec import Message
from posa.work.state import Lease

__all__ = ["Held", "lease_rows"]

Answer = tuple[Message, list[list[Any]]]


def lease_rows(leases: Iterable[Lease]) -> list[list[Any]]:
    """Leases as the ``[key, token, attempt, data]`` rows of a ``next`` reply."""
    return [[lease.key, lease.token, lease.attempt, lease.data] for lease in leases]


class Held:
    """Held ``next`` requests: (message, items wanted, held until), oldest first."""

    def __init__(self) -> None:
        self._held: deque[tuple[Message, int, float]] = deque()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, msg: Message, max_items: int, until: float) -> None:
        """Hold ``msg`` (which wants ``max_items``) until ``until`` at most."""
        self._held.append((msg, max_items, until))

    def serve(self, lease: Callable[[str, float, int], list[Lease]] | None,
              now: float) -> list[Answer]:
        """Lease to held requests, oldest first, with ``lease(sender, now, n)``
        (None: hand out nothing, the queue is draining); answer those that got
        items and those whose wait is over."""
        answers = []
        held = self._held
        for _ in range(len(held)):
            msg, max_items, until = held.popleft()
            leases = lease(msg.sender, now, max_items) if lease is not None else []
            if leases or until <= now:
                answers.append((msg, lease_rows(leases)))
            else:
                held.append((msg, max_items, until))
        return answers

    def release(self, sender: str | None = None) -> list[Message]:
        """Stop holding the requests of ``sender`` (every request if None); they
        are to be answered with no items."""
        mine = [h for h in self._held if sender is None or h[0].sender == sender]
        for entry in mine:
            self._held.remove(entry)
        return [msg for msg, _, _ in mine]
