"""CodecLimits on what one receiver accepts: rates, connections, requests in flight.

``RateLimiter``  token buckets per connection (the transport's route) and per
                 sender name; a ``Limiter`` for the ``Gatekeeper``.
``InFlight``     at most so many requests admitted and not yet answered, per
                 sender and in all; the gatekeeper's ``enter``/``leave``.
``Quotas``       every limit in one place, with safe defaults, and the transport
                 ``Options`` (``max_connections``) that go with them.

Strategy: a token bucket is two floats in a list, refilled lazily when a
message arrives (no timer): ``tokens = min(burst, tokens + elapsed * rate)``,
and a message passes if one token is left.  Buckets live in insertion-ordered
dicts bounded by ``max_tracked``; the oldest is forgotten first.  A sender that
cycles through connections to get fresh buckets still meets its per-name
bucket, which authentication ties to a key.  Nothing here does I/O or reads a
global; the clock is injectable.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from posa.transport.base import Options
from posa.wire.codec import Kind, Message

__all__ = ["Rate", "Quotas", "RateLimiter", "InFlight"]


@dataclass(frozen=True)
class Rate:
    """``per_second`` messages on average, ``burst`` at once after a quiet spell."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1):
            raise ValueError(f"a Rate needs per_second > 0 and burst >= 1, got "
                             f"{self.per_second!r}/s burst {self.burst!r}")


@dataclass(frozen=True)
class Quotas:
    """Every receiving limit, with defaults safe for untrusted peers.

    A posa peer in Python sends at most ~100k messages/s on this class of
    machine, so the rate defaults never slow a well-behaved sender; they stop a
    flood from one connection or name from taking the whole receiver."""

    per_source: Rate | None = Rate(100_000, 200_000)   # per connection (route)
    per_sender: Rate | None = Rate(100_000, 200_000)   # per sender name
    max_tracked: int = 65_536          # buckets remembered per kind; oldest forgotten
    max_connections: int = 1024        # per listener (transports enforce it)
    max_in_flight: int = 1024          # requests admitted, not yet answered, per sender
    max_in_flight_total: int = 16_384  # ... in all
    # a dispatcher's registry, for registrations over the wire (posa.naming.quotas)
    registry_names_per_owner: int = 1000     # per key, or per connection without one
    registry_meta_bytes: int = 16 * 1024     # packed meta of one name (at most 64 KiB)
    registry_rate: Rate | None = Rate(100, 200)     # registrations per connection
    registry_names: int = 100_000            # names in the whole registry

    def __post_init__(self) -> None:
        if min(self.max_tracked, self.max_connections, self.max_in_flight,
               self.max_in_flight_total) <= 0:
            raise ValueError("Quotas limits must be positive")

    def options(self, base: Options | None = None) -> Options:
        """Transport ``Options`` with these quotas' connection limit."""
        return dataclasses.replace(base or Options(), max_connections=self.max_connections)

    def limiter(self, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        return RateLimiter(per_source=self.per_source, per_sender=self.per_sender,
                           max_tracked=self.max_tracked, clock=clock)

    def in_flight(self) -> InFlight:
        return InFlight(max_per_sender=self.max_in_flight, max_total=self.max_in_flight_total)


class _Buckets:
    """Token buckets of one ``Rate``, keyed by anything hashable."""

    __slots__ = ("rate", "burst", "max_tracked", "buckets")

    def __init__(self, rate: Rate, max_tracked: int) -> None:
        self.rate = rate.per_second
        self.burst = float(rate.burst)
        self.max_tracked = max_tracked
        self.buckets: dict[Hashable, list[float]] = {}

    def tokens(self, key: Hashable, now: float) -> list[float]:
        """The bucket of ``key``, refilled to ``now`` (not yet charged)."""
        bucket = self.buckets.get(key)
        if bucket is None:
            buckets = self.buckets
            if len(buckets) >= self.max_tracked:
                del buckets[next(iter(buckets))]
            bucket = buckets[key] = [self.burst, now]
            return bucket
        level = bucket[0] + (now - bucket[1]) * self.rate
        bucket[0] = level if level < self.burst else self.burst
        bucket[1] = now
        return bucket


class RateLimiter:
    """A ``Limiter``: token buckets per source (connection) and per sender name.

    ``admit`` runs on the reactor thread only (it takes no lock). A message
    refused here is not acknowledged, so a reliable sender slows down and sends
    it again later; nothing is lost."""

    def __init__(self, *, per_source: Rate | None = Quotas.per_source,
                 per_sender: Rate | None = Quotas.per_sender,
                 max_tracked: int = Quotas.max_tracked,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sources = _Buckets(per_source, max_tracked) if per_source else None
        self._senders = _Buckets(per_sender, max_tracked) if per_sender else None
        self._clock = clock
        self.refused = {"source": 0, "sender": 0}

    def admit(self, source: Any, msg: Message) -> bool:
        """True if both ``source`` and ``msg.sender`` have a token left (taken)."""
        now = self._clock()
        by_source = self._sources.tokens(source, now) if self._sources else None
        by_sender = self._senders.tokens(msg.sender, now) if self._senders else None
        if by_source is not None and by_source[0] < 1.0:
            self.refused["source"] += 1
            return False
        if by_sender is not None and by_sender[0] < 1.0:
            self.refused["sender"] += 1
            return False
        if by_source is not None:
            by_source[0] -= 1.0
        if by_sender is not None:
            by_sender[0] -= 1.0
        return True


class InFlight:
    """Requests admitted and not yet answered, bounded per sender and in all.

    ``enter(msg)`` when a request is handed to the application (after
    duplicates are dropped), ``leave(msg)`` when it is answered, from any
    thread. ``leave`` of a request that never entered does nothing."""

    def __init__(self, *, max_per_sender: int = Quotas.max_in_flight,
                 max_total: int = Quotas.max_in_flight_total) -> None:
        if max_per_sender <= 0 or max_total <= 0:
            raise ValueError("InFlight limits must be positive")
        self.max_per_sender = max_per_sender
        self.max_total = max_total
        self._open: set[tuple[str, int, int]] = set()
        self._per_sender: dict[str, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def enter(self, msg: Message) -> bool:
        """Count ``msg`` if it is a request within the limits; False if over."""
        if msg.kind != Kind.REQUEST:
            return True
        key = (msg.sender, msg.stream, msg.id)
        with self._lock:
            if key in self._open:
                return True
            count = self._per_sender.get(msg.sender, 0)
            if count >= self.max_per_sender or len(self._open) >= self.max_total:
                return False
            self._open.add(key)
            self._per_sender[msg.sender] = count + 1
            return True

    def leave(self, msg: Message) -> None:
        """``msg`` was answered."""
        key = (msg.sender, msg.stream, msg.id)
        with self._lock:
            if key not in self._open:
                return
            self._open.discard(key)
            left = self._per_sender[msg.sender] - 1
            if left:
                self._per_sender[msg.sender] = left
            else:
                del self._per_sender[msg.sender]
            if not self._open:
                self._idle.notify_all()

    def __len__(self) -> int:
        return len(self._open)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (True) or ``timeout`` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._open, timeout)
