"""The Event Channel service: publishers and subscribers meet at a named channel.

Publishers and subscribers never meet: both talk to an ``EventChannel`` by its
name, wherever it runs (embedded in a process, or standalone with
``posa channel NAME``). Towards publishers the channel is a subscriber, towards
subscribers a publisher; ``Publisher`` and ``Subscriber`` are the proxies that
hide which process each of the three lives in. The channel's decisions
(sequence, history, filters, buffers, drops, loops) are ``ChannelCore``'s
(``posa.channel.core``); this module moves events in and out of it, speaking
the protocol of ``posa.channel.protocol`` (every request is parsed and
dispatched through its table, ``CHANNEL``).

Threads of a channel, and why:
- the process's reactor decodes frames and acknowledges them (``Peer``);
- one *ingest* thread takes the channel peer's inbox: publications go into the
  core, control requests (subscribe, renew, unsubscribe, stats) are answered.
  The inbox is small and bounded, so when ingest stops taking (see ``block``)
  the peer stops reading, publishers' windows fill and they wait;
- one *delivery* thread serving every subscription, each a lane
  (``posa.channel.delivery``, ``posa.channel.lane``): threads do not grow
  with subscribers;
- at most two *lookup* helpers (``posa.channel.lookups``), started when first
  needed: they ask the registry about subscribers' names, so that the delivery
  thread never waits for a remote dispatcher;
- one thread per ``upstream`` channel, a ``Subscriber`` feeding this channel.

``block`` policy: ``publish`` accepts the prefix of a batch that fits; the rest
is parked (at most ``park_limit`` batches, while ingest keeps answering
requests); when the park is full ingest waits, so publishers wait, with their
timeout. Whoever frees room (the delivery thread) moves parked batches in.

A malformed message never stops the channel: a request is answered with the
table's ``Rejected``; a one-way message (or a publication the core refuses) is
dropped, counted in ``counters["rejected"]`` and logged (the first ten).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.channel.control import ChannelControl
from posa.channel.core import ChannelCore, Published
from posa.channel.delivery import Delivery
from posa.channel.droplog import DropLog
from posa.channel.keeping import Keeping, is_publish
from posa.channel.predicate import compile_filter
from posa.channel.protocol import CHANNEL, FRAME_MARGIN, Publication, publication
from posa.channel.store import HistoryStore, Stored, open_store
from posa.channel.upstream import follow
from posa.delivery.budget import seconds
from posa.errors import Closed, PosaError, Rejected, Timeout
from posa.naming.registration import Registry
from posa.naming.resolve import open_registry
from posa.peer import Peer
from posa.wire.codec import CodecLimits, Kind, Message
from posa.wire.names import validate_name

__all__ = ["EventChannel"]

log = logging.getLogger("posa.channel.service")
_GIVEN_UP = "frames a subscriber has not acknowledged by then are sent again on a new stream"

COMMIT_EVERY = 64       # publications the ingest thread numbers in one transaction at most

_MISUSED = {  # oneway -> why a message of the wrong kind is refused
    True: "channel operation {!r} is one-way: send it, do not request it",
    False: "channel operation {!r} is a request: request it (the answer comes "
           "back), do not send it",
}


def _core_of(name: str, stored: Stored, history: int, history_bytes: int | None,
             history_age: float | None) -> ChannelCore:
    """The core of a channel, with what its store kept."""
    core = ChannelCore(name, stored.incarnation, history=history,
                       history_bytes=history_bytes, history_age=history_age, seq=stored.seq)
    for run, stamp, pid, pseq in stored.runs:
        core.restore(run, stamp, pid, pseq)
    return core


class EventChannel(ChannelControl):
    """A named event channel: publishers and subscribers meet here.

    ``history`` events are kept for replay; ``max_batch`` events at most go in
    one delivery; ``window`` delivery frames may be unacknowledged per
    subscriber; ``inbox`` frames may wait to be ingested and ``park_limit``
    publications may wait for ``block`` subscribers before publishers are made
    to wait. ``upstream`` names channels this one subscribes to (chaining),
    selecting with ``upstream_topics``/``upstream_filter`` under
    ``upstream_policy``. ``credential`` owns the name: give the same one to a
    restarted channel so it can take the name over at once. The name is
    registered with ``registry``, or with the dispatcher at ``dispatcher``, or
    in the process's embedded registry.

    ``store`` keeps the history on disk (a file path: SQLite; default None:
    memory only, and a restart begins a new incarnation); with one, the seqs
    and the history continue across restarts and an event acknowledged to its
    publisher is in the store first. Retention: ``history`` events, at most
    ``history_bytes`` bytes and ``history_age`` seconds (None: no bound).
    Drops are logged at most once per cause per ``drop_log_interval`` s."""

    def __init__(self, name: str, *, registry: Registry | None = None,
                 dispatcher: str | None = None,
                 listen: str | None = None, history: int = 10000,
                 credential: str | None = None, lease: float = 10.0,
                 upstream: Sequence[str] = (), upstream_topics: Sequence[str] = ("",),
                 upstream_filter: Any = None, upstream_policy: str = "drop-oldest",
                 upstream_buffer: int = 10000, max_batch: int = 4096, window: int = 8,
                 inbox: int = 32, park_limit: int = 8, send_timeout: float = 2.0,
                 limits: CodecLimits | None = None,
                 store: str | HistoryStore | None = None, history_bytes: int | None = None,
                 history_age: float | None = None, drop_log_interval: float = 10.0,
                 authenticator: Authenticator | None = None) -> None:
        self.name = validate_name(name)
        for up in upstream:
            validate_name(up)
        if upstream_filter is not None:
            compile_filter(upstream_filter)
        if max_batch < 1 or window < 1 or inbox < 2 or park_limit < 1:
            raise ValueError("max_batch, window, park_limit must be >= 1 and inbox >= 2")
        send_timeout = seconds(send_timeout, "send_timeout", _GIVEN_UP, zero=False)
        self.store = open_store(store)
        stored = self.store.load()
        self.core = _core_of(self.name, stored, history, history_bytes, history_age)
        self._closing = threading.Event()
        self.keeping = Keeping(self.store, self._closing, self.core) if self.store.durable else None
        self.max_batch, self.window, self.park_limit, self.send_timeout = (
            max_batch, window, park_limit, send_timeout)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._parked: deque[Publication] = deque()
        self._lanes, self._delivery = {}, Delivery(self)     # a lane per subscription
        self._entry: int | None = None      # the journal entry of the message in hand
        self._closed, self._accepting, self.sweeps = False, True, 0
        self.counters = {"rejected": 0, "undeliverable": 0, "expired": 0, "resent": 0}
        self.drop_log = DropLog(self.name, log, drop_log_interval)
        self._handlers = CHANNEL.bind(self)
        with self._lock:
            for entry, pub in stored.pending:   # acknowledged, not numbered: now
                pub.entry = entry
                self._offer(pub)
            self._commit()
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        self.peer = self._open_peer(listen=listen, credential=credential, lease=lease,
                                    limits=limits, inbox_size=inbox,
                                    authenticator=authenticator)
        self._max_bytes = self.peer.codec.limits.max_frame_size - FRAME_MARGIN
        self._threads: list[threading.Thread] = []
        selection = {"topics": list(upstream_topics), "filter": upstream_filter,
                     "policy": upstream_policy, "buffer": upstream_buffer}
        self._start_threads(upstream, selection)

    def _open_peer(self, **options: Any) -> Peer:
        """The channel's peer, registered as a channel (``posa send`` refuses to send
        it a message); with a store, each reactor turn's publications are journaled
        before their acknowledgements go out."""
        try:
            return Peer(self.name, registry=self.registry, meta={"kind": "channel"},
                        on_run=self.keeping.journal_run if self.keeping is not None
                        else None, **options)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            self.store.close()
            self._delivery.close()
            raise

    def _start_threads(self, upstream: Sequence[str], selection: dict[str, Any]) -> None:
        """Ingest, delivery, and a subscriber of each ``upstream`` channel."""
        self._start(self._ingest, "ingest")
        self._start(self._delivery.run, "deliver")
        # an upstream subscriber seals with the channel's key (keys on: docs/security.md)
        selection = dict(selection, authenticator=self.peer.authenticator)
        for up in upstream:
            self._start(functools.partial(
                follow, self.name, up, self.registry, selection, self._accept_upstream,
                self._closing, self.max_batch), f"upstream-{up}")

    def _start(self, target: Callable[[], None], role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"posa-channel-{self.name}-{role}",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    @property
    def address(self) -> str:
        return self.peer.address

    @property
    def incarnation(self) -> int:
        return self.core.incarnation

    @property
    def seq(self) -> int:
        """The seq of the last event accepted."""
        return self.core.seq

    def __repr__(self) -> str:
        return f"EventChannel({self.name!r} at {self.address}, seq {self.core.seq})"

    def __enter__(self) -> EventChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest: publications and control requests -----------------------------
    def _ingest(self) -> None:
        sweep_at = time.monotonic() + 0.5
        keeping = self.keeping
        while True:
            batch = keeping is not None and keeping.uncommitted > 0
            try:    # once closing, take in what the inbox holds still, then stop
                msg = self.peer.receive(timeout=0 if self._closing.is_set() or batch
                                        else 0.25)
            except (Timeout, Closed) as exc:
                if batch:                   # the inbox is empty: one commit for all
                    with self._lock:
                        self._commit()
                    continue
                if self._closing.is_set() or isinstance(exc, Closed):
                    return
                msg = None
            if msg is not None:
                self._handle(msg)
                if keeping is not None and keeping.uncommitted >= COMMIT_EVERY:
                    with self._lock:
                        self._commit()
            now = time.monotonic()
            if now >= sweep_at:
                self._sweep(now)
                sweep_at = now + 0.5

    def _sweep(self, now: float) -> None:
        """Twice a second: expired subscriptions, retention by age, the store's
        trim, the drop log."""
        self.sweeps += 1
        self._expire(now)
        with self._lock:
            self.core.kept.expire(time.time())
            totals = self._drop_totals()
        if self.keeping is not None:
            self.keeping.trim(self.core)
        self.drop_log.observe(totals, now)

    def _handle(self, msg: Message) -> None:
        """Parse a message by the table and run its operation's handler; a
        request gets the answer or the error, a one-way message none."""
        kind = msg.kind
        self._entry = None
        if self.keeping is not None and is_publish(msg):
            try:
                self._entry = self.keeping.entry_for(self._closing)
            except Closed:
                return      # journaled (or not acknowledged): the next run numbers it
        try:
            op, fields = CHANNEL.parse(msg.body)
            if kind != (Kind.SEND if op.oneway else Kind.REQUEST):
                raise Rejected(_MISUSED[op.oneway].format(op.name))
        except Rejected as exc:
            if kind == Kind.REQUEST:
                self.peer.reply_error(msg, exc)
            else:
                self._reject(msg, exc)
            return
        handler = self._handlers[op.name]
        if op.oneway:
            handler(msg, fields)
            return
        try:
            answer = handler(msg, fields)
        except PosaError as exc:
            self.peer.reply_error(msg, exc)
            return
        self.peer.reply(msg, answer)

    def _reject(self, msg: Message, exc: PosaError) -> None:
        self.counters["rejected"] += 1
        if self._entry and self.keeping is not None:
            with self._lock:
                self.keeping.record(Publication([], entry=self._entry), None)
        if self.counters["rejected"] <= 10:
            log.warning("channel %s: refused a message from %r: %s", self.name,
                        msg.sender, exc)

    def _op_publish(self, msg: Message, fields: dict[str, Any]) -> None:
        pub = publication(fields)
        pub.entry = self._entry
        self._accept(pub)

    def _accept(self, pub: Publication) -> None:
        """Offer a publication; wait (ingest or upstream thread) while the park is full."""
        with self._lock:
            if self._parked:
                self._parked.append(pub)
            else:
                self._offer(pub)
            if len(self._parked) < self.park_limit:
                return
            self._commit()          # what is parked behind must reach subscribers
            stalled = time.monotonic()
            while len(self._parked) >= self.park_limit and not self._closing.is_set():
                self._room.wait(0.5)
            # requests waited too: don't count the stall against subscribers' leases
            waited = time.monotonic() - stalled
            for lane in self._lanes.values():
                lane.expires += waited

    def _offer(self, pub: Publication) -> bool:
        """Publish into the core (lock held), keep it in the store before anyone
        can take it, park what does not fit. True if all fit."""
        now = time.time()
        result: Published | None
        try:
            result = self.core.publish(pub, now)
        except Rejected as exc:
            self.counters["rejected"] += 1
            log.warning("channel %s: refused a publication: %s", self.name, exc)
            result = None
        if self.keeping is not None:
            self.keeping.record(pub, result)
        if result is None:
            return True
        if result.woken:
            self._delivery.wake()
        for sub in result.ended:
            log.info("channel %s: subscription of %r ended (policy %s: its buffer of %d "
                     "events was full)", self.name, sub.id, sub.policy, sub.limit)
            self._end(sub.id)
        if result.rest is not None:
            self._parked.appendleft(result.rest)
            return False
        return True

    def _commit(self) -> None:
        """With a store: write what was accepted since the last commit, then let
        subscribers take it (lock held)."""
        if self.keeping is None:
            return
        self.keeping.commit(self.core, time.time())
        if self._lanes:
            self._delivery.wake()

    def _unpark(self) -> None:
        """Move parked publications into the core as far as room allows (lock held)."""
        parked = self._parked
        while parked:
            if not self._offer(parked.popleft()):
                break
        self._commit()
        if len(parked) < self.park_limit:
            self._room.notify_all()

    # -- chaining ------------------------------------------------------------------
    def _accept_upstream(self, pub: Publication) -> None:
        if self.keeping is not None and not self.keeping.journal_one(pub):
            return      # closing before the store took it: not taken
        self._accept(pub)
        with self._lock:
            self._commit()

    # -- shutdown ----------------------------------------------------------------------
    def close(self, linger: float = 2.0) -> None:
        """Stop taking publications, deliver what is buffered (up to ``linger``
        seconds), unregister the name and stop every thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self.peer.close()
        deadline = time.monotonic() + linger
        with self._lock:
            self._room.notify_all()
            for lane in self._lanes.values():
                lane.stop(deadline)
        self._delivery.wake()
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()) + self.send_timeout)
        if not any(thread.is_alive() for thread in self._threads):
            self._delivery.close()
        if self._owns_registry:
            self.registry.close()
        with self._lock:
            self.store.close()

