"""Event Channel: publish-subscribe between processes, through a named channel.

Publishers and subscribers never meet: both talk to an ``EventChannel`` by its
name, wherever it runs (embedded in a process, or standalone with
``posa channel NAME``).  Towards publishers the channel is a subscriber, towards
subscribers a publisher; ``Publisher`` and ``Subscriber`` are the proxies that
hide which process each of the three lives in.  The channel's decisions
(sequence, history, filters, buffers, drops, loops) are ``posa.channel.core``'s
``ChannelCore``; this module moves events in and out of it.

Threads of a channel, and why:
- the process's reactor decodes frames and acknowledges them (``Peer``);
- one *ingest* thread takes the channel peer's inbox: publications go into the
  core, control requests (subscribe, renew, unsubscribe, stats) are answered.
  The inbox is small and bounded, so when ingest stops taking (see ``block``)
  the peer stops reading, publishers' windows fill and they wait;
- one *delivery* thread per subscription takes whatever is buffered for it (up
  to ``max_batch`` events), encodes it once and sends it as one message.  It may
  block on flow control; the others and the reactor go on.  A stalled
  subscriber therefore costs its own buffer (``limit`` events, then its policy)
  plus ``window`` frames in flight, nothing more;
- one thread per ``upstream`` channel, a ``Subscriber`` feeding this channel.

``block`` policy: ``publish`` accepts the prefix of a batch that fits; the rest
is parked (at most ``park_limit`` batches, while ingest keeps answering
requests); when the park is full ingest waits, so publishers wait, with their
timeout.  Whoever frees room (a delivery thread) moves parked batches in.

Wire (bodies of posa messages; see docs/event-channel.md): to the channel
``{"op": "publish", "topics": [...], "bodies": BIN}`` (one-way; BIN is one
msgpack array of the bodies) and requests ``{"op": "subscribe" | "renew" |
"unsubscribe" | "stats", ...}``; to a subscriber ``{"ch", "inc", "runs":
[[seqs, topics, BIN], ...], "gaps", "dropped", "head"}``.  A publisher encodes
the bodies of a batch once; the channel passes that blob on to every
subscriber that takes the whole batch, decoding only for filters.  Encoding
happens before a message enters the reliable stream, which bounds its size.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import logging
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgpack

from posa.channel.core import (
    POLICIES,
    ChannelCore,
    Event,
    Gap,
    Publication,
    Run,
    SubscriberState,
    parse_delivery,
    parse_publish,
)
from posa.channel.predicate import compile_filter
from posa.delivery.forwarder import Sender
from posa.errors import (
    Closed,
    NameNotFound,
    PosaError,
    ProtocolError,
    Rejected,
    Timeout,
    TransportError,
)
from posa.naming.registry import Registry, resolver
from posa.naming.resolve import embedded_registry
from posa.peer import Peer
from posa.runtime.leases import keeper
from posa.wire.codec import Codec, CodecLimits, Kind, Message
from posa.wire.names import validate_name

__all__ = ["EventChannel", "Publisher", "Subscriber", "Event", "Gap",
           "AsyncPublisher", "AsyncSubscriber", "add_parser", "run"]

log = logging.getLogger("posa.channel.eventchannel")

SUB_LEASE = 6.0          # a subscription lives this long without a renewal
FRAME_MARGIN = 4096      # bytes of a frame kept for the envelope around a batch
_packer_local = threading.local()


def _packer() -> msgpack.Packer:
    try:
        return _packer_local.packer
    except AttributeError:
        packer = _packer_local.packer = msgpack.Packer(use_bin_type=True)
        return packer


def encode_chunks(build: Callable[[int, int], Any], n: int, max_bytes: int
                  ) -> tuple[list[tuple[int, int, bytes]], list[int]]:
    """Encode items ``0..n`` as few msgpack blobs of at most ``max_bytes``.

    ``build(start, end)`` gives the value for a slice. Returns the chunks
    ``(start, end, blob)`` in order, and the indexes of items that cannot be
    encoded at all (not msgpack data, or too large alone)."""
    packer = _packer()
    chunks: list[tuple[int, int, bytes]] = []
    bad: list[int] = []
    pending = [(0, n)] if n else []
    while pending:
        start, end = pending.pop()
        try:
            blob: bytes | None = packer.pack(build(start, end))
        except (TypeError, ValueError, OverflowError):
            packer.reset()
            blob = None
        if blob is not None and len(blob) <= max_bytes:
            chunks.append((start, end, blob))
        elif end - start == 1:
            bad.append(start)
        else:
            mid = (start + end) // 2
            pending.append((mid, end))
            pending.append((start, mid))
    return chunks, bad


def open_registry(registry: Registry | None, dispatcher: str | None
                  ) -> tuple[Registry, bool]:
    """The registry to use: the one given, a client of the dispatcher at
    ``dispatcher`` (owned: close it), or the process's embedded one."""
    if registry is not None:
        return registry, False
    if dispatcher is not None:
        from posa.naming.client import RegistryClient
        return RegistryClient(dispatcher), True
    return embedded_registry(), False


class _Delivery:
    """A subscription's delivery thread and its lease."""

    __slots__ = ("sub_id", "cond", "thread", "stopped", "drain_until", "expires", "lease")

    def __init__(self, sub_id: str, cond: threading.Condition, lease: float) -> None:
        self.sub_id = sub_id
        self.cond = cond
        self.thread: threading.Thread | None = None
        self.stopped = False
        self.drain_until = 0.0
        self.lease = lease
        self.expires = time.monotonic() + lease


class EventChannel:
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
    in the process's embedded registry."""

    def __init__(self, name: str, *, registry: Registry | None = None,
                 dispatcher: str | None = None,
                 listen: str | None = None, history: int = 10000,
                 credential: str | None = None, lease: float = 10.0,
                 upstream: Sequence[str] = (), upstream_topics: Sequence[str] = ("",),
                 upstream_filter: Any = None, upstream_policy: str = "drop-oldest",
                 upstream_buffer: int = 10000, max_batch: int = 4096, window: int = 8,
                 inbox: int = 32, park_limit: int = 8, send_timeout: float = 2.0,
                 limits: CodecLimits | None = None) -> None:
        self.name = validate_name(name)
        for up in upstream:
            validate_name(up)
        if upstream_filter is not None:
            compile_filter(upstream_filter)
        if max_batch < 1 or window < 1 or inbox < 2 or park_limit < 1:
            raise ValueError("max_batch, window, park_limit must be >= 1 and inbox >= 2")
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        self.core = ChannelCore(self.name, secrets.randbits(62) + 1, history=history)
        self.max_batch = max_batch
        self.window = window
        self.park_limit = park_limit
        self.send_timeout = send_timeout
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._parked: deque[Publication] = deque()
        self._deliveries: dict[str, _Delivery] = {}
        self._closing = threading.Event()
        self._closed = False
        self.counters = {"rejected": 0, "undeliverable": 0, "expired": 0}
        try:
            self.peer = Peer(self.name, registry=self.registry, listen=listen,
                             credential=credential, lease=lease, limits=limits,
                             inbox_size=inbox)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            raise
        self._max_bytes = self.peer.codec.limits.max_frame_size - FRAME_MARGIN
        self._threads: list[threading.Thread] = []
        self._start(self._ingest, "ingest")
        for up in upstream:
            self._start(functools.partial(
                self._upstream, up, list(upstream_topics), upstream_filter,
                upstream_policy, upstream_buffer), f"upstream-{up}")

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

    def stats(self) -> dict[str, Any]:
        """Counters and every subscription's state (buffered, dropped, delivered)."""
        with self._lock:
            stats = self.core.stats()
            stats["parked"] = len(self._parked)
        stats.update(self.counters)
        return stats

    # -- ingest: publications and control requests -----------------------------
    def _ingest(self) -> None:
        sweep_at = time.monotonic() + 0.5
        while not self._closing.is_set():
            try:
                msg = self.peer.receive(timeout=0.25)
            except Timeout:
                msg = None
            except Closed:
                return
            if msg is not None:
                self._handle(msg)
            now = time.monotonic()
            if now >= sweep_at:
                self._expire(now)
                sweep_at = now + 0.5

    def _handle(self, msg: Message) -> None:
        body = msg.body
        op = body.get("op") if type(body) is dict else None
        if msg.kind == Kind.SEND and op == "publish":
            try:
                pub = parse_publish(body)
            except Rejected as exc:
                self._reject(msg, exc)
                return
            self._accept(pub)
            return
        if msg.kind != Kind.REQUEST:
            self._reject(msg, Rejected(f"unexpected {msg!r}"))
            return
        handler = self._OPS.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise Rejected(f"unknown channel operation {op!r:.40}; use subscribe, "
                               "renew, unsubscribe or stats (publish is one-way)")
            answer = handler(self, msg.sender, body)
        except PosaError as exc:
            self.peer.reply_error(msg, exc)
            return
        self.peer.reply(msg, answer)

    def _reject(self, msg: Message, exc: PosaError) -> None:
        self.counters["rejected"] += 1
        if self.counters["rejected"] <= 10:
            log.warning("channel %s: refused a message from %r: %s", self.name,
                        msg.sender, exc)

    def _accept(self, pub: Publication) -> None:
        """Offer a publication; wait (ingest or upstream thread) while the park is full."""
        with self._lock:
            if self._parked:
                self._parked.append(pub)
            else:
                self._offer(pub)
            if len(self._parked) < self.park_limit:
                return
            stalled = time.monotonic()
            while len(self._parked) >= self.park_limit and not self._closing.is_set():
                self._room.wait(0.5)
            # requests waited too: don't count the stall against subscribers' leases
            waited = time.monotonic() - stalled
            for delivery in self._deliveries.values():
                delivery.expires += waited

    def _offer(self, pub: Publication) -> bool:
        """Publish into the core (lock held); park what does not fit. True if all fit."""
        try:
            result = self.core.publish(pub)
        except Rejected as exc:
            self.counters["rejected"] += 1
            log.warning("channel %s: refused a publication: %s", self.name, exc)
            return True
        deliveries = self._deliveries
        for sub in result.woken:
            delivery = deliveries.get(sub.id)
            if delivery is not None:
                delivery.cond.notify()
        if result.rest is not None:
            self._parked.appendleft(result.rest)
            return False
        return True

    def _unpark(self) -> None:
        """Move parked publications into the core as far as room allows (lock held)."""
        parked = self._parked
        while parked:
            if not self._offer(parked.popleft()):
                break
        if len(parked) < self.park_limit:
            self._room.notify_all()

    # -- control requests (ingest thread) ---------------------------------------
    def _subscribe(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        if not sender:
            raise Rejected("subscribe from a named peer: deliveries go to its name")
        lease = body.get("lease", SUB_LEASE)
        if not isinstance(lease, (int, float)) or not 0.5 <= lease <= 3600:
            raise Rejected("a subscription lease must be 0.5 to 3600 seconds")
        with self._lock:
            answer = self.core.subscribe(
                sender, topics=body.get("topics", [""]), filter=body.get("filter"),
                policy=body.get("policy", "drop-oldest"), limit=body.get("buffer", 1000),
                from_seq=body.get("from_seq"), incarnation=body.get("inc"),
                skip_via=body.get("skip_via", []))
            delivery = self._deliveries.get(sender)
            if delivery is None or delivery.stopped:
                delivery = self._deliveries[sender] = _Delivery(
                    sender, threading.Condition(self._lock), float(lease))
                delivery.thread = self._start(
                    functools.partial(self._deliver, delivery), "deliver")
            delivery.lease = float(lease)
            delivery.expires = time.monotonic() + lease
            delivery.cond.notify()
        return {"inc": answer.incarnation, "head": answer.head, "first": answer.first,
                "replay_from": answer.replay_from, "restarted": answer.restarted}

    def _renew(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            delivery = self._deliveries.get(sender)
            sub = self.core.subscriptions.get(sender)
            if delivery is None or delivery.stopped or sub is None:
                return {"known": False, "inc": self.core.incarnation}
            delivery.expires = time.monotonic() + delivery.lease
            return {"known": True, "inc": self.core.incarnation, "head": self.core.seq,
                    "dropped": sub.dropped}

    def _unsubscribe(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            sub = self.core.subscriptions.get(sender)
            stats = sub.stats() if sub is not None else {}
            self._end(sender)
        return stats

    def _stats(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    _OPS: dict[str, Callable[[EventChannel, str, dict[str, Any]], dict[str, Any]]] = {
        "subscribe": _subscribe, "renew": _renew, "unsubscribe": _unsubscribe,
        "stats": _stats}

    def _end(self, sub_id: str) -> None:
        """Stop a subscription and its delivery thread (lock held)."""
        delivery = self._deliveries.pop(sub_id, None)
        if delivery is not None:
            delivery.stopped = True
            delivery.cond.notify()
        if self.core.unsubscribe(sub_id) is not None and self._parked:
            self._unpark()

    def _expire(self, now: float) -> None:
        with self._lock:
            for sub_id, delivery in list(self._deliveries.items()):
                if delivery.expires < now:
                    log.info("channel %s: subscription of %r expired (no renewal)",
                             self.name, sub_id)
                    self.counters["expired"] += 1
                    self._end(sub_id)

    # -- delivery (one thread per subscription) ----------------------------------
    def _deliver(self, delivery: _Delivery) -> None:
        sub_id = delivery.sub_id
        sender = Sender(self.name, resolve=resolver(self.registry), codec=self.peer.codec,
                        options=self.peer.options, window=self.window, ack_timeout=2.0)
        core, lock, cond = self.core, self._lock, delivery.cond
        try:
            while True:
                with lock:
                    while not delivery.stopped and not core.pending(sub_id):
                        cond.wait()
                    if delivery.stopped and not (core.pending(sub_id) and
                                                 time.monotonic() < delivery.drain_until):
                        return
                    taken = core.take(sub_id, self.max_batch)
                    if taken is None:
                        return
                    if taken.freed and self._parked:
                        self._unpark()
                    head = core.seq
                if not taken.runs and not taken.gaps:
                    continue              # a replay pass that selected nothing
                for body in self._frames(taken.runs, taken.gaps, taken.dropped, head):
                    if not self._send(sender, delivery, body):
                        return
        finally:
            with lock:
                if self._deliveries.get(sub_id) is delivery:
                    self._end(sub_id)
            sender.close(linger=0)

    def _frames(self, runs: list[Run], gaps: list[list[Any]], dropped: int,
                head: int) -> list[dict[str, Any]]:
        """The deliveries for taken runs: as few as the frame size allows, each
        hole at its place. Runs that arrived encoded go out as they came."""
        segments: list[Any] = []       # ("gap", count, reason) or (run, blob)
        position, pending = 0, deque(gaps)
        for run in runs:
            while pending and pending[0][0] <= position:
                segments.append(("gap", *pending.popleft()[1:]))
            segments.extend(self._encode(run))
            position += len(run)
        segments.extend(("gap", *gap[1:]) for gap in pending)
        frames: list[dict[str, Any]] = []
        items: list[Any] = []
        holes: list[list[Any]] = []
        count = size = 0
        for segment in segments:
            if segment[0] == "gap":
                holes.append([count, segment[1], segment[2]])
                continue
            run, blob = segment
            weight = len(blob) + run.topics_size()
            if items and size + weight > self._max_bytes:
                frames.append(self._delivery(items, holes, dropped, head))
                items, holes, count, size = [], [], 0, 0
            items.append(run.wire(blob))
            count += len(run)
            size += weight
        frames.append(self._delivery(items, holes, dropped, head))
        return frames

    def _delivery(self, items: list[Any], holes: list[list[Any]], dropped: int,
                  head: int) -> dict[str, Any]:
        body = {"ch": self.name, "inc": self.core.incarnation, "runs": items,
                "dropped": dropped, "head": head}
        if holes:
            body["gaps"] = holes
        return body

    def _encode(self, run: Run) -> list[Any]:
        """(run, blob) pieces small enough for a frame; ("gap", n, "dropped")
        where bodies cannot be encoded at all."""
        budget = self._max_bytes - run.topics_size()
        if run.blob is not None and len(run.blob) <= budget:
            return [(run, run.blob)]
        bodies = run.body_list()
        chunks, bad = encode_chunks(lambda s, e: bodies[s:e], len(run), budget)
        if bad:
            self.counters["undeliverable"] += len(bad)
            log.warning("channel %s: %d event(s) cannot be encoded for delivery (nested "
                        "too deeply or too large); the subscriber is told of a gap",
                        self.name, len(bad))
        pieces: list[Any] = [(start, ("gap", 1, "dropped")) for start in bad]
        for start, end, blob in chunks:
            piece = run.slice(start, end)
            piece.blob = blob
            pieces.append((start, (piece, blob)))
        pieces.sort(key=lambda p: p[0])
        return [piece for _, piece in pieces]

    def _send(self, sender: Sender, delivery: _Delivery, body: dict[str, Any]) -> bool:
        sub_id = delivery.sub_id
        while True:
            try:
                sender.send(sub_id, body, timeout=self.send_timeout)
                return True
            except NameNotFound:
                return False
            except Timeout:
                queued = True    # the frame waits in the stream for acknowledgement
            except TransportError:
                queued = False   # the subscriber could not be reached at all
            # slow or unreachable: go on while it lives and is subscribed
            while True:
                if delivery.stopped and time.monotonic() >= delivery.drain_until:
                    return False
                try:
                    self.registry.lookup(sub_id)
                except NameNotFound:
                    return False
                except PosaError:
                    pass
                if not queued:
                    self._closing.wait(0.2)   # back off before connecting again
                    break
                try:
                    sender.flush(self.send_timeout)
                    return True
                except Timeout:
                    continue
                except TransportError:
                    queued = False

    # -- chaining ------------------------------------------------------------------
    def _upstream(self, upstream: str, topics: list[str], flt: Any, policy: str,
                  buffer: int) -> None:
        sub: Subscriber | None = None
        delay = 0.05
        # the upstream subscriber shares this channel's registry (never closes it)
        try:
            while not self._closing.is_set():
                if sub is None:
                    try:
                        sub = Subscriber(upstream, registry=self.registry, topics=topics,
                                         filter=flt, policy=policy, buffer=buffer,
                                         skip_via=[self.name], timeout=2.0)
                        delay = 0.05
                    except (NameNotFound, Timeout, TransportError) as exc:
                        log.info("channel %s: upstream %s not reachable yet (%s)",
                                 self.name, upstream, exc)
                        self._closing.wait(delay)
                        delay = min(delay * 2, 2.0)
                        continue
                try:
                    events = sub.receive_many(self.max_batch, timeout=0.25)
                except Timeout:
                    continue
                except Closed:
                    return
                self._accept(Publication([e.topic for e in events],
                                         bodies=[e.body for e in events],
                                         vias=[[*e.via, upstream] for e in events]))
        finally:
            if sub is not None:
                sub.close()

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
            for delivery in self._deliveries.values():
                delivery.stopped = True
                delivery.drain_until = deadline
                delivery.cond.notify()
            threads = [d.thread for d in self._deliveries.values() if d.thread is not None]
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()) + self.send_timeout)
        for thread in threads:
            thread.join(0.1)
        if self._owns_registry:
            self.registry.close()


def _subscriber_name(channel: str) -> str:
    token = secrets.token_hex(8)
    name = f"_posa/sub/{channel}/{token}"
    return name if len(name) <= 255 else f"_posa/sub/{token}"


class Publisher:
    """Publishes events to a channel by its name (fire and forget, batched).

    ``publish`` puts an event in a local buffer (at most ``buffer`` events) that
    one background thread sends in batches of up to ``batch`` events, as soon as
    a batch is full or ``linger`` seconds after its first event.  Delivery to the
    channel is reliable and ordered; ``flush`` waits until the channel has
    acknowledged everything published so far.  When the channel does not keep
    up (or a ``block`` subscriber stalls it) the buffer fills and ``publish``
    waits, up to its ``timeout``, then raises ``Timeout``.  An event whose body
    is not msgpack data is dropped, counted in ``rejected``, and reported by
    the next ``publish`` or ``flush`` with ``Rejected``.  ``sent`` counts the
    events handed to the channel."""

    def __init__(self, channel: str, *, registry: Registry | None = None,
                 dispatcher: str | None = None, batch: int = 1024, linger: float = 0.002, buffer: int = 65536,
                 window: int = 16, timeout: float = 10.0, limits: CodecLimits | None = None) -> None:
        self.channel = validate_name(channel)
        if batch < 1 or buffer < batch or window < 1 or linger < 0:
            raise ValueError("need batch >= 1, buffer >= batch, window >= 1, linger >= 0")
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        self.batch = batch
        self.linger = linger
        self.buffer = buffer
        self.timeout = timeout
        self._sender = Sender("", resolve=resolver(self.registry), window=window,
                              codec=Codec(limits))
        self._max_bytes = self._sender.codec.limits.max_frame_size - FRAME_MARGIN
        # publish() appends to the deque without a lock (atomic under the GIL)
        # and takes the condition only to wake the sending thread or to wait
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._in_flight = 0           # taken by the sending thread, not yet handed over
        self._flushes = 0             # flush requests made
        self._flushed = 0             # flush requests completed
        self._flush_error: PosaError | None = None
        self._error: PosaError | None = None     # reported once by publish/flush
        self._problem: PosaError | None = None   # why sending is stuck, for Timeout texts
        self._closing = False
        self._attention = False       # an error to report, or closing: publish() must look
        self._idle = False            # the sending thread waits for a first event
        self._lingering = False       # the sending thread waits for a batch to fill
        self.sent = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"posa-publisher-{channel}")
        self._thread.start()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Publisher({self.channel!r}, {len(self._queue)} queued, {self.sent} sent)"

    def publish(self, topic: str, body: Any = None, *, timeout: float | None = None) -> None:
        """Queue one event for the channel. Waits up to ``timeout`` (default: the
        publisher's; 0: not at all) while the local buffer is full, then raises
        ``Timeout``; ``Closed`` after ``close()``; ``Rejected`` for a topic that
        is not a str of at most 255 characters."""
        if type(topic) is not str or len(topic) > 255:
            raise Rejected(f"a topic must be a str of at most 255 characters, got "
                           f"{topic!r:.40}, e.g. 'link/down'")
        queue = self._queue
        if len(queue) >= self.buffer or self._attention:
            with self._cond:
                self._wait_for_room(timeout)
        queue.append((topic, body))
        # wake the sending thread only if it sleeps: idle, or letting a batch fill
        if self._idle or (self._lingering and len(queue) >= self.batch):
            with self._cond:
                self._cond.notify()

    def publish_many(self, events: Iterable[tuple[str, Any]], *,
                     timeout: float | None = None) -> int:
        """Queue ``(topic, body)`` pairs in order; returns how many. Same errors as
        ``publish``; on an error, the events before it are queued."""
        done = 0
        for topic, body in events:
            self.publish(topic, body, timeout=timeout)
            done += 1
        return done

    @property
    def pending(self) -> int:
        """Events published but not yet handed to the channel."""
        return len(self._queue) + self._in_flight

    def _wait_for_room(self, timeout: float | None) -> None:
        """With the condition held: raise a pending error, or wait for room."""
        if self._closing:
            raise Closed(f"the publisher for {self.channel!r} is closed")
        self._raise_error()
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while len(self._queue) >= self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                why = f" ({self._problem})" if self._problem is not None else ""
                raise Timeout(f"channel {self.channel!r} did not take events for {wait} s: "
                              f"the publisher's buffer of {self.buffer} events is full"
                              f"{why}; is the channel running, and are 'block' "
                              "subscribers keeping up?")
            self._cond.wait(remaining)
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            self._attention = self._closing
            raise error

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the channel acknowledged every event published so far.
        Raises ``Timeout`` (naming why, if known) or an error held for report."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            self._flushes += 1
            ticket = self._flushes
            self._cond.notify()
            while self._flushed < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    why = f" ({self._problem})" if self._problem is not None else ""
                    raise Timeout(f"events to channel {self.channel!r} not acknowledged "
                                  f"within {wait} s{why}; is the channel running?")
                self._cond.wait(remaining)
            error, self._flush_error = self._flush_error, None
            self._raise_error()
        if error is not None:
            raise error

    def close(self, timeout: float = 5.0) -> None:
        """Send what is buffered (waiting up to ``timeout``) and stop. Idempotent.
        Raises ``Timeout``, saying how many events were not delivered, if the
        channel did not acknowledge them in time."""
        if self._closing:
            return
        failure: Timeout | None = None
        try:
            self.flush(timeout)
        except Timeout as exc:
            failure = exc
        except PosaError:
            pass  # reported already, or reported to nobody: the publisher is closing
        with self._cond:
            self._closing = self._attention = True
            unsent = self.pending
            self._cond.notify_all()
        self._thread.join(timeout)
        self._sender.close(linger=0)
        if self._owns_registry:
            self.registry.close()
        if failure is not None:
            raise Timeout(f"publisher closed with {unsent} event(s) for {self.channel!r} "
                          f"not handed over: {failure}")

    # -- the sending thread ----------------------------------------------------------
    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                self._idle = True
                while not queue and self._flushed == self._flushes and not self._closing:
                    cond.wait()
                self._idle = False
                if self._closing:
                    return
                if len(queue) < self.batch and self._flushed == self._flushes \
                        and self.linger > 0:
                    self._lingering = True
                    cond.wait(self.linger)    # let the batch fill, at most linger
                    self._lingering = False
                flush_ticket = self._flushes
            backlog = len(queue)              # later ones wait for the next round
            while backlog > 0:
                take = min(backlog, self.batch)
                backlog -= take
                popleft = queue.popleft
                events = [popleft() for _ in range(take)]
                self._in_flight = take
                with cond:
                    cond.notify_all()         # room for publishers waiting on a full buffer
                topics, bodies = zip(*events)
                try:
                    self._send(topics, bodies)
                except Closed:
                    return
                self._in_flight = 0
                self.sent += take
            if flush_ticket > self._flushed:
                self._finish_flush(flush_ticket)

    def _finish_flush(self, ticket: int) -> None:
        error: PosaError | None = None
        try:
            self._sender.flush(self.timeout)
        except PosaError as exc:
            error = exc
        with self._cond:
            if error is not None:
                self._flush_error = error
            else:
                self._problem = None
            self._flushed = ticket
            self._cond.notify_all()

    def _send(self, topics: Sequence[str], bodies: Sequence[Any]) -> None:
        """Encode the bodies once and hand them to the reliable stream; retry
        while the channel cannot be found or reached."""
        budget = self._max_bytes - sum(map(len, topics)) - 2 * len(topics)
        chunks, bad = encode_chunks(lambda s, e: bodies[s:e], len(topics), budget)
        if bad:
            self._report_bad(bad, topics, bodies)
        uniform = topics.count(topics[0]) == len(topics)
        for start, end, blob in chunks:
            self._hand_over({"op": "publish", "bodies": blob,
                             "topics": topics[0] if uniform else list(topics[start:end])})

    def _report_bad(self, bad: list[int], topics: Sequence[str], bodies: Sequence[Any]
                    ) -> None:
        first = bad[0]
        error = Rejected(f"{len(bad)} event(s) dropped: the body of the event on topic "
                         f"{topics[first]!r} ({type(bodies[first]).__name__}) is not "
                         "msgpack data or exceeds the frame size; publish None, bool, int, "
                         "float, str, bytes, lists and str-keyed maps")
        with self._cond:
            self.rejected += len(bad)
            self._error = error
            self._attention = True
        log.warning("publisher for %s: %s", self.channel, error)

    def _hand_over(self, body: dict[str, Any]) -> None:
        delay = 0.01
        while True:
            try:
                self._sender.send(self.channel, body, timeout=self.timeout)
                return
            except Timeout as exc:
                self._problem = exc   # the frame is queued: the stream keeps trying
                return
            except (NameNotFound, TransportError) as exc:
                self._problem = exc   # not queued: find the channel again, then resend
            with self._cond:
                if self._closing:
                    raise Closed(f"the publisher for {self.channel!r} is closed")
                self._cond.wait(delay)
            delay = min(delay * 2, 0.5)


class Subscriber:
    """Receives a channel's events: those whose topic starts with one of
    ``topics`` and whose body matches ``filter`` (see ``posa.channel.predicate``), both
    applied at the channel.

    The channel buffers up to ``buffer`` events for this subscriber and, when
    it is full, applies ``policy``: ``"drop-oldest"``, ``"drop-newest"`` or
    ``"block"`` (publishers wait). ``from_seq`` asks to replay the channel's
    history from that seq first.  A subscriber renews its subscription every
    ``lease``/3 seconds; when the channel restarted (or forgot it) it
    subscribes again by itself, resuming after the last event it received.

    Lost events are never silent: the event that follows a hole carries a
    ``Gap`` in ``event.gap``, and the counters ``gaps`` (holes), ``missed``
    (events known lost), ``dropped`` (the channel's drop count for this
    subscription), ``reconnects`` and ``last_gap`` say what happened."""

    def __init__(self, channel: str, *, topics: Sequence[str] | str = ("",),
                 filter: Any = None, policy: str = "drop-oldest", buffer: int = 1000,
                 from_seq: int | None = None, registry: Registry | None = None,
                 dispatcher: str | None = None, listen: str | None = None,
                 name: str | None = None,
                 lease: float = SUB_LEASE, timeout: float = 5.0, inbox: int = 16,
                 skip_via: Sequence[str] = ()) -> None:
        self.channel = validate_name(channel)
        if isinstance(topics, str):
            topics = [topics]
        if filter is not None:
            compile_filter(filter)
        if policy not in POLICIES:
            raise Rejected(f"buffer policy {policy!r} is unknown; use one of "
                           + ", ".join(POLICIES))
        if not 0.5 <= lease <= 3600:
            raise ValueError("lease must be 0.5 to 3600 seconds")
        self._request = {"op": "subscribe", "topics": list(topics), "filter": filter,
                         "policy": policy, "buffer": buffer, "lease": lease,
                         "skip_via": list(skip_via)}
        self._state = SubscriberState(self.channel)
        self._ready: deque[Event] = deque()
        self._lock = threading.Lock()
        self._timeout = min(1.0, lease / 3)
        self.reconnects = 0
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        try:
            self.peer = Peer(name or _subscriber_name(self.channel), registry=self.registry,
                             listen=listen, inbox_size=inbox)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            raise
        self.name = self.peer.name
        try:
            answer = self.peer.request(self.channel, dict(self._request, from_seq=from_seq),
                                       timeout=timeout)
        except BaseException:
            self.peer.close()
            if self._owns_registry:
                self.registry.close()
            raise
        self._state.subscribed(answer)
        self._closed = False
        self._stop_renewing = keeper().keep(self._renew, self._resubscribe, lease / 3)

    def __repr__(self) -> str:
        return f"Subscriber({self.channel!r} as {self.name!r}, at seq {self._state.last_seq})"

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what happened ---------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    @property
    def incarnation(self) -> int | None:
        return self._state.incarnation

    @property
    def gaps(self) -> int:
        return self._state.gaps

    @property
    def missed(self) -> int:
        return self._state.missed

    @property
    def dropped(self) -> int:
        return self._state.dropped

    @property
    def last_gap(self) -> Gap | None:
        return self._state.last_gap

    @property
    def lag(self) -> int:
        """How many seqs the channel was ahead when it last reported."""
        return max(0, self._state.head - self._state.last_seq)

    # -- receiving ---------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> Event:
        """The next event; blocks up to ``timeout`` (None: forever, 0: don't wait).
        Raises ``Timeout`` if none came, ``Closed`` after ``close()``."""
        try:
            return self._ready.popleft()
        except IndexError:
            return self._fill(timeout)  # type: ignore[no-any-return]

    def receive_many(self, max_events: int = 1000, timeout: float | None = None
                     ) -> list[Event]:
        """At least one and at most ``max_events`` events: waits (like ``receive``)
        for the first, then takes what is ready without waiting."""
        events = [self.receive(timeout)]
        ready = self._ready
        while len(events) < max_events:
            if not ready:
                try:
                    self._fill(0.0, keep=True)
                except Timeout:
                    break
            popleft = ready.popleft
            for _ in range(min(len(ready), max_events - len(events))):
                try:
                    events.append(popleft())
                except IndexError:    # another thread took them
                    break
        return events

    def __iter__(self) -> Iterator[Event]:
        """Every event, until the subscriber is closed."""
        while True:
            try:
                yield self.receive()
            except Closed:
                return

    def _fill(self, timeout: float | None, keep: bool = False) -> Any:
        """Wait for a delivery and queue its events; return the first (or, with
        ``keep``, leave it queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise Timeout(f"no event from channel {self.channel!r} within {timeout} s")
        try:
            while True:
                if self._ready:
                    return None if keep else self._ready.popleft()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    msg = self.peer.receive(remaining)
                except Timeout:
                    raise Timeout(f"no event from channel {self.channel!r} within "
                                  f"{timeout} s") from None
                self._absorb(msg)
        finally:
            self._lock.release()

    def _absorb(self, msg: Message) -> None:
        try:
            events = self._state.accept(*parse_delivery(msg.body))
        except ProtocolError as exc:
            log.warning("subscriber %s: ignored a message from %r: %s", self.name,
                        msg.sender, exc)
            return
        self._ready.extend(events)

    # -- staying subscribed (the lease keeper's thread) ---------------------------
    def _renew(self) -> None:
        answer = self.peer.request(self.channel, {"op": "renew"}, timeout=self._timeout)
        if not answer.get("known"):
            raise NameNotFound(f"channel {self.channel!r} does not know this subscription")

    def _resubscribe(self) -> None:
        if self._closed:
            return
        inc, seq = self._state.resume_point()
        self.peer.request(self.channel, dict(self._request, from_seq=seq, inc=inc),
                          timeout=self._timeout)
        self.reconnects += 1
        log.info("subscriber %s: subscribed again to %s from seq %d", self.name,
                 self.channel, seq)

    def close(self) -> None:
        """Unsubscribe (best effort) and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_renewing()
        try:
            self.peer.request(self.channel, {"op": "unsubscribe"}, timeout=self._timeout)
        except PosaError:
            pass  # the channel forgets it when its lease runs out
        self.peer.close()
        if self._owns_registry:
            self.registry.close()


# -- asyncio: the same surface, awaitable --------------------------------------------
class _AsyncWrapper:
    """Runs the blocking object's calls on one worker thread of its own, only
    when they would block: the fast paths run inline."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="posa-aio-channel")

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run_in_executor(
            self._worker, functools.partial(fn, *args, **kwargs))

    async def _shutdown(self, close: Callable[[], Any]) -> None:
        try:
            await self._run(close)
        finally:
            self._worker.shutdown(wait=False)


class AsyncPublisher(_AsyncWrapper):
    """``Publisher`` for asyncio (create it in a running loop)."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        super().__init__()
        self.sync = Publisher(channel, **kwargs)

    async def publish(self, topic: str, body: Any = None, *,
                      timeout: float | None = None) -> None:
        try:
            self.sync.publish(topic, body, timeout=0)
        except Timeout:
            await self._run(self.sync.publish, topic, body, timeout=timeout)

    async def publish_many(self, events: Iterable[tuple[str, Any]], *,
                           timeout: float | None = None) -> int:
        return await self._run(self.sync.publish_many, list(events),  # type: ignore[no-any-return]
                               timeout=timeout)

    async def flush(self, timeout: float | None = None) -> None:
        await self._run(self.sync.flush, timeout)

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSubscriber(_AsyncWrapper):
    """``Subscriber`` for asyncio (create it in a running loop); ``async for``
    iterates its events."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        super().__init__()
        self.sync = Subscriber(channel, **kwargs)

    async def receive(self, timeout: float | None = None) -> Event:
        try:
            return self.sync.receive(timeout=0)
        except Timeout:
            return await self._run(self.sync.receive, timeout)  # type: ignore[no-any-return]

    async def receive_many(self, max_events: int = 1000,
                           timeout: float | None = None) -> list[Event]:
        try:
            return self.sync.receive_many(max_events, timeout=0)
        except Timeout:
            return await self._run(  # type: ignore[no-any-return]
                self.sync.receive_many, max_events, timeout)

    def __aiter__(self) -> AsyncSubscriber:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except Closed:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        await self._shutdown(self.sync.close)

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- command line: posa channel NAME --dispatcher ADDR ---------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``channel`` subcommand to a ``posa`` command's subparsers."""
    parser = subparsers.add_parser(
        "channel", help="run an event channel",
        description="Run the event channel NAME until SIGTERM or SIGINT.")
    _arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from posa.cli import DEFAULT_DISPATCHER  # the command's defaults live there
    parser.add_argument("name", help="the channel's name, e.g. events/netmgmt")
    parser.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="ADDRESS",
                        help=f"the dispatcher's address (default {DEFAULT_DISPATCHER})")
    parser.add_argument("--listen", default="zmq+tcp://127.0.0.1:0",
                        help="where to receive (default zmq+tcp://127.0.0.1:0)")
    parser.add_argument("--history", type=int, default=10000,
                        help="events kept for replay (default 10000)")
    parser.add_argument("--credential", default=None,
                        help="token owning the name; reuse it to restart in place")
    parser.add_argument("--upstream", action="append", default=[],
                        help="a channel to subscribe to (repeatable)")
    parser.add_argument("--upstream-topic", action="append", default=None,
                        help="topic prefix taken from upstream (repeatable; default all)")
    parser.add_argument("--upstream-filter", default=None, type=json.loads,
                        help='filter for upstream events, JSON, e.g. '
                             '\'{"field": "load", "op": ">", "value": 0.8}\'')
    parser.add_argument("--upstream-policy", default="drop-oldest", choices=POLICIES)


def run(args: argparse.Namespace) -> int:
    """Run a channel until SIGTERM/SIGINT; prints one line when it is ready. The
    signal handlers are in place before that line, so no signal is missed."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        channel = EventChannel(args.name, dispatcher=args.dispatcher, listen=args.listen,
                               history=args.history, credential=args.credential,
                               upstream=args.upstream,
                               upstream_topics=args.upstream_topic or [""],
                               upstream_filter=args.upstream_filter,
                               upstream_policy=args.upstream_policy)
        print(f"channel {channel.name} at {channel.address}", flush=True)
        while not stop.wait(0.5):
            pass
        channel.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
