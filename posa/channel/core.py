"""The Event Channel's state machine, with no I/O (sans-IO, pure).

``ChannelCore`` is everything a channel decides: the sequence numbers, the
bounded history, the subscriptions with their topic prefixes, filters and
bounded buffers, the drop counters and the loop check for chained channels.
It is fed calls (``publish``, ``subscribe``, ``unsubscribe``, ``take``) and
answers with decisions; it never sleeps, sends or starts a thread, so the
service in ``posa.channel.eventchannel`` is free to run it under one lock from any
thread.  ``SubscriberState`` is the subscriber's half: it turns deliveries
into ``Event`` objects and notices every hole (``Gap``).

Events travel in *runs*: the events of one publication, with consecutive seqs,
their topics, and their bodies as one msgpack array (``blob``).  A run moves
through the channel as it came: history and the buffers of subscribers that
take all of it hold the same object, and its blob is sent to each of them
without being decoded or encoded again.  Only a filter decodes bodies (once
per run, for all filters), and only a subscriber that takes part of a run gets
a new run (with explicit seqs) that is encoded for it.

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

import functools
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

import msgpack

from posa.channel.predicate import Predicate, compile_filter
from posa.errors import ProtocolError, Rejected

__all__ = ["ChannelCore", "Subscription", "Publication", "Published", "Run", "Taken",
           "Subscribed", "SubscriberState", "Event", "Gap", "POLICIES", "MAX_TOPIC_LEN",
           "check_bodies", "parse_publish", "parse_delivery"]

POLICIES = ("block", "drop-oldest", "drop-newest")
MAX_TOPIC_LEN = 255         # characters in a topic or a topic prefix
MAX_PREFIXES = 64           # topic prefixes in one subscription
MAX_BUFFER = 10_000_000     # events one subscription may buffer
REPLAY_SCAN = 4096          # history events one take() examines at most
MAX_VIA = 32                # channels one event may pass
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
    count: int | None

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
    when events were lost right before this one, else None."""

    seq: int
    topic: str
    body: Any
    channel: str = ""
    via: tuple[str, ...] = ()
    gap: Gap | None = None


_new_event = functools.partial(tuple.__new__, Event)


def unpack(blob: Any, what: str) -> Any:
    """Decode one msgpack value. Raises ``ProtocolError``."""
    if type(blob) is not bytes:
        raise ProtocolError(f"{what}: expected msgpack bytes, got {type(blob).__name__}")
    try:
        return msgpack.unpackb(blob)
    except Exception as exc:  # msgpack's FormatError, ExtraData, StackError, ValueError ...
        raise ProtocolError(f"{what}: not valid msgpack ({exc})") from None


def check_bodies(blob: Any, n: int | None) -> int:
    """Check, without building the values, that ``blob`` is one msgpack array
    of well-formed items (``n`` of them, if given); returns how many. Raises
    ``Rejected``."""
    if type(blob) is not bytes:
        raise Rejected("a publication's bodies must be msgpack bytes (an array)")
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(blob), 1))
    unpacker.feed(blob)
    try:
        count = unpacker.read_array_header()
        if n is not None and count != n:
            raise Rejected("a publication needs one body per topic")
        skip = unpacker.skip
        for _ in range(count):
            skip()
    except Rejected:
        raise
    except Exception as exc:  # msgpack's OutOfData, FormatError, StackError ...
        raise Rejected(f"a publication's bodies are not valid msgpack ({exc!r:.80})") \
            from None
    if unpacker.tell() != len(blob):
        raise Rejected("a publication's bodies have bytes after the array")
    return count


class Run:
    """Events that travel together: seqs ``first``, ``first + 1`` ... (or the
    explicit ``seqs``), their ``topics`` (``topic`` when they all share one),
    their bodies encoded (``blob``, a msgpack array) and/or decoded
    (``bodies``), and for chained events the channels each passed (``vias``,
    entries None when none)."""

    __slots__ = ("first", "seqs", "topics", "topic", "blob", "bodies", "vias")

    def __init__(self, first: int, topics: list[str], *, blob: bytes | None = None,
                 bodies: list[Any] | None = None, seqs: list[int] | None = None,
                 vias: list[Any] | None = None, topic: str | None = None) -> None:
        self.first = first
        self.seqs = seqs
        self.topics = topics
        self.topic = topic
        self.blob = blob
        self.bodies = bodies
        self.vias = vias

    def __len__(self) -> int:
        return len(self.topics)

    def __repr__(self) -> str:
        return f"Run(seq {self.first}..{self.last}, {len(self)} events)"

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs is not None else self.first + len(self.topics) - 1

    def seq_list(self) -> Sequence[int]:
        return self.seqs if self.seqs is not None else \
            range(self.first, self.first + len(self.topics))

    def decoded(self) -> list[Any]:
        """The bodies, decoded from the blob and kept (the caller may drop them
        again with ``compact``)."""
        if self.bodies is None:
            self.bodies = unpack(self.blob, "run")
        return self.bodies

    def compact(self) -> None:
        """Drop the decoded bodies if the blob holds them too."""
        if self.blob is not None:
            self.bodies = None

    def body_list(self) -> list[Any]:
        """The bodies, decoded if need be, without keeping them."""
        return self.bodies if self.bodies is not None else unpack(self.blob, "run")

    def slice(self, start: int, end: int) -> Run:
        """Events ``start`` to ``end`` (this run itself when that is all of it)."""
        if start <= 0 and end >= len(self.topics):
            return self
        seqs = self.seqs[start:end] if self.seqs is not None else None
        return Run(seqs[0] if seqs else self.first + start, self.topics[start:end],
                   bodies=self.body_list()[start:end], seqs=seqs, topic=self.topic,
                   vias=self.vias[start:end] if self.vias is not None else None)

    def pick(self, indexes: list[int]) -> Run:
        """The events at ``indexes`` (ascending), as a run with explicit seqs."""
        seq_list, topics, bodies = self.seq_list(), self.topics, self.decoded()
        vias = self.vias
        return Run(seq_list[indexes[0]], [topics[i] for i in indexes],
                   bodies=[bodies[i] for i in indexes],
                   seqs=[seq_list[i] for i in indexes], topic=self.topic,
                   vias=[vias[i] for i in indexes] if vias is not None else None)

    def topics_size(self) -> int:
        """About how many bytes the topics take on the wire."""
        if self.topic is not None:
            return len(self.topic) + 2
        return sum(map(len, self.topics)) + 2 * len(self.topics)

    def wire(self, blob: bytes) -> list[Any]:
        """The run as a delivery carries it: ``[seqs, topics, blob(, vias)]``, with
        one topic str standing for all when they share it."""
        item = [self.seqs if self.seqs is not None else self.first,
                self.topic if self.topic is not None else self.topics, blob]
        if self.vias is not None:
            item.append(self.vias)
        return item


class _Hole:
    """A run of events dropped from the tail of a ``drop-newest`` buffer."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class Subscription:
    """One subscriber's selection, buffer and counters inside a channel."""

    __slots__ = ("id", "topics", "filter_spec", "skip_via", "policy", "limit", "everything",
                 "_prefixes", "_filter", "buffer", "size", "head_skip", "holes",
                 "lost_front", "dropped", "delivered", "cursor")

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
        self.buffer: deque[Run | _Hole] = deque()
        self.size = 0             # events in the buffer
        self.head_skip = 0        # events of buffer[0] dropped but not yet cut off
        self.holes = 0            # hole markers in the buffer (drop-newest)
        self.lost_front = 0       # events evicted from the head since the last take
        self.dropped = 0          # events dropped by the buffer policy, in all
        self.delivered = 0        # events taken for delivery, in all
        self.cursor: int | None = None   # next seq to replay from history; None: live

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
            if buffer and type(buffer[-1]) is _Hole:
                buffer[-1].count += lost     # type: ignore[union-attr]
            else:
                buffer.append(_Hole(lost))
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


@dataclass
class Publication:
    """Events offered to a channel, not yet numbered: their ``topics`` (or one
    topic str for all), their bodies as a msgpack array (``blob``) or a list
    (``bodies``), and for chained events the channels each passed (``vias``)."""

    topics: list[str] | str
    blob: bytes | None = None
    bodies: list[Any] | None = None
    vias: list[Any] | None = None

    def tail(self, start: int) -> Publication:
        """The events from ``start`` on."""
        bodies = self.bodies if self.bodies is not None else unpack(self.blob, "publication")
        topics = self.topics if isinstance(self.topics, str) else self.topics[start:]
        return Publication(topics, bodies=bodies[start:],
                           vias=self.vias[start:] if self.vias is not None else None)


@dataclass
class Published:
    """What ``publish`` did with a publication of ``n`` events.

    ``consumed`` of them (a prefix) are settled: accepted with seqs ``first`` to
    ``last``, or refused as ``looped``. ``rest`` is what a full ``block``
    subscription did not take: offer it again after ``take`` frees room.
    ``woken`` lists the subscriptions that got new events."""

    consumed: int
    accepted: int = 0
    looped: int = 0
    first: int = 0
    last: int = 0
    rest: Publication | None = None
    woken: list[Subscription] = field(default_factory=list)


@dataclass
class Taken:
    """Events taken from a subscription for one delivery.

    ``gaps``: ``[index, count or None, reason]`` for each hole, ``index`` being
    the position (counted in events over all ``runs``) it precedes; equal to
    the number of events when it follows the last. ``more``: further events are
    ready. ``freed``: room was made in a ``block`` buffer."""

    runs: list[Run]
    gaps: list[list[Any]]
    dropped: int
    more: bool
    freed: bool

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

    def __init__(self, name: str, incarnation: int, *, history: int = 10000) -> None:
        if history < 0:
            raise ValueError("history must be >= 0 events")
        self.name = name
        self.incarnation = incarnation
        self.seq = 0                          # the last seq given out
        self.history_limit = history
        self.history: deque[Run] = deque()
        self.history_size = 0                 # events in history
        self._history_skip = 0                # events of history[0] no longer held
        self.subscriptions: dict[str, Subscription] = {}
        self._live: list[Subscription] = []   # subscriptions that get pushed events
        self._blocking: list[Subscription] = []
        self.published = 0
        self.looped = 0

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
        chosen = _check_topics(topics)
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
            if sub in self._live:
                self._live.remove(sub)
            if sub in self._blocking:
                self._blocking.remove(sub)
        return sub

    def first_seq(self) -> int:
        """The oldest seq the history still holds (head + 1 when it is empty)."""
        return self.seq - self.history_size + 1

    # -- publishing ----------------------------------------------------------
    def publish(self, pub: Publication) -> Published:
        """Accept a publication, in order, as far as ``block`` subscriptions
        allow. Raises ``Rejected`` for a malformed one, accepting none of it."""
        topic: str | None = None
        if type(pub.topics) is str:
            topic = pub.topics
            if len(topic) > MAX_TOPIC_LEN:
                raise Rejected(f"an event's topic is longer than {MAX_TOPIC_LEN} characters")
            n = len(pub.bodies) if pub.bodies is not None else check_bodies(pub.blob, None)
            topics = [topic] * n
        else:
            topics, n = pub.topics, len(pub.topics)
            _check_event_topics(topics)
            if pub.bodies is not None:
                if len(pub.bodies) != n:
                    raise Rejected("a publication needs one body per topic")
            else:
                check_bodies(pub.blob, n)
        origin: list[int] | None = None       # input index of each kept event
        looped: list[int] = []
        vias = pub.vias
        if vias is not None:
            if len(vias) != n:
                raise Rejected("a publication needs one via per topic")
            vias = [_check_via(v) for v in vias]
            origin = [i for i in range(n) if not (vias[i] and self.name in vias[i])]
            looped = [i for i in range(n) if vias[i] and self.name in vias[i]]
            if not any(vias):
                vias = None
        if origin is not None and len(origin) < n:
            bodies = pub.bodies if pub.bodies is not None else unpack(pub.blob, "publication")
            run = Run(self.seq + 1, [topics[i] for i in origin],
                      bodies=[bodies[i] for i in origin], topic=topic,
                      vias=[vias[i] for i in origin] if vias is not None else None)
        else:
            run = Run(self.seq + 1, topics, blob=pub.blob, bodies=pub.bodies, vias=vias,
                      topic=topic)
        fits = self._admissible(run) if self._blocking and len(run) else len(run)
        consumed = n if fits == len(run) else (origin[fits] if origin else fits)
        result = Published(consumed, fits, sum(1 for i in looped if i < consumed))
        self.looped += result.looped
        if consumed < n:
            result.rest = pub if consumed == 0 else pub.tail(consumed)
        if fits < len(run):
            run = run.slice(0, fits)
        if not fits:
            return result
        result.first, result.last = run.first, run.last
        self.seq = run.last
        self.published += fits
        self._remember(run)
        woken = result.woken
        for sub in self._live:
            part = sub.select(run)
            if part is not None:
                sub.push(part)
                woken.append(sub)
        run.compact()      # history keeps the encoded form only
        return result

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

    def _remember(self, run: Run) -> None:
        """Keep ``run`` in history; forget the oldest events beyond the limit. The
        oldest run is forgotten in part by skipping its first events (slicing it
        would decode it), so memory holds at most one publication more."""
        history = self.history
        history.append(run)
        self.history_size += len(run)
        excess = self.history_size - self.history_limit
        while excess > 0:
            held = len(history[0]) - self._history_skip
            if held <= excess:
                history.popleft()
                self._history_skip = 0
                self.history_size -= held
                excess -= held
            else:
                self._history_skip += excess
                self.history_size -= excess
                excess = 0

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
        while buffer and (count < max_events or type(buffer[0]) is _Hole):
            item = buffer.popleft()
            if type(item) is _Hole:
                gaps.append([count, item.count, "dropped"])   # type: ignore[union-attr]
                sub.holes -= 1
            else:
                runs.append(item)  # type: ignore[arg-type]
                count += len(item)  # type: ignore[arg-type]
        sub.size -= count
        sub.delivered += count
        return Taken(runs, gaps, sub.dropped, bool(buffer),
                     sub.policy == "block" and count > 0)

    def _replay(self, sub: Subscription, max_events: int) -> Taken:
        assert sub.cursor is not None
        gaps: list[list[Any]] = []
        first = self.first_seq()
        if sub.cursor < first:
            gaps.append([0, None, "history"])
            sub.cursor = first
        history = self.history
        index = max(0, bisect_right(history, sub.cursor, key=lambda r: r.first) - 1)
        runs: list[Run] = []
        count = scanned = 0
        while index < len(history) and count < max_events and scanned < REPLAY_SCAN:
            run = history[index]
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
        return sub is not None and (sub.cursor is not None or bool(sub.buffer)
                                    or sub.lost_front > 0)

    def stats(self) -> dict[str, Any]:
        """Counters and every subscription's state, as msgpack-able data."""
        return {"name": self.name, "incarnation": self.incarnation, "seq": self.seq,
                "first": self.first_seq(), "history": self.history_size,
                "published": self.published, "looped": self.looped,
                "subscriptions": {sid: sub.stats()
                                  for sid, sub in self.subscriptions.items()}}


def _check_topics(topics: Any) -> tuple[str, ...]:
    if isinstance(topics, str) or not isinstance(topics, (list, tuple)):
        raise Rejected('topics must be a list of topic prefixes, e.g. ["link/", '
                       '"alarm/"] ([""] for every topic)')
    if not topics or len(topics) > MAX_PREFIXES:
        raise Rejected(f"give 1 to {MAX_PREFIXES} topic prefixes ([\"\"] for every topic)")
    for prefix in topics:
        if not isinstance(prefix, str) or len(prefix) > MAX_TOPIC_LEN:
            raise Rejected(f"topic prefix {prefix!r:.40} must be a str of at most "
                           f"{MAX_TOPIC_LEN} characters")
    return tuple(topics)


def _check_event_topics(topics: Any) -> None:
    if type(topics) is not list or not set(map(type, topics)) <= {str}:
        raise Rejected("a publication's topics must be a list of str")
    if topics and max(map(len, topics)) > MAX_TOPIC_LEN:
        raise Rejected(f"an event's topic is longer than {MAX_TOPIC_LEN} characters")


def _check_via(via: Any) -> tuple[str, ...] | None:
    if not via:
        return None
    if not isinstance(via, (list, tuple)) or len(via) > MAX_VIA or \
            not all(type(v) is str for v in via):
        raise Rejected(f"an event's via must list at most {MAX_VIA} channel names")
    return tuple(via)


# -- the channel's messages (bodies of posa messages; see docs/event-channel.md) --
def parse_publish(body: Any) -> Publication:
    """``{"op": "publish", "topics": [str, ...] | str, "bodies": BIN, "vias":
    [...]?}``, BIN a msgpack array of the bodies, one topic str standing for
    all when they share it -> ``Publication`` (checked by
    ``ChannelCore.publish``). Raises ``Rejected`` if it is not one."""
    topics, blob, vias = body.get("topics"), body.get("bodies"), body.get("vias")
    if (type(topics) is not list and type(topics) is not str) or type(blob) is not bytes \
            or (vias is not None and type(vias) is not list):
        raise Rejected('a publication is {"op": "publish", "topics": [str, ...] (or one '
                       'str for all), "bodies": msgpack array of the bodies}')
    return Publication(topics, blob=blob, vias=vias)


def parse_delivery(body: Any) -> tuple[int, list[list[Any]], list[list[Any]], int, int]:
    """A delivery's body -> (incarnation, runs, gaps, dropped, head).

    ``{"ch": name, "inc": int, "runs": [[seqs, topics, BIN(, vias)], ...],
    "gaps": [[index, count|nil, reason], ...]?, "dropped": int, "head": int}``:
    ``seqs`` is the first seq of consecutive ones or a list of seqs, ``topics``
    a list or one str for all, BIN a msgpack array of the bodies. Raises
    ``ProtocolError`` if it is not one."""
    try:
        inc, runs, gaps = body["inc"], body["runs"], body.get("gaps") or []
        dropped, head = body["dropped"], body["head"]
    except (TypeError, KeyError, AttributeError):
        raise ProtocolError("not a channel delivery: expected a map with inc, runs, "
                            "dropped and head") from None
    if not (type(inc) is int and type(runs) is list and type(gaps) is list
            and type(dropped) is int and type(head) is int
            and all(map(_is_run, runs)) and all(map(_is_gap, gaps))):
        raise ProtocolError("malformed channel delivery: runs must be [seqs, topics, "
                            "bodies(, vias)] and gaps [index, count, reason]")
    return inc, runs, gaps, dropped, head


def _is_run(item: Any) -> bool:
    if type(item) is not list or not 3 <= len(item) <= 4:
        return False
    seqs, topics, blob = item[0], item[1], item[2]
    return (type(blob) is bytes
            and (type(topics) is str or (type(topics) is list
                                         and set(map(type, topics)) <= {str}))
            and (type(seqs) is int or (type(seqs) is list and set(map(type, seqs)) <= {int}))
            and (len(item) == 3 or type(item[3]) is list))


def _is_gap(g: Any) -> bool:
    return type(g) is list and len(g) == 3 and type(g[0]) is int and g[0] >= 0 \
        and (g[1] is None or type(g[1]) is int) and g[2] in ("dropped", "history")


class SubscriberState:
    """The subscriber's side: turns deliveries into events, notices holes.

    ``last_seq`` is the seq up to which this subscriber has everything that
    matched (except the holes it was told of); a re-subscription resumes after
    it, and anything at or below it that arrives again is dropped as a
    duplicate. ``incarnation`` is the channel run it follows. Counters:
    ``gaps`` (holes noticed), ``missed`` (events known lost), ``dropped`` (the
    channel's drop count for this subscription, as last reported), ``head``
    (the channel's last seq, as last reported), ``duplicates``."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.incarnation: int | None = None
        self.last_seq = 0
        self.gaps = 0
        self.missed = 0
        self.dropped = 0
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
        """The new events of one delivery, in order, each hole announced by the
        event after it. Raises ``ProtocolError`` for bodies that do not decode."""
        self.dropped, self.head = dropped, head
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
            if len(item) == 4:
                if len(item[3]) != n:
                    raise ProtocolError("delivery: a run needs one via per body")
                via_iter = [tuple(v) if v else () for v in item[3]]
            events.extend(map(_new_event, zip(seqs, topics, bodies, repeat(channel),
                                              via_iter, repeat(None))))
        if inc != self.incarnation:
            if self.incarnation is not None:
                self._note(Gap("restart", self.last_seq, None))
            self.incarnation = inc
            self.last_seq = 0
        if not gaps and self._pending is None and events \
                and events[0].seq > self.last_seq:
            self.last_seq = events[-1].seq
            return events
        holes: dict[int, Gap] = {}
        for index, count, reason in gaps:
            hole = Gap(reason, 0, count)
            holes[index] = holes[index].merged(hole) if index in holes else hole
        out: list[Event] = []
        for i, event in enumerate(events):
            hole = holes.get(i)
            if hole is not None:
                self._note(Gap(hole.reason, self.last_seq, hole.count))
            if event.seq <= self.last_seq:
                self.duplicates += 1
                continue
            self.last_seq = event.seq
            if self._pending is not None:
                event = event._replace(gap=self._pending)
                self._pending = None
            out.append(event)
        tail = holes.get(len(events))
        if tail is not None:
            self._note(Gap(tail.reason, self.last_seq, tail.count))
        return out

    def _note(self, gap: Gap) -> None:
        self.gaps += 1
        if gap.count is not None:
            self.missed += gap.count
        self._pending = gap if self._pending is None else self._pending.merged(gap)
        self.last_gap = self._pending
