"""The Event Channel's state machine, with no I/O (sans-IO, pure).

``ChannelCore`` is everything a channel decides: the sequence numbers, the
bounded history, the subscriptions (``posa.channel.subscription``) with their
topic prefixes, filters and bounded buffers, the drop counters and the loop
check for chained channels. It is fed calls (``publish``, ``subscribe``,
``unsubscribe``, ``take``) and answers with decisions; it never sleeps, sends
or starts a thread, so the service (``posa.channel.service``) is free to run
it under one lock from any thread. Events travel through it in runs
(``posa.channel.run``), as they were published.

Every accepted event gets the next ``seq`` of the channel's incarnation (1, 2,
3 ...); an incarnation is one run of a channel process, named by a random
number, so that a restarted channel is told apart from the one before.

Invariants:
- Memory is bounded: history by ``history`` events, each buffer by its
  ``limit`` events (plus at most one hole marker per run under
  ``drop-newest``).  What does not fit is dropped *and counted*, or, under
  ``block``, not accepted: ``publish`` accepts a publication whole when it fits
  every ``block`` subscription (the longest prefix that fits when it could
  never fit whole), says how much it consumed and hands back the rest, which
  the caller offers again (keeping its publishers waiting) after ``take``
  frees room.
- A subscriber learns of every event it will never get: a hole in its buffer
  (``dropped``), an eviction from the history it asked to replay (``history``)
  or a new incarnation (``restart``, noticed by ``SubscriberState``).  Holes
  travel with their position, so each ``Gap`` sits exactly where events were
  lost.
- A chained event never comes back: a channel refuses an event whose ``via``
  names it, and does not deliver to a downstream channel the events that
  already passed that channel (``skip_via``).
- Replay reads history through a cursor, never copying it into the buffer;
  when the cursor reaches the head the subscription turns live atomically.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from posa.channel.accept import candidate, count_of, note_origins
from posa.channel.dedup import OriginSeen, PublisherSeen
from posa.channel.history import History
from posa.channel.predicate import compile_filter
from posa.channel.protocol import MAX_BUFFER, MAX_VIA, POLICIES, Publication, check_prefixes
from posa.channel.run import Run
from posa.channel.subscription import Hole, Subscription
from posa.errors import Rejected

__all__ = ["ChannelCore", "Published", "Taken", "Subscribed"]

REPLAY_SCAN = 4096          # history events one take() examines at most


@dataclass
class Published:
    """What ``publish`` did with a publication of ``n`` events.

    ``consumed`` of them (a prefix) are settled: accepted with seqs ``first`` to
    ``last`` (the ``run``), or refused as ``looped`` or ``duplicate``. ``rest``
    is what a full ``block`` subscription did not take: offer it again after
    ``take`` frees room. ``woken`` lists the subscriptions that got new
    events, ``ended`` those its events ended (``disconnect`` policy)."""

    consumed: int
    accepted: int = 0
    looped: int = 0
    duplicate: int = 0
    first: int = 0
    last: int = 0
    run: Run | None = None
    rest: Publication | None = None
    woken: list[Subscription] = field(default_factory=list)
    ended: list[Subscription] = field(default_factory=list)


@dataclass
class Taken:
    """Events taken from a subscription for one delivery.

    ``gaps``: ``[index, count or None, reason]`` for each hole, ``index`` being
    the position (counted in events over all ``runs``) it precedes; equal to
    the number of events when it follows the last. ``more``: further events are
    ready. ``freed``: room was made in a ``block`` buffer. ``end``: the
    subscription ends after this delivery, and why (``fail`` policy)."""

    runs: list[Run]
    gaps: list[list[Any]]
    dropped: int
    more: bool
    freed: bool
    end: str | None = None

    @property
    def count(self) -> int:
        return sum(len(run) for run in self.runs)


@dataclass
class Subscribed:
    """The answer to ``subscribe``: the channel's incarnation and head seq, the
    oldest seq its history still holds, and where a replay starts (None: live)."""

    incarnation: int
    head: int
    first: int
    replay_from: int | None
    restarted: bool


class ChannelCore:
    """Sequence, history and subscriptions of one channel. Not thread-safe:
    the service calls it under one lock."""

    def __init__(self, name: str, incarnation: int, *, history: int = 10000,
                 history_bytes: int | None = None, history_age: float | None = None,
                 seq: int = 0) -> None:
        self.name = name
        self.incarnation = incarnation
        self.seq = seq                        # the last seq given out
        self.safe: int | None = None          # the last seq subscribers may take (None: all)
        self.kept = History(history, max_bytes=history_bytes, max_age=history_age)
        self.kept.head = seq
        self.subscriptions: dict[str, Subscription] = {}
        self._live: list[Subscription] = []   # subscriptions that get pushed events
        self._blocking: list[Subscription] = []
        self.publishers = PublisherSeen()
        self.origins = OriginSeen()
        self.published = 0
        self.looped = 0
        self.duplicates = 0
        self.ended: dict[str, int] = {"disconnected": 0, "failed": 0}
        self.drops: dict[str, int] = {policy: 0 for policy in POLICIES if policy != "block"}
        # the counts of the subscriptions that ended (unsubscribed, expired, ended by
        # their policy, replaced), so that the channel's totals never go down
        self.closed = {"count": 0, "dropped": 0, "delivered": 0}

    @property
    def history(self) -> deque[Run]:
        return self.kept.runs

    @property
    def history_size(self) -> int:
        return self.kept.size

    def restore(self, run: Run, stamp: float, pid: int | None, pseq: int | None) -> None:
        """Take back a run of a stored history (oldest first), with what it says
        about publishers and origins already accepted."""
        self.kept.add(run, stamp)
        self.seq = max(self.seq, run.last)
        if pid is not None and pseq is not None:
            self.publishers.note(pid, pseq)
        note_origins(run, len(run), self.origins)

    # -- subscriptions -------------------------------------------------------
    def subscribe(self, sub_id: str, *, topics: Sequence[str] = ("",), filter: Any = None,
                  policy: str = "drop-oldest", limit: int = 1000,
                  from_seq: int | None = None, incarnation: int | None = None,
                  skip_via: Sequence[str] = ()) -> Subscribed:
        """Add (or replace) subscription ``sub_id``.

        ``from_seq`` asks a replay from that seq of this incarnation;
        ``incarnation`` is the one the subscriber knew: if it is another, this
        channel restarted and everything its history holds is replayed. Raises
        ``Rejected`` (``InvalidFilter`` for the filter) for bad arguments."""
        chosen = check_prefixes(topics)
        if policy not in POLICIES:
            raise Rejected(f"buffer policy {policy!r:.40} is unknown; use one of "
                           + ", ".join(POLICIES))
        if type(limit) is not int or not 1 <= limit <= MAX_BUFFER:
            raise Rejected(f"buffer limit {limit!r:.20} must be an int from 1 to "
                           f"{MAX_BUFFER} events")
        if from_seq is not None and type(from_seq) is not int:
            raise Rejected("from_seq must be an int (a channel seq) or None")
        if not isinstance(skip_via, (list, tuple)) or len(skip_via) > MAX_VIA or \
                not all(isinstance(v, str) for v in skip_via):
            raise Rejected(f"skip_via must be a list of at most {MAX_VIA} channel names")
        compiled = compile_filter(filter) if filter is not None else None
        self.unsubscribe(sub_id)
        sub = Subscription(sub_id, chosen, filter, compiled, frozenset(skip_via),
                           policy, limit)
        restarted = incarnation is not None and incarnation != self.incarnation
        start = 1 if restarted else from_seq
        if start is not None and start <= self.seq:
            sub.cursor = max(start, 1)
        else:
            self._go_live(sub)
        self.subscriptions[sub_id] = sub
        return Subscribed(self.incarnation, self.seq, self.first_seq(), sub.cursor,
                          restarted)

    def _go_live(self, sub: Subscription) -> None:
        sub.cursor = None
        self._live.append(sub)
        if sub.policy == "block":
            self._blocking.append(sub)

    def unsubscribe(self, sub_id: str) -> Subscription | None:
        """Remove subscription ``sub_id``; returns it (None if unknown)."""
        sub = self.subscriptions.pop(sub_id, None)
        if sub is not None:
            self._stop_live(sub)
            closed = self.closed
            closed["count"] += 1
            closed["dropped"] += sub.dropped
            closed["delivered"] += sub.delivered
        return sub

    def first_seq(self) -> int:
        """The oldest seq the history still holds (head + 1 when it is empty)."""
        return self.seq - self.kept.size + 1

    # -- publishing ----------------------------------------------------------
    def publish(self, pub: Publication, now: float = 0.0) -> Published:
        """Accept a publication (at time ``now``, for retention by age), in order,
        as far as ``block`` subscriptions allow; one already accepted (by its
        publisher's number, or its events by origin) is dropped. Raises
        ``Rejected`` for a malformed one, accepting none of it."""
        if pub.pid is not None and pub.pseq is not None and \
                self.publishers.seen(pub.pid, pub.pseq):
            n = count_of(pub)
            self.duplicates += n
            return Published(n, duplicate=n)
        cand = candidate(pub, self.name, self.seq + 1, self.origins)
        run, n, origin = cand.run, cand.n, cand.index
        fits = self._admissible(run) if self._blocking and len(run) else len(run)
        consumed = n if fits == len(run) else (origin[fits] if origin else fits)
        result = Published(consumed, fits, sum(1 for i in cand.looped if i < consumed),
                           sum(1 for i in cand.duplicate if i < consumed))
        self.looped += result.looped
        self.duplicates += result.duplicate
        if consumed < n:
            result.rest = pub if consumed == 0 else pub.tail(consumed)
        if consumed and pub.pid is not None and pub.pseq is not None:
            self.publishers.note(pub.pid, pub.pseq)
        if fits < len(run):
            run = run.slice(0, fits)
        if not fits:
            return result
        note_origins(run, fits, self.origins)
        result.first, result.last, result.run = run.first, run.last, run
        self.seq = run.last
        self.published += fits
        self.kept.add(run, now)
        self._push(run, result)
        run.compact()      # history keeps the encoded form only
        return result

    def _push(self, run: Run, result: Published) -> None:
        for sub in self._live:
            part = sub.select(run)
            if part is not None:
                before = sub.dropped
                sub.push(part)
                if sub.dropped != before:
                    self.drops[sub.policy] += sub.dropped - before
                if sub.end is None:
                    result.woken.append(sub)
                    continue
                self._stop_live(sub)
                if sub.end == "disconnected":
                    self.ended["disconnected"] += 1
                    self.unsubscribe(sub.id)
                    result.ended.append(sub)
                else:
                    self.ended["failed"] += 1
                    result.woken.append(sub)   # to deliver its buffer, then the end

    def _stop_live(self, sub: Subscription) -> None:
        if sub in self._live:
            self._live.remove(sub)
        if sub in self._blocking:
            self._blocking.remove(sub)

    def _admissible(self, run: Run) -> int:
        """How many leading events of ``run`` to accept now: all of it if it fits
        every ``block`` subscription, none if one is too full to take its part
        whole, the prefix that fits if a part is larger than a whole buffer."""
        fits = len(run)
        for sub in self._blocking:
            room = sub.limit - sub.size
            if room >= fits:
                continue
            chosen = sub.selection(run)
            need = fits if chosen is None else sum(1 for i in chosen if i < fits)
            if need <= room:
                continue
            if need <= sub.limit:
                return 0
            fits = room if chosen is None else chosen[room] if room >= 0 else 0
        return fits

    # -- delivering ----------------------------------------------------------
    def take(self, sub_id: str, max_events: int) -> Taken | None:
        """The subscription's buffered runs, oldest first, until they hold at
        least ``max_events`` events (runs are not split for it), with the holes
        among them. None if ``sub_id`` is not subscribed."""
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return None
        if sub.cursor is not None:
            return self._replay(sub, max_events)
        buffer = sub.buffer
        gaps: list[list[Any]] = []
        if sub.lost_front:
            gaps.append([0, sub.lost_front, "dropped"])
            sub.lost_front = 0
        runs: list[Run] = []
        count = 0
        if sub.head_skip:
            head = buffer[0]
            assert type(head) is Run
            buffer[0] = head.slice(sub.head_skip, len(head))
            sub.head_skip = 0
        safe = self.safe
        while buffer and (count < max_events or type(buffer[0]) is Hole):
            if safe is not None and type(buffer[0]) is Run and \
                    buffer[0].first > safe:
                break                   # not yet in the store: not for anyone yet
            item = buffer.popleft()
            if type(item) is Hole:
                gaps.append([count, item.count, "dropped"])
                sub.holes -= 1
            else:
                runs.append(item)  # type: ignore[arg-type]
                count += len(item)  # type: ignore[arg-type]
        sub.size -= count
        sub.delivered += count
        return Taken(runs, gaps, sub.dropped, bool(buffer),
                     sub.policy == "block" and count > 0,
                     sub.end if not buffer else None)

    def _replay(self, sub: Subscription, max_events: int) -> Taken:
        assert sub.cursor is not None
        gaps: list[list[Any]] = []
        first = self.first_seq()
        if sub.cursor < first:
            gaps.append([0, None, "history"])
            sub.cursor = first
        history = self.kept.runs
        index = self.kept.index(sub.cursor)
        runs: list[Run] = []
        count = scanned = 0
        safe = self.seq if self.safe is None else self.safe
        while index < len(history) and count < max_events and scanned < REPLAY_SCAN:
            run = history[index]
            if run.first > safe:
                break
            if run.last >= sub.cursor:
                run = run.slice(sub.cursor - run.first, len(run))
                scanned += len(run)
                part = sub.select(run)
                run.compact()
                if part is not None:
                    runs.append(part)
                    count += len(part)
                sub.cursor = run.last + 1
            index += 1
        if sub.cursor > self.seq:       # caught up: live from the next publication
            self._go_live(sub)
        sub.delivered += count
        return Taken(runs, gaps, sub.dropped, sub.cursor is not None, False)

    def pending(self, sub_id: str) -> bool:
        """True if a ``take`` for ``sub_id`` would return something."""
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return False
        safe = self.safe
        if safe is None:
            return sub.cursor is not None or bool(sub.buffer) or sub.lost_front > 0 \
                or sub.end is not None
        if sub.cursor is not None:
            return sub.cursor <= safe
        head = sub.buffer[0] if sub.buffer else None
        return (head is not None and (type(head) is not Run or head.first <= safe)) \
            or sub.lost_front > 0 or (sub.end is not None and not sub.buffer)

    def stats(self) -> dict[str, Any]:
        """Counters and every subscription's state, as msgpack-able data; ``dropped``
        and ``delivered`` total every subscription's, the ended ones' too."""
        subs, closed = self.subscriptions, self.closed
        return {"name": self.name, "incarnation": self.incarnation, "seq": self.seq,
                "first": self.first_seq(), "history": self.history_size,
                "history_bytes": self.kept.bytes, "published": self.published,
                "looped": self.looped, "duplicates": self.duplicates,
                "disconnected": self.ended["disconnected"], "failed": self.ended["failed"],
                "dropped": closed["dropped"] + sum(s.dropped for s in subs.values()),
                "delivered": closed["delivered"] + sum(s.delivered for s in subs.values()),
                "closed_subscriptions": dict(closed),
                "subscriptions": {sid: sub.stats() for sid, sub in subs.items()}}
