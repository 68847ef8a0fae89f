"""One subscription inside a channel: its selection, bounded buffer and counters (pure).

``Subscription.select`` picks the part of a run the subscriber wants (topic
prefixes, the chained-channel check ``skip_via``, then the content filter, in
that order of cost); ``push`` buffers it under the subscription's policy.

Invariants: the buffer holds at most ``limit`` events, plus at most one hole
marker per run under ``drop-newest``; whatever does not fit is dropped *and
counted* (``dropped``), and its place is kept so that the subscriber is told
exactly where events were lost: a ``Hole`` in the buffer (``drop-newest``) or
``lost_front`` (``drop-oldest``, events evicted from the head). ``block``
room is checked by the core before ``push``. Under ``disconnect`` and
``fail`` a run that does not fit ends the subscription instead (``end``): it
is not buffered, and counted as dropped.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from posa.channel.predicate import Predicate
from posa.channel.run import Run

__all__ = ["Hole", "Subscription"]


_ENDING = {"disconnect": "disconnected", "fail": "overflow"}


class Hole:
    """A run of events dropped from the tail of a ``drop-newest`` buffer."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class Subscription:
    """One subscriber's selection, buffer and counters inside a channel."""

    __slots__ = ("id", "topics", "filter_spec", "skip_via", "policy", "limit", "everything",
                 "_prefixes", "_filter", "buffer", "size", "head_skip", "holes",
                 "lost_front", "dropped", "delivered", "cursor", "end")

    def __init__(self, sub_id: str, topics: tuple[str, ...], filter_spec: Any,
                 compiled: Predicate | None, skip_via: frozenset[str], policy: str,
                 limit: int) -> None:
        self.id = sub_id
        self.topics = topics
        self.filter_spec = filter_spec
        self.skip_via = skip_via
        self.policy = policy
        self.limit = limit
        self._prefixes = None if "" in topics else topics
        self._filter = compiled
        self.everything = self._prefixes is None and compiled is None and not skip_via
        self.buffer: deque[Run | Hole] = deque()
        self.size = 0             # events in the buffer
        self.head_skip = 0        # events of buffer[0] dropped but not yet cut off
        self.holes = 0            # hole markers in the buffer (drop-newest)
        self.lost_front = 0       # events evicted from the head since the last take
        self.dropped = 0          # events dropped by the buffer policy, in all
        self.delivered = 0        # events taken for delivery, in all
        self.cursor: int | None = None   # next seq to replay from history; None: live
        self.end: str | None = None      # "disconnected" or "overflow": ended by its policy

    def selection(self, run: Run) -> list[int] | None:
        """Indexes of the run's events this subscription wants (None: all)."""
        if self.everything:
            return None
        n = len(run)
        chosen: Sequence[int] = range(n)
        if self._prefixes is not None:
            prefixes, topics = self._prefixes, run.topics
            if run.topic is not None:
                if not run.topic.startswith(prefixes):
                    return []
            else:
                chosen = [i for i in chosen if topics[i].startswith(prefixes)]
        if self.skip_via and run.vias is not None:
            skip, vias = self.skip_via, run.vias
            chosen = [i for i in chosen if not vias[i] or skip.isdisjoint(vias[i])]
        if self._filter is not None and chosen:
            test, bodies = self._filter, run.decoded()
            chosen = [i for i in chosen if test(bodies[i])]
        return None if len(chosen) == n else list(chosen)

    def select(self, run: Run) -> Run | None:
        """The part of ``run`` this subscription wants (None: nothing)."""
        chosen = self.selection(run)
        if chosen is None:
            return run
        return run.pick(chosen) if chosen else None

    def push(self, run: Run) -> None:
        """Buffer ``run`` under the policy (``block`` room was checked before)."""
        n = len(run)
        buffer = self.buffer
        if self.policy in _ENDING and self.size + n > self.limit:
            self.dropped += n
            self.end = _ENDING[self.policy]
            return
        if self.policy == "drop-newest":
            room = self.limit - self.size
            if room >= n:
                buffer.append(run)
                self.size += n
                return
            if room > 0:
                buffer.append(run.slice(0, room))
                self.size += room
            lost = n - max(room, 0)
            self.dropped += lost
            if buffer and type(buffer[-1]) is Hole:
                buffer[-1].count += lost
            else:
                buffer.append(Hole(lost))
                self.holes += 1
            return
        buffer.append(run)
        self.size += n
        if self.policy == "drop-oldest":
            # whole runs go; of the oldest left, the first events are skipped (and
            # cut off when taken: cutting decodes, so only once, not per push)
            while self.size > self.limit:
                oldest = buffer[0]
                assert type(oldest) is Run
                held = len(oldest) - self.head_skip
                evict = min(self.size - self.limit, held)
                if evict == held:
                    buffer.popleft()
                    self.head_skip = 0
                else:
                    self.head_skip += evict
                self.size -= evict
                self.dropped += evict
                self.lost_front += evict

    def stats(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "filter": self.filter_spec,
                "policy": self.policy, "limit": self.limit, "buffered": self.size,
                "dropped": self.dropped, "delivered": self.delivered,
                "replaying": self.cursor is not None}
