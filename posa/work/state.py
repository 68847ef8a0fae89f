"""The work queue's bookkeeping (sans-IO: no threads, no clock, no storage).

``WorkState`` is the queue manager of the work-queue pattern: it knows every
item it was given and whether the item waits, is leased to a worker, is done or
was given up (dead-lettered).  It takes the time as an argument, so a test
drives it with any sequence of events and any clock.  (The scaling rule is
``posa.work.scaling``.)

Durability without I/O: built with ``journal=True`` the state appends every
change it makes to ``journal`` as a plain tuple (``posa.work.store`` names the
kinds); whoever drives it hands ``take_changes()`` to a store in one
transaction before it answers the request that caused them, and a restarted
queue rebuilds the state from the store's ``Snapshot`` (``restore``).

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
- at most ``max_in_flight`` items are leased at any time;
- the journal, replayed into a store and loaded back (``restore``), gives the
  same items, attempts, leases, finished keys and dead letters.

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
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, NamedTuple

from posa.errors import Rejected
from posa.work.store import DEAD, DONE, LEASED, PENDING, Change, DeadLetter, Snapshot

__all__ = ["Lease", "DeadLetter", "WorkState", "PENDING", "LEASED", "DONE", "DEAD"]

class Lease(NamedTuple):
    """One item handed to a worker; ``token`` names this lease for ``fail``/``extend``.
    A named tuple: one is built per item handed out, on the queue's hot path (a
    third of the cost of a frozen dataclass)."""

    key: Hashable
    token: int
    attempt: int        # 1 for the first delivery, 2 for the first redelivery ...
    data: Any


class _Item:
    __slots__ = ("data", "status", "token", "attempts", "deadline", "worker", "since")

    def __init__(self, data: Any, since: float = 0.0) -> None:
        self.data = data
        self.since = since          # when it was added (or restored)
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
    letters kept for inspection (the oldest are dropped first); ``journal``:
    record every change in ``journal`` for a store (``take_changes``).
    """

    def __init__(self, *, visibility: float = 30.0, max_in_flight: int = 1000,
                 max_attempts: int = 3, capacity: int = 100_000,
                 remember: int = 1_000_000, max_dead: int = 10_000,
                 journal: bool = False) -> None:
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
        self.journal: list[Change] | None = [] if journal else None

    def take_changes(self) -> list[Change]:
        """The changes journaled since the last call (empty without a journal)."""
        changes = self.journal
        if not changes:
            return []
        self.journal = []
        return changes

    def restore(self, snapshot: Snapshot, now: float) -> None:
        """Take over what a store held (into an empty state): items leased then
        are leased again until ``now + visibility`` under their old token, so
        their workers may still acknowledge them; then they are handed out again.
        Counters start over, with ``added``, ``done`` and ``dead`` counting what
        was held, completed and given up before."""
        if self._items or self._finished or self._dead:
            raise ValueError("restore needs an empty state")
        top = 0
        for key, data, attempts, token, worker in snapshot.items:
            item = self._items[key] = _Item(data, now)
            item.attempts, item.token = attempts, token
            top = max(top, token)
            if worker:
                item.status, item.worker = LEASED, worker
                item.deadline = now + self.visibility
                heapq.heappush(self._heap, (item.deadline, token, key))
                self.n_leased += 1
            else:
                self._pending.append(key)
                self.n_pending += 1
        self._finished.update(snapshot.finished)
        self._dead.update((letter.key, letter) for letter in snapshot.dead)
        self._tokens = itertools.count(top + 1)
        done = sum(1 for status in self._finished.values() if status == DONE)
        self.counters.update(added=len(self._items) + done + len(self._dead), done=done,
                             dead=len(self._dead))

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

    def oldest_age(self, now: float) -> float:
        """Seconds the item at the head of the pending queue (the next to be handed
        out) has waited since it was added or restored; 0.0 with nothing pending."""
        pending, items = self._pending, self._items
        while pending:
            item = items.get(pending[0])
            if item is not None and item.status == PENDING:
                return max(0.0, now - item.since)
            pending.popleft()                       # stale entry (lazy deletion)
        return 0.0

    def counts(self) -> dict[str, int]:
        """pending, leased, done, dead, total (= added) and the event counters."""
        return {"pending": self.n_pending, "leased": self.n_leased,
                "total": self.counters["added"], **self.counters}

    # -- events ------------------------------------------------------------------
    def add(self, key: Hashable, data: Any = None, now: float = 0.0) -> bool:
        """Queue a new item (added at ``now``). False (and nothing changes) if ``key``
        is known: held now, or finished and still remembered. Raises ``Rejected``
        when the queue is at capacity."""
        if key in self._items or key in self._finished:
            self.counters["duplicate_adds"] += 1
            return False
        if self.room() <= 0:
            raise Rejected(f"the work queue holds {self.capacity} items (its capacity); "
                           "retry when workers have caught up, or raise capacity")
        self._items[key] = _Item(data, now)
        self._pending.append(key)
        self.n_pending += 1
        self.counters["added"] += 1
        if self.journal is not None:
            self.journal.append(("add", key, data))
        return True

    def lease(self, worker: str, now: float, max_items: int = 1) -> list[Lease]:
        """Hand up to ``max_items`` pending items to ``worker`` until
        ``now + visibility``, oldest first, within the in-flight limit."""
        n = min(max_items, self.max_in_flight - self.n_leased, self.n_pending)
        leases: list[Lease] = []
        pending, items = self._pending, self._items
        deadline = now + self.visibility
        journal = self.journal
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
            if journal is not None:
                journal.append(("lease", key, item.token, item.attempts, worker))
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
                self._record("undead", key)
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
        self._record("undead", key)
        self._record("forget", key)
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
            self._record("dead", key, item.attempts, reason)
            self._finish(key, DEAD)
            self._dead[key] = DeadLetter(key, item.data, item.attempts, reason)
            if len(self._dead) > self.max_dead:
                self._record("drop", self._dead.popitem(last=False)[0])
            self.counters["dead"] += 1
            return DEAD
        item.status = PENDING
        item.worker = ""
        self._record("release", key)
        self._pending.append(key)
        self.n_pending += 1
        return PENDING

    def _finish(self, key: Hashable, status: str) -> None:
        finished = self._finished
        finished[key] = status
        finished.move_to_end(key)
        if status == DONE and self.journal is not None:
            self.journal.append(("done", key))
        if len(finished) > self.remember:
            self._record("forget", finished.popitem(last=False)[0])

    def _record(self, *change: Any) -> None:
        if self.journal is not None:
            self.journal.append(change)

    def _push(self, deadline: float, token: int, key: Hashable) -> None:
        heap = self._heap
        if len(heap) > 2 * self.n_leased + 64:      # mostly stale: keep the live ones
            heap[:] = [entry for entry in heap if self._live_entry(*entry)]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, token, key))
