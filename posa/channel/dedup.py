"""What a channel has already accepted, so that nothing is accepted twice (pure).

- ``PublisherSeen``: the last publication number (``pseq``) of each publisher
  (``pid``). A publisher numbers its publications; one it sends again (after a
  channel restart, or after its stream to the channel was given up) is dropped
  when its number is not above the last one accepted from it.
- ``OriginSeen``: for chained channels, the events already accepted by their
  origin, ``(origin channel, incarnation, seq)``. In any graph of channels (a
  diamond a→d, a→b→d included) an event may reach a channel by several paths,
  in any order; the first copy is accepted and the others dropped.

Memory is bounded: ``PublisherSeen`` keeps the ``MAX_PUBLISHERS`` most recent
publishers; ``OriginSeen`` keeps ``MAX_ORIGINS`` origins, and of each the
highest seq and the seqs below it not yet seen, within ``WINDOW`` seqs. A copy
arriving more than ``WINDOW`` seqs behind a later event of its origin is taken
for a duplicate (dropped and counted).
"""
from __future__ import annotations

from collections import OrderedDict

__all__ = ["PublisherSeen", "OriginSeen", "MAX_PUBLISHERS", "MAX_ORIGINS", "WINDOW"]

MAX_PUBLISHERS = 4096
MAX_ORIGINS = 256
WINDOW = 16384


class PublisherSeen:
    """The last publication number accepted from each publisher."""

    def __init__(self) -> None:
        self._last: OrderedDict[int, int] = OrderedDict()

    def seen(self, pid: int, pseq: int) -> bool:
        """True if publication ``pseq`` of ``pid`` was accepted already."""
        last = self._last.get(pid)
        return last is not None and pseq <= last

    def note(self, pid: int, pseq: int) -> None:
        last = self._last
        if pseq > last.get(pid, -1):
            last[pid] = pseq
        last.move_to_end(pid)
        if len(last) > MAX_PUBLISHERS:
            last.popitem(last=False)


class _Origin:
    __slots__ = ("high", "missing")

    def __init__(self) -> None:
        self.high = 0
        self.missing: set[int] = set()


class OriginSeen:
    """The events of each origin accepted already, within a window."""

    def __init__(self) -> None:
        self._origins: OrderedDict[tuple[str, int], _Origin] = OrderedDict()
        self.expired = 0        # copies dropped because they came too late to tell

    def is_new(self, name: str, incarnation: int, seq: int) -> bool:
        """True if the event ``seq`` of ``(name, incarnation)`` was not accepted yet."""
        origin = self._origins.get((name, incarnation))
        if origin is None or seq > origin.high or seq in origin.missing:
            return True
        if seq <= origin.high - WINDOW:
            self.expired += 1
        return False

    def note(self, name: str, incarnation: int, seq: int) -> None:
        """Remember that the event ``seq`` of ``(name, incarnation)`` was accepted."""
        key = (name, incarnation)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
            if len(self._origins) > MAX_ORIGINS:
                self._origins.popitem(last=False)
        else:
            self._origins.move_to_end(key)
        high = origin.high
        if seq <= high:
            origin.missing.discard(seq)
            return
        if seq > high + 1:      # first sight too: what came before may still come
            origin.missing.update(range(max(high + 1, seq - WINDOW, 1), seq))
            if len(origin.missing) > 2 * WINDOW:
                floor = seq - WINDOW
                origin.missing = {s for s in origin.missing if s > floor}
        origin.high = seq
