"""Where a work queue keeps what it must not lose: the storage interface.

A store holds a queue's items (data, attempts, the lease: token and worker),
the keys it finished (done or dead, for de-duplication) and its dead letters.
The queue's state (``posa.work.state.WorkState``, sans-IO) journals every
change it makes as a tuple; the queue hands the journal of one request to
``QueueStore.write`` as one batch, and answers the request only once ``write``
has returned. A restarted queue rebuilds its state from ``load()``.

The changes (``Change``), in the order the state made them:

    ("add", key, data)                        a new pending item
    ("lease", key, token, attempts, worker)   handed to ``worker``
    ("release", key)                          back to pending (failed, lease expired)
    ("done", key)                             completed: item gone, key finished "done"
    ("dead", key, attempts, reason)           given up: item gone, key finished "dead",
                                              a dead letter kept
    ("undead", key)                           a dead letter removed (late success, requeue)
    ("forget", key)                           a finished key no longer remembered
    ("drop", key)                             a dead letter no longer kept

Implementations: ``MemoryStore`` here (the reference: what ``write`` means,
and what a queue without a store behaves like, minus the cost) and
``posa.work.sqlitestore.SqliteStore`` (on disk, the default for ``--store``). The
contract is tested on both with the same journals (tests/test_workqueue_store.py).
Pure: no I/O here.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = ["Change", "DeadLetter", "StoredItem", "Snapshot", "QueueStore", "MemoryStore",
           "Committer", "PENDING", "LEASED", "DONE", "DEAD"]

PENDING = "pending"
LEASED = "leased"
DONE = "done"
DEAD = "dead"

Change = tuple[Any, ...]


@dataclass(frozen=True)
class DeadLetter:
    """An item given up after ``attempts`` failed attempts; ``reason`` is the last."""

    key: Hashable
    data: Any
    attempts: int
    reason: str


class StoredItem(NamedTuple):
    """An item not finished: ``worker`` is "" while it is pending, else it is
    leased to ``worker`` under ``token``."""

    key: Hashable
    data: Any
    attempts: int
    token: int
    worker: str


@dataclass
class Snapshot:
    """What a store holds, oldest first in each list."""

    items: list[StoredItem] = field(default_factory=list)
    finished: list[tuple[Hashable, str]] = field(default_factory=list)   # (key, DONE/DEAD)
    dead: list[DeadLetter] = field(default_factory=list)


class QueueStore(Protocol):
    """A queue's storage. ``write`` applies a batch of changes atomically (all
    or none) and returns once they are as durable as the store promises;
    ``load`` returns everything written so far; ``close`` releases the store."""

    def load(self) -> Snapshot:
        """Everything the store holds."""

    def write(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in order, as one transaction."""

    def close(self) -> None:
        """Release the store (further writes are an error)."""


class Committer:
    """Writes a state's journal (``take_changes``) to ``store``, one batch per
    ``commit``. A write that fails raises, and its changes are written first
    by the next ``commit``, with what was to follow them (``after``): a later
    success means everything before it is stored, so no request is answered
    (nor an item reported done) while a change it depends on is not."""

    def __init__(self, store: QueueStore, take_changes: Callable[[], list[Change]]) -> None:
        self.store = store
        self._take = take_changes
        self._unwritten: list[Change] = []
        self._after: list[Any] = []
        self.failures = 0           # writes failed since the last that succeeded
        self._told = False          # ``tell`` answered True in this run of failures

    def commit(self, after: Sequence[Any] = ()) -> list[Any]:
        """Write the journal; return ``after`` (what may be done only once these
        changes are stored: answers, callbacks) after what failed commits kept.
        A commit that fails keeps its ``after`` for the next, and raises."""
        self._after.extend(after)
        changes = self._unwritten + self._take()
        if changes:
            self._unwritten = changes
            try:
                self.store.write(changes)
            except BaseException:
                self.failures += 1
                raise
            self._unwritten = []
            self.failures, self._told = 0, False
        done, self._after = self._after, []
        return done

    def tell(self) -> bool:
        """True the first time it is asked in a run of failed writes (to log once)."""
        told, self._told = self._told, True
        return self.failures > 0 and not told


class MemoryStore:
    """A store in this process's memory: it survives a queue's ``close`` and a
    new queue given the same store (tests, or a queue restarted in place), not
    the process. Not thread-safe (the queue writes under its lock)."""

    def __init__(self) -> None:
        self.items: OrderedDict[Hashable, StoredItem] = OrderedDict()
        self.finished: OrderedDict[Hashable, str] = OrderedDict()
        self.dead: OrderedDict[Hashable, DeadLetter] = OrderedDict()
        self.writes = 0                 # batches written (one transaction each)

    def load(self) -> Snapshot:
        return Snapshot(list(self.items.values()), list(self.finished.items()),
                        list(self.dead.values()))

    def write(self, changes: Sequence[Change]) -> None:
        for change in changes:
            _APPLY[change[0]](self, *change[1:])
        self.writes += 1

    def close(self) -> None:
        pass

    def _add(self, key: Hashable, data: Any) -> None:
        self.items[key] = StoredItem(key, data, 0, 0, "")

    def _lease(self, key: Hashable, token: int, attempts: int, worker: str) -> None:
        self.items[key] = self.items[key]._replace(token=token, attempts=attempts,
                                                   worker=worker)

    def _release(self, key: Hashable) -> None:
        self.items[key] = self.items[key]._replace(worker="")

    def _done(self, key: Hashable) -> None:
        self.items.pop(key, None)
        self._finish(key, DONE)

    def _dead(self, key: Hashable, attempts: int, reason: str) -> None:
        item = self.items.pop(key)
        self._finish(key, DEAD)
        self.dead.pop(key, None)                # a letter kept before moves to the end
        self.dead[key] = DeadLetter(key, item.data, attempts, reason)

    def _undead(self, key: Hashable) -> None:
        self.dead.pop(key, None)

    def _forget(self, key: Hashable) -> None:
        self.finished.pop(key, None)

    def _drop(self, key: Hashable) -> None:
        self.dead.pop(key, None)

    def _finish(self, key: Hashable, status: str) -> None:
        self.finished[key] = status
        self.finished.move_to_end(key)


_APPLY: dict[str, Any] = {
    "add": MemoryStore._add, "lease": MemoryStore._lease, "release": MemoryStore._release,
    "done": MemoryStore._done, "dead": MemoryStore._dead, "undead": MemoryStore._undead,
    "forget": MemoryStore._forget, "drop": MemoryStore._drop,
}
