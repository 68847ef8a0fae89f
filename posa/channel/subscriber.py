"""The subscriber's proxy: receives a channel's events, wherever the channel runs.

A ``Subscriber`` is a peer of its own (named ``_posa/sub/CHANNEL/TOKEN``
unless given a name): it subscribes that name at the channel (the
``subscribe`` request of ``posa.channel.protocol.CHANNEL``), and deliveries
come to it as one-way messages in a reliable stream. ``SubscriberState``
(``posa.channel.events``) turns them into events and notices every hole.

Staying subscribed is the lease keeper's work (``posa.runtime.leases``): it
renews every ``lease``/3 seconds, and when a renewal finds the subscription
unknown (the channel restarted, or forgot it during a long pause) it
subscribes again, resuming after the last event received; the channel replays
from there, and duplicates are dropped.

Receiving is cheap on purpose: ``receive`` pops from a deque of decoded events
and goes to the peer's inbox only when that is empty; one caller at a time
decodes a delivery (under a lock), the others wait for it or for their timeout.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.channel.events import Event, Gap, SubscriberState
from posa.channel.predicate import compile_filter
from posa.channel.protocol import (
    CHANNEL,
    MAX_LEASE,
    MIN_LEASE,
    POLICIES,
    SUB_LEASE,
    parse_delivery,
)
from posa.errors import Closed, NameNotFound, PosaError, ProtocolError, Rejected, Timeout
from posa.naming.registration import Registry
from posa.naming.resolve import open_registry
from posa.peer import Peer
from posa.runtime.leases import keeper
from posa.runtime.trace import handling
from posa.wire.codec import Message
from posa.wire.names import validate_name

__all__ = ["Subscriber"]

log = logging.getLogger("posa.channel.subscriber")


class Subscriber:
    """Receives a channel's events: those whose topic starts with one of
    ``topics`` and whose body matches ``filter`` (see docs/event-channel.md), both
    applied at the channel.

    The channel buffers up to ``buffer`` events for this subscriber and, when
    it is full, applies ``policy``: ``"drop-oldest"``, ``"drop-newest"`` or
    ``"block"`` (publishers wait). ``from_seq`` asks to replay the channel's
    history from that seq first.  A subscriber renews its subscription every
    ``lease``/3 seconds; when the channel restarted (or forgot it) it
    subscribes again by itself, resuming after the last event it received.
    Under ``"disconnect"`` a full buffer ends the subscription at the channel
    (freeing it at once); the subscriber notices at its next renewal and
    subscribes again, replaying from the channel's history what it missed.
    Under ``"fail"`` a full buffer ends it for good: the events buffered
    before are delivered, then ``receive`` raises ``Rejected``.

    Lost events are never silent: the event that follows a hole carries a
    ``Gap`` in ``event.gap``, and the counters ``gaps`` (holes), ``missed``
    (events known lost), ``dropped`` (the channel's drops for this subscriber,
    a running total over its re-subscriptions), ``reconnects`` and ``last_gap``
    say what happened.  With keys on, give it ``authenticator``: its peer seals
    and checks every frame, so only a channel holding the key can deliver to it
    (docs/security.md)."""

    def __init__(self, channel: str, *, topics: Sequence[str] | str = ("",),
                 filter: Any = None, policy: str = "drop-oldest", buffer: int = 1000,
                 from_seq: int | None = None, registry: Registry | None = None,
                 dispatcher: str | None = None, listen: str | None = None,
                 name: str | None = None,
                 lease: float = SUB_LEASE, timeout: float = 5.0, inbox: int = 16,
                 skip_via: Sequence[str] = (),
                 authenticator: Authenticator | None = None) -> None:
        self.channel = validate_name(channel)
        if isinstance(topics, str):
            topics = [topics]
        if filter is not None:
            compile_filter(filter)
        if policy not in POLICIES:
            raise Rejected(f"buffer policy {policy!r} is unknown; use one of "
                           + ", ".join(POLICIES))
        if not MIN_LEASE <= lease <= MAX_LEASE:
            raise ValueError(f"lease must be {MIN_LEASE} to {MAX_LEASE:.0f} seconds")
        self._selection: dict[str, Any] = {
            "topics": list(topics), "filter": filter, "policy": policy, "buffer": buffer,
            "lease": lease, "skip_via": list(skip_via)}
        self._state = SubscriberState(self.channel)
        self._ready: deque[Event] = deque()
        self._lock = threading.Lock()
        self._timeout = min(1.0, lease / 3)
        self.reconnects = 0
        self.registry, self._owns_registry = open_registry(registry, dispatcher)
        try:
            under = getattr(authenticator, "key_id", None)   # a name its key speaks for
            self.peer = Peer(name or _subscriber_name(self.channel, under),
                             registry=self.registry,
                             listen=listen, inbox_size=inbox, authenticator=authenticator)
        except BaseException:
            if self._owns_registry:
                self.registry.close()
            raise
        self.name = self.peer.name
        try:
            answer = self.peer.request(
                self.channel, CHANNEL.request("subscribe", **self._selection,
                                              from_seq=from_seq), timeout=timeout)
        except BaseException:
            self.peer.close()
            if self._owns_registry:
                self.registry.close()
            raise
        self._state.subscribed(answer)
        self._closed = False
        self._failed: Rejected | None = None
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
            if self._failed is not None:
                raise self._failed from None
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
        """Every event, until the subscriber is closed (taken straight from the
        decoded ones while there are some: no ``receive`` call per event)."""
        popleft = self._ready.popleft
        while True:
            try:
                yield popleft()
            except IndexError:
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
                if self._failed is not None:
                    raise self._failed
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
        end = msg.body.get("end") if type(msg.body) is dict else None
        if end is not None and self._failed is None:
            self._failed = Rejected(
                f"the subscription to {self.channel!r} ended: its buffer of "
                f"{self._selection['buffer']} events at the channel overflowed under "
                f"policy {self._selection['policy']!r} ({end}); subscribe again (with "
                f"from_seq={self._state.last_seq + 1} to replay what followed)")
            self._stop_renewing()

    def handling(self, event: Event) -> AbstractContextManager[None]:
        """``with subscriber.handling(event):`` runs the block inside the trace
        ``event`` was published in (``event.trace``), in a span ``handle
        CHANNEL`` of kind CONSUMER, child of the publisher's, when OpenTelemetry
        is installed; outside any trace when the event has none."""
        return handling(event.trace, event.channel or self.channel)

    # -- staying subscribed (the lease keeper's thread) ---------------------------
    def _renew(self) -> None:
        answer = self.peer.request(self.channel, CHANNEL.request("renew"),
                                   timeout=self._timeout)
        if not answer.get("known"):
            raise NameNotFound(f"channel {self.channel!r} does not know this subscription")

    def _resubscribe(self) -> None:
        if self._closed:
            return
        inc, seq = self._state.resume_point()
        self.peer.request(self.channel, CHANNEL.request("subscribe", **self._selection,
                                                        from_seq=seq, inc=inc),
                          timeout=self._timeout)
        self.reconnects += 1
        log.info("subscriber %s: subscribed again to %s from seq %d", self.name,
                 self.channel, seq)

    def close(self) -> None:
        """Unsubscribe (best effort) and close. Idempotent. In a forked child, a
        subscriber the parent made is the parent's subscription: closing it there
        does not unsubscribe, and its peer closes the child's copies only."""
        if self._closed:
            return
        self._closed = True
        self._stop_renewing()
        try:
            if not self.peer.sender.inherited:
                self.peer.request(self.channel, CHANNEL.request("unsubscribe"),
                                  timeout=self._timeout)
        except PosaError:
            pass  # the channel forgets it when its lease runs out
        self.peer.close()
        if self._owns_registry:
            self.registry.close()



def _subscriber_name(channel: str, under: str | None = None) -> str:
    """A fresh name for a subscriber of ``channel`` (below ``under``: a key's id)."""
    token = secrets.token_hex(8)
    prefix = f"{under}/sub" if under else "_posa/sub"
    name = f"{prefix}/{channel}/{token}"
    return name if len(name) <= 255 else f"{prefix}/{token}"
