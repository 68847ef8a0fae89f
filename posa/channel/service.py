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
- one *delivery* thread per subscription (``posa.channel.delivery``);
- one thread per ``upstream`` channel, a ``Subscriber`` feeding this channel.

``block`` policy: ``publish`` accepts the prefix of a batch that fits; the rest
is parked (at most ``park_limit`` batches, while ingest keeps answering
requests); when the park is full ingest waits, so publishers wait, with their
timeout. Whoever frees room (a delivery thread) moves parked batches in.

A malformed message never stops the channel: a request is answered with the
table's ``Rejected``; a one-way message (or a publication the core refuses) is
dropped, counted in ``counters["rejected"]`` and logged (the first ten).
"""
from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.channel.core import ChannelCore
from posa.channel.delivery import Delivery
from posa.channel.predicate import compile_filter
from posa.channel.protocol import CHANNEL, FRAME_MARGIN, Publication, publication
from posa.channel.subscriber import Subscriber
from posa.errors import Closed, NameNotFound, PosaError, Rejected, Timeout, TransportError
from posa.naming.registration import Registry
from posa.naming.resolve import open_registry
from posa.peer import Peer
from posa.wire.codec import CodecLimits, Kind, Message
from posa.wire.names import validate_name

__all__ = ["EventChannel"]

log = logging.getLogger("posa.channel.service")

_MISUSED = {  # oneway -> why a message of the wrong kind is refused
    True: "channel operation {!r} is one-way: send it, do not request it",
    False: "channel operation {!r} is a request: request it (the answer comes "
           "back), do not send it",
}


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
                 limits: CodecLimits | None = None,
                 authenticator: Authenticator | None = None) -> None:
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
        self._deliveries: dict[str, Delivery] = {}
        self._closing = threading.Event()
        self._closed = False
        self.counters = {"rejected": 0, "undeliverable": 0, "expired": 0}
        self._handlers = CHANNEL.bind(self)
        try:
            self.peer = Peer(self.name, registry=self.registry, listen=listen,
                             credential=credential, lease=lease, limits=limits,
                             inbox_size=inbox, authenticator=authenticator)
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
        """Parse a message by the table and run its operation's handler; a
        request gets the answer or the error, a one-way message none."""
        kind = msg.kind
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
        if self.counters["rejected"] <= 10:
            log.warning("channel %s: refused a message from %r: %s", self.name,
                        msg.sender, exc)

    def _op_publish(self, msg: Message, fields: dict[str, Any]) -> None:
        self._accept(publication(fields))

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
    def _op_subscribe(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        sender = msg.sender
        if not sender:
            raise Rejected("subscribe from a named peer: deliveries go to its name")
        lease = float(fields["lease"])
        with self._lock:
            answer = self.core.subscribe(
                sender, topics=fields["topics"], filter=fields["filter"],
                policy=fields["policy"], limit=fields["buffer"],
                from_seq=fields["from_seq"], incarnation=fields["inc"],
                skip_via=fields["skip_via"])
            delivery = self._deliveries.get(sender)
            if delivery is None or delivery.stopped:
                delivery = self._deliveries[sender] = Delivery(self, sender, lease)
                delivery.thread = self._start(delivery.run, "deliver")
            delivery.lease = lease
            delivery.expires = time.monotonic() + lease
            delivery.cond.notify()
        return {"inc": answer.incarnation, "head": answer.head, "first": answer.first,
                "replay_from": answer.replay_from, "restarted": answer.restarted}

    def _op_renew(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            delivery = self._deliveries.get(msg.sender)
            sub = self.core.subscriptions.get(msg.sender)
            if delivery is None or delivery.stopped or sub is None:
                return {"known": False, "inc": self.core.incarnation}
            delivery.expires = time.monotonic() + delivery.lease
            return {"known": True, "inc": self.core.incarnation, "head": self.core.seq,
                    "dropped": sub.dropped}

    def _op_unsubscribe(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            sub = self.core.subscriptions.get(msg.sender)
            stats = sub.stats() if sub is not None else {}
            self._end(msg.sender)
        return stats

    def _op_stats(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

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

