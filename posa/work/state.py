"""The work queue's bookkeeping and its scaling rule (sans-IO: no threads, no clock).

``WorkState`` is the queue manager of the work-queue pattern: it knows every
item it was given and whether the item waits, is leased to a worker, is done or
was given up (dead-lettered).  ``ScalingAdvisor`` applies the rule for sizing
the pool of workers.  Both take the time as an argument, so a test drives them
with any sequence of events and any clock.

Item life cycle::

    add ──▶ PENDING ──lease──▶ LEASED ──ack──▶ done (remembered by key)
               ▲                 │
               └── fail/expire ──┤ (attempts < max_attempts)
                                 └── fail/expire ──▶ DEAD (dead letter)

Invariants (tested with hypothesis):

- every key ever added is in exactly one of pending, leased, done and dead (none
  is lost) while the bounds ``remember`` and ``max_dead`` are not exceeded;
- a key is completed at most once: a second ``ack`` (a redelivered item that two
  workers finished, a retried acknowledgement) is counted as a duplicate and
  changes nothing — completion is idempotent;
- at most ``max_in_flight`` items are leased at any time.

Strategy: ``_items`` maps each key not yet finished to its record; ``_pending``
is a FIFO of keys with lazy deletion (an entry whose item is no longer pending
is skipped when it reaches the front); lease deadlines sit in a heap with lazy
deletion too (an entry whose token or deadline is not its item's is stale),
compacted when stale entries outnumber the live ones (amortised O(log n) per
event, whatever the number of items held).
An ``ack`` is honoured whatever the lease token: the first completion wins even
if it comes from a worker whose lease had expired, since its work is done.
A ``fail`` or ``extend`` is honoured only with the current token, so a worker
that lost its lease cannot disturb the worker that holds it now.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

from posa.errors import Rejected

__all__ = ["Lease", "DeadLetter", "WorkState", "Recommendation", "ScalingAdvisor",
           "PENDING", "LEASED", "DONE", "DEAD"]

PENDING = "pending"
LEASED = "leased"
DONE = "done"
DEAD = "dead"


class Lease(NamedTuple):
    """One item handed to a worker; ``token`` names this lease for ``fail``/``extend``.
    A named tuple: one is built per item handed out, on the queue's hot path (a
    third of the cost of a frozen dataclass)."""

    key: Hashable
    token: int
    attempt: int        # 1 for the first delivery, 2 for the first redelivery ...
    data: Any


@dataclass(frozen=True)
class DeadLetter:
    """An item given up after ``attempts`` failed attempts; ``reason`` is the last."""

    key: Hashable
    data: Any
    attempts: int
    reason: str


class _Item:
    __slots__ = ("data", "status", "token", "attempts", "deadline", "worker")

    def __init__(self, data: Any) -> None:
        self.data = data
        self.status = PENDING
        self.token = 0
        self.attempts = 0
        self.deadline = 0.0
        self.worker = ""


class WorkState:
    """What a work queue holds and who works on what. Not thread-safe.

    ``visibility``: seconds a lease lasts before its item is handed out again;
    ``max_in_flight``: leases outstanding at most; ``max_attempts``: deliveries
    before an item is dead-lettered; ``capacity``: items pending or leased at
    most (``add`` beyond it raises ``Rejected``); ``remember``: finished keys kept
    to recognise duplicates (the oldest are forgotten first); ``max_dead``: dead
    letters kept for inspection (the oldest are dropped first).
    """

    def __init__(self, *, visibility: float = 30.0, max_in_flight: int = 1000,
                 max_attempts: int = 3, capacity: int = 100_000,
                 remember: int = 1_000_000, max_dead: int = 10_000) -> None:
        if not visibility > 0:
            raise ValueError("visibility must be a positive number of seconds")
        for label, value in (("max_in_flight", max_in_flight), ("max_attempts", max_attempts),
                             ("capacity", capacity), ("remember", remember),
                             ("max_dead", max_dead)):
            if value < 1:
                raise ValueError(f"{label} must be at least 1, got {value}")
        self.visibility = float(visibility)
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.capacity = capacity
        self.remember = remember
        self.max_dead = max_dead
        self._items: dict[Hashable, _Item] = {}
        self._pending: deque[Hashable] = deque()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._finished: OrderedDict[Hashable, str] = OrderedDict()   # key -> DONE/DEAD
        self._dead: OrderedDict[Hashable, DeadLetter] = OrderedDict()
        self._tokens = itertools.count(1)
        self.n_pending = 0
        self.n_leased = 0
        self.counters = {"added": 0, "done": 0, "dead": 0, "failed": 0, "expired": 0,
                         "redelivered": 0, "duplicate_adds": 0, "duplicate_acks": 0}

    # -- queries ---------------------------------------------------------------
    def status(self, key: Hashable) -> str | None:
        """PENDING, LEASED, DONE or DEAD; None for a key unknown (or forgotten)."""
        item = self._items.get(key)
        if item is not None:
            return item.status
        return self._finished.get(key)

    def room(self) -> int:
        """How many more items ``add`` accepts now."""
        return self.capacity - self.n_pending - self.n_leased

    def leases_of(self, worker: str) -> list[Hashable]:
        """Keys leased to ``worker`` now."""
        return [key for key, item in self._items.items()
                if item.status == LEASED and item.worker == worker]

    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters kept, oldest first."""
        return list(self._dead.values())

    def dead_letter(self, key: Hashable) -> DeadLetter | None:
        """The dead letter kept for ``key``, if any."""
        return self._dead.get(key)

    def next_deadline(self) -> float | None:
        """When the earliest lease runs out (None if nothing is leased)."""
        heap = self._heap
        while heap:
            deadline, token, key = heap[0]
            if self._live_entry(deadline, token, key):
                return deadline
            heapq.heappop(heap)
        return None

    def counts(self) -> dict[str, int]:
        """pending, leased, done, dead, total (= added) and the event counters."""
        return {"pending": self.n_pending, "leased": self.n_leased,
                "total": self.counters["added"], **self.counters}

    # -- events ------------------------------------------------------------------
    def add(self, key: Hashable, data: Any = None) -> bool:
        """Queue a new item. False (and nothing changes) if ``key`` is known:
        held now, or finished and still remembered. Raises ``Rejected`` when the
        queue is at capacity."""
        if key in self._items or key in self._finished:
            self.counters["duplicate_adds"] += 1
            return False
        if self.room() <= 0:
            raise Rejected(f"the work queue holds {self.capacity} items (its capacity); "
                           "retry when workers have caught up, or raise capacity")
        self._items[key] = _Item(data)
        self._pending.append(key)
        self.n_pending += 1
        self.counters["added"] += 1
        return True

    def lease(self, worker: str, now: float, max_items: int = 1) -> list[Lease]:
        """Hand up to ``max_items`` pending items to ``worker`` until
        ``now + visibility``, oldest first, within the in-flight limit."""
        n = min(max_items, self.max_in_flight - self.n_leased, self.n_pending)
        leases: list[Lease] = []
        pending, items = self._pending, self._items
        deadline = now + self.visibility
        while len(leases) < n:
            key = pending.popleft()
            item = items.get(key)
            if item is None or item.status != PENDING:
                continue                              # stale entry (lazy deletion)
            item.status = LEASED
            item.token = next(self._tokens)
            item.attempts += 1
            item.deadline = deadline
            item.worker = worker
            if item.attempts > 1:
                self.counters["redelivered"] += 1
            self.n_pending -= 1
            self.n_leased += 1
            self._push(deadline, item.token, key)
            leases.append(Lease(key, item.token, item.attempts, item.data))
        return leases

    def ack(self, key: Hashable) -> str:
        """Record ``key`` as completed. Returns DONE the first time, "duplicate"
        if it was completed before, "unknown" for a key never added (or
        forgotten). Whoever completes it first wins, whether or not its lease
        is still current: the work is done either way."""
        item = self._items.pop(key, None)
        if item is None:
            if self._finished.get(key) == DONE:
                self.counters["duplicate_acks"] += 1
                return "duplicate"
            if self._finished.get(key) == DEAD:
                self._dead.pop(key, None)             # late success of a given-up item
                self.counters["dead"] -= 1
                self._finish(key, DONE)
                self.counters["done"] += 1
                return DONE
            return "unknown"
        if item.status == PENDING:
            self.n_pending -= 1
        elif item.status == LEASED:
            self.n_leased -= 1
        self._finish(key, DONE)
        self.counters["done"] += 1
        return DONE

    def fail(self, key: Hashable, token: int, reason: str) -> str:
        """The worker holding lease ``token`` could not process ``key``. Returns
        PENDING (it will be retried), DEAD (attempts used up) or "stale" (the
        lease is not current: nothing changes)."""
        item = self._items.get(key)
        if item is None or item.status != LEASED or item.token != token:
            return "stale"
        self.counters["failed"] += 1
        return self._give_back(key, item, reason)

    def extend(self, key: Hashable, token: int, now: float) -> bool:
        """Renew lease ``token`` until ``now + visibility``; False if not current."""
        item = self._items.get(key)
        if item is None or item.status != LEASED or item.token != token:
            return False
        item.deadline = now + self.visibility
        self._push(item.deadline, token, key)
        return True

    def expire(self, now: float) -> list[tuple[Hashable, str]]:
        """Take back every lease that ran out by ``now``: each item goes back to
        pending or, its attempts used up, to the dead letters."""
        heap = self._heap
        outcomes = []
        while heap and heap[0][0] <= now:
            deadline, token, key = heapq.heappop(heap)
            if not self._live_entry(deadline, token, key):
                continue
            item = self._items[key]
            self.counters["expired"] += 1
            reason = (f"lease expired: {item.worker or 'a worker'} did not finish within "
                      f"{self.visibility:g} s (it may have died)")
            outcomes.append((key, self._give_back(key, item, reason)))
        return outcomes

    def requeue_dead(self, key: Hashable) -> bool:
        """Give a dead letter a fresh set of attempts; False if ``key`` is not one."""
        letter = self._dead.pop(key, None)
        if letter is None:
            return False
        del self._finished[key]
        self.counters["dead"] -= 1
        self.counters["added"] -= 1
        return self.add(key, letter.data)

    # -- internals ---------------------------------------------------------------
    def _live_entry(self, deadline: float, token: int, key: Hashable) -> bool:
        item = self._items.get(key)
        return (item is not None and item.status == LEASED and item.token == token
                and item.deadline == deadline)

    def _give_back(self, key: Hashable, item: _Item, reason: str) -> str:
        self.n_leased -= 1
        if item.attempts >= self.max_attempts:
            del self._items[key]
            self._finish(key, DEAD)
            self._dead[key] = DeadLetter(key, item.data, item.attempts, reason)
            if len(self._dead) > self.max_dead:
                self._dead.popitem(last=False)
            self.counters["dead"] += 1
            return DEAD
        item.status = PENDING
        item.worker = ""
        self._pending.append(key)
        self.n_pending += 1
        return PENDING

    def _finish(self, key: Hashable, status: str) -> None:
        finished = self._finished
        finished[key] = status
        finished.move_to_end(key)
        if len(finished) > self.remember:
            finished.popitem(last=False)

    def _push(self, deadline: float, token: int, key: Hashable) -> None:
        heap = self._heap
        if len(heap) > 2 * self.n_leased + 64:      # mostly stale: keep the live ones
            heap[:] = [entry for entry in heap if self._live_entry(*entry)]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, token, key))


@dataclass(frozen=True)
class Recommendation:
    """What the advisor recommends and why (``reason`` is for people)."""

    workers: int                    # recommended number of workers
    current: int                    # the number it was given
    mean_interval: float | None     # seconds between arrivals, on average
    mean_processing: float | None   # seconds to process one item (queue time excluded)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "current": self.current,
                "mean_interval": self.mean_interval,
                "mean_processing": self.mean_processing, "reason": self.reason}


class ScalingAdvisor:
    """Sizes a pool of workers from the mean arrival interval and processing time.

    The rule: a queue is stable when the mean processing time divided by the
    number of workers is below the mean interval between arrivals. Scale up to
    the smallest count that satisfies it; scale down only as far as the
    processing time per worker stays within ``headroom`` (90 %) of the interval,
    so that a pool does not flap at the boundary. The means are taken over the
    last ``window`` observations; the interval is measured up to ``now``, so a
    burst followed by silence lengthens it as time passes.
    """

    def __init__(self, *, window: int = 1000, headroom: float = 0.9,
                 min_workers: int = 1, max_workers: int = 64) -> None:
        if not 0 < headroom < 1:
            raise ValueError("headroom must be between 0 and 1 (e.g. 0.9)")
        if not 1 <= min_workers <= max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        self.headroom = headroom
        self.min_workers = min_workers
        self.max_workers = max_workers
        self._arrivals: deque[float] = deque(maxlen=window)
        self._durations: deque[float] = deque(maxlen=window)
        self._duration_sum = 0.0

    def observe_arrival(self, now: float) -> None:
        self._arrivals.append(now)

    def observe_processing(self, seconds: float) -> None:
        durations = self._durations
        if len(durations) == durations.maxlen:
            self._duration_sum -= durations[0]
        durations.append(max(0.0, seconds))
        self._duration_sum += durations[-1]

    def recommend(self, current: int, now: float) -> Recommendation:
        """The number of workers to run, given ``current`` running now."""
        arrivals, durations = self._arrivals, self._durations
        interval = (now - arrivals[0]) / len(arrivals) if arrivals else None
        processing = self._duration_sum / len(durations) if durations else None
        keep = self._clamp(current)
        if interval is None or processing is None:
            return Recommendation(keep, current, interval, processing,
                                  "not enough data yet: need arrivals and finished items")
        if interval <= 0:
            return Recommendation(self.max_workers, current, interval, processing,
                                  "items arrive all at once: use the most workers allowed")
        per_worker = processing / max(current, 1)
        if current < 1 or per_worker >= interval:
            needed = self._clamp(math.floor(processing / interval) + 1)
            return Recommendation(needed, current, interval, processing,
                                  f"scale up: {processing:.3g} s per item / {current} "
                                  f"worker(s) is not below the {interval:.3g} s between "
                                  "arrivals")
        enough = self._clamp(math.ceil(processing / (self.headroom * interval)))
        if enough < current:
            return Recommendation(enough, current, interval, processing,
                                  f"scale down: {enough} worker(s) keep {processing:.3g} s "
                                  f"per item within {self.headroom:.0%} of the "
                                  f"{interval:.3g} s between arrivals")
        return Recommendation(keep, current, interval, processing,
                              f"steady: {per_worker:.3g} s per item per worker is below "
                              f"the {interval:.3g} s between arrivals")

    def _clamp(self, workers: int) -> int:
        return min(max(workers, self.min_workers), self.max_workers)
