"""What a subscriber receives: ``Event`` and ``Gap``, and ``SubscriberState``,
which turns deliveries into events and notices every hole (sans-IO, pure).

Sequence numbers increase at a subscriber but are not contiguous (filtered-out
events leave holes that are no loss), so a loss is announced explicitly: the
channel marks each hole in a delivery at its place (``dropped``, ``history``),
and ``SubscriberState`` adds the one the channel cannot know of (``restart``,
a new incarnation). Each hole becomes the ``gap`` of the event after it.

``SubscriberState.last_seq`` is the seq up to which the subscriber has
everything that matched (except the holes it was told of); a re-subscription
resumes after it, and an event at or below it that arrives again is dropped as
a duplicate.
"""
from __future__ import annotations

from itertools import repeat
from typing import Any, NamedTuple

from posa.channel.protocol import unpack
from posa.errors import ProtocolError

__all__ = ["Event", "Gap", "SubscriberState"]

_SEVERITY = ("dropped", "history", "restart")


class Gap(NamedTuple):
    """Events this subscriber will never receive, and where they were.

    ``reason``: ``"dropped"`` (its buffer at the channel overflowed),
    ``"history"`` (a replay asked for events older than the channel keeps) or
    ``"restart"`` (the channel restarted; what its old run had not delivered is
    lost). ``after``: the seq of the last event received before the hole (0:
    none yet; for a restart, a seq of the old run). ``count``: how many events
    for this subscription were lost, or None when the channel cannot know."""

    reason: str
    after: int
    count: int | None   # type: ignore[assignment]  # (shadows tuple.count, by design)

    def merged(self, other: Gap) -> Gap:
        """One gap standing for two adjacent holes."""
        count = None if self.count is None or other.count is None \
            else self.count + other.count
        reason = max(self.reason, other.reason, key=_SEVERITY.index)
        return Gap(reason, self.after, count)


class Event(NamedTuple):
    """One event as a subscriber receives it.

    ``topic`` and ``body`` are what the publisher gave; ``seq`` is the channel's
    sequence number (increasing); ``channel`` the channel it came from; ``via``
    the channels it passed before that one (origin first); ``gap`` a ``Gap``
    when events were lost right before this one, else None; ``origin`` for a
    chained event: ``(incarnation, seq)`` it had at ``via[0]``, where it began;
    ``trace`` for an event published inside a trace: its W3C headers
    (``{"traceparent": ..., "tracestate": ...}``), to continue it with
    ``posa.ops.trace_context(event.trace)`` or ``Subscriber.handling(event)``."""

    seq: int
    topic: str
    body: Any
    channel: str = ""
    via: tuple[str, ...] = ()
    gap: Gap | None = None
    origin: tuple[int, int] | None = None
    trace: dict[str, str] | None = None


_tuple_new = tuple.__new__      # map(_tuple_new, repeat(Event), fields): no __new__ frame


def _is_pair(origin: Any) -> bool:
    return type(origin) is list and len(origin) == 2 and type(origin[0]) is int \
        and type(origin[1]) is int


class SubscriberState:
    """The subscriber's side: turns deliveries into events, notices holes.

    ``incarnation`` is the channel run it follows. Counters, running totals
    since the first subscription: ``gaps`` (holes noticed), ``missed`` (events
    known lost), ``dropped`` (the channel's drops for this subscriber, summed
    over its subscriptions: the channel counts each subscription from 0, and a
    restart or a re-subscription makes a new one), ``duplicates``; ``head`` is
    the channel's last seq, as last reported; ``last_gap`` is the latest."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.incarnation: int | None = None
        self.last_seq = 0
        self.gaps = 0
        self.missed = 0
        self._dropped_before = 0    # the drops of the channel's earlier subscriptions
        self._reported = 0          # the current subscription's, as last reported
        self.head = 0
        self.duplicates = 0
        self.last_gap: Gap | None = None
        self._pending: Gap | None = None

    def subscribed(self, answer: dict[str, Any]) -> None:
        """Take note of a first subscription's answer: where events start."""
        if self.incarnation is None:
            self.incarnation = answer["inc"]
            replay = answer.get("replay_from")
            self.last_seq = (replay - 1) if replay is not None else answer["head"]

    def resume_point(self) -> tuple[int | None, int]:
        """(incarnation, seq) to ask a re-subscription to continue from."""
        return self.incarnation, self.last_seq + 1

    def accept(self, inc: int, runs: list[list[Any]], gaps: list[list[Any]],
               dropped: int, head: int) -> list[Event]:
        """The new events of one delivery (``parse_delivery``'s parts), in
        order, each hole announced by the event after it. Raises
        ``ProtocolError`` for bodies that do not decode."""
        events = self._events(runs)
        if inc != self.incarnation:
            if self.incarnation is not None:
                self._note(Gap("restart", self.last_seq, None))
                self._reported, self._dropped_before = 0, self.dropped   # a new count
            self.incarnation = inc
            self.last_seq = 0
        if not gaps and self._pending is None and events \
                and events[0].seq > self.last_seq:
            self.last_seq = events[-1].seq       # the common case: nothing to mark
            if dropped < self._reported:        # (``_count``, inline)
                self._dropped_before += self._reported
            self._reported, self.head = dropped, head
            return events
        new = self._with_gaps(events, gaps)
        if new or not events:       # not a late copy: its counts are the latest
            self._count(dropped)
            self.head = head
        return new

    @property
    def dropped(self) -> int:
        """The channel's drops for this subscriber, over all its subscriptions."""
        return self._dropped_before + self._reported

    def _count(self, dropped: int) -> None:
        """Take the channel's count of ``dropped`` for the current subscription;
        one lower than the last means the channel counts a new subscription
        (this subscriber's again, in the same run): the last is kept in the total."""
        if dropped < self._reported:
            self._dropped_before += self._reported
        self._reported = dropped

    def _events(self, runs: list[list[Any]]) -> list[Event]:
        """The events of a delivery's runs, bodies decoded."""
        events: list[Event] = []
        channel = self.channel
        for item in runs:
            seqs, topics, bodies = item[0], item[1], unpack(item[2], "delivery")
            if type(bodies) is not list:
                raise ProtocolError("delivery: a run's bodies must be an array")
            n = len(bodies)
            if type(topics) is str:
                topics = repeat(topics, n)
            elif len(topics) != n:
                raise ProtocolError("delivery: a run needs one body per topic")
            if type(seqs) is int:
                seqs = range(seqs, seqs + n)
            elif len(seqs) != n:
                raise ProtocolError("delivery: a run needs one seq per body")
            via_iter: Any = repeat(())
            origin_iter: Any = repeat(None)
            trace_iter: Any = repeat(None)
            if len(item) >= 4:
                if any(extra is not None and len(extra) != n for extra in item[3:]):
                    raise ProtocolError("delivery: a run needs one via (origin, trace) "
                                        "per body")
                if item[3] is not None:
                    via_iter = [tuple(v) if v else () for v in item[3]]
                if len(item) >= 5 and item[4] is not None:
                    origin_iter = [tuple(o) if _is_pair(o) else None for o in item[4]]
                if len(item) == 6:
                    trace_iter = [t if type(t) is dict else None for t in item[5]]
            events.extend(map(_tuple_new, repeat(Event), zip(
                seqs, topics, bodies, repeat(channel), via_iter, repeat(None), origin_iter,
                trace_iter)))
        return events

    def _with_gaps(self, events: list[Event], gaps: list[list[Any]]) -> list[Event]:
        """The new ones of ``events``, each hole of ``gaps`` (and a pending one)
        attached to the event after it; duplicates dropped, and the holes before
        them: a copy of a delivery (sent again after its stream gave it up) says
        again what the first said."""
        holes: dict[int, Gap] = {}
        for index, count, reason in gaps:
            found = Gap(reason, 0, count)
            holes[index] = holes[index].merged(found) if index in holes else found
        out: list[Event] = []
        copy = False
        for i, event in enumerate(events):
            copy = event.seq <= self.last_seq
            if copy:
                self.duplicates += 1
                continue
            hole = holes.get(i)
            if hole is not None:
                self._note(Gap(hole.reason, self.last_seq, hole.count))
            self.last_seq = event.seq
            if self._pending is not None:
                event = event._replace(gap=self._pending)
                self._pending = None
            out.append(event)
        tail = holes.get(len(events))
        if tail is not None and not copy:
            self._note(Gap(tail.reason, self.last_seq, tail.count))
        return out

    def _note(self, gap: Gap) -> None:
        self.gaps += 1
        if gap.count is not None:
            self.missed += gap.count
        self._pending = gap if self._pending is None else self._pending.merged(gap)
        self.last_gap = self._pending
