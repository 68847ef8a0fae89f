"""A work queue's store on disk: one SQLite file (the standard library's ``sqlite3``).

``SqliteStore(path)`` keeps a queue's items, leases, attempts, finished keys
and dead letters (``posa.work.store`` defines what they are and what a batch of
changes means) in the SQLite database at ``path``, in WAL mode. Each ``write``
is one transaction; the queue answers a request only after the transaction of
its changes has committed.

How durable a commit is, is the ``synchronous`` choice (docs/work.md, "What
survives what"):

- ``"NORMAL"`` (the default): a commit is written to the WAL file before
  ``write`` returns, without waiting for the disk (no fsync per commit). It
  survives the queue process being killed (SIGKILL, a crash, OOM): the
  operating system has the data. A power cut or an operating-system crash may
  lose the last commits (the database itself stays consistent).
- ``"FULL"``: every commit waits for fsync of the WAL, so it survives a power
  cut too, at the cost of one disk flush per batch (docs/work.md has the
  measured cost).

The database is opened in exclusive locking mode: one queue per file. A
second process (or a second store in this one) opening the same file is
refused at once, saying so. Keys are strings; data are msgpack data.
"""
from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable, Hashable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import msgpack

from posa.errors import PosaError
from posa.runtime.sqlitefile import MARKS, check_kind, refusal, rollback
from posa.work.store import DONE, Change, DeadLetter, Snapshot, StoredItem

__all__ = ["SqliteStore", "SYNCHRONOUS"]

SYNCHRONOUS = ("NORMAL", "FULL")

_SCHEMA = (      # WITHOUT ROWID: one b-tree per table, keyed by the item's key
    "CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
    "data BLOB, attempts INTEGER NOT NULL, token INTEGER NOT NULL, worker TEXT NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS finished (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
    "status TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dead (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, data BLOB, "
    "attempts INTEGER NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID",
)
_TABLES = {"items": {"key", "seq", "data", "attempts", "token", "worker"},
           "finished": {"key", "seq", "status"},
           "dead": {"key", "seq", "data", "attempts", "reason"}}
CHECKPOINT_PAGES = 10_000   # WAL pages (4 KiB) between checkpoints: fewer flushes of the file

Params = Callable[[Change, Iterator[int]], tuple[Any, ...]]


def _key(change: Change, seq: Iterator[int]) -> tuple[Any, ...]:
    return (change[1],)


def _key_seq(change: Change, seq: Iterator[int]) -> tuple[Any, ...]:
    return (change[1], next(seq))


# each change kind: its statements, and how a change (and the next sequence
# number, which orders the rows as they came) become their parameters
_STATEMENTS: dict[str, tuple[tuple[str, Params], ...]] = {
    "add": (("INSERT OR REPLACE INTO items VALUES (?, ?, ?, 0, 0, '')",
             lambda c, seq: (c[1], next(seq), _pack(c[2]))),),
    "lease": (("UPDATE items SET token = ?, attempts = ?, worker = ? WHERE key = ?",
               lambda c, seq: (c[2], c[3], c[4], c[1])),),
    "release": (("UPDATE items SET worker = '' WHERE key = ?", _key),),
    "done": (("DELETE FROM items WHERE key = ?", _key),
             ("INSERT OR REPLACE INTO finished VALUES (?, ?, 'done')", _key_seq)),
    "dead": (("INSERT OR REPLACE INTO dead SELECT key, ?, data, ?, ? FROM items WHERE key = ?",
              lambda c, seq: (next(seq), c[2], c[3], c[1])),
             ("DELETE FROM items WHERE key = ?", _key),
             ("INSERT OR REPLACE INTO finished VALUES (?, ?, 'dead')", _key_seq)),
    "undead": (("DELETE FROM dead WHERE key = ?", _key),),
    "drop": (("DELETE FROM dead WHERE key = ?", _key),),
    "forget": (("DELETE FROM finished WHERE key = ?", _key),),
}


def _pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


class SqliteStore:
    """A queue's store in the SQLite file ``path`` (created if missing), WAL
    mode, ``synchronous`` "NORMAL" (survives a killed process) or "FULL"
    (survives a power cut too). Raises ``PosaError``, saying what to do, if the
    file cannot be opened or written, is in use by another queue (or process), or
    is not a queue's store (``posa.runtime.sqlitefile``)."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, "
                             f"got {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.writes = 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.0,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise PosaError(f"cannot open the queue store {self.path!r}: {exc}; give a "
                            "file in a directory that exists and the queue may write (the "
                            "file is created if missing)") from None
        try:
            self._setup()
        except (sqlite3.Error, ValueError) as exc:     # locked, not a database, ...
            self._db.close()
            raise PosaError(refusal(self.path, "queue", exc)) from None

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"WAL mode is not available ({mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        db.execute("BEGIN IMMEDIATE")       # takes the exclusive lock now
        try:
            check_kind(db, "queue", _TABLES)
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {MARKS['queue']}")   # fails if read-only
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        top = max(db.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()[0]
                  for table in ("items", "finished", "dead"))
        self._seq = itertools.count(top + 1)

    def load(self) -> Snapshot:
        """Everything held: items in the order they came, finished keys and dead
        letters oldest first. Raises ``PosaError``, saying what to do, if the
        file cannot be read (damaged)."""
        try:
            return self._load()
        except (sqlite3.Error, ValueError) as exc:
            raise PosaError(refusal(self.path, "queue", exc)) from None

    def _load(self) -> Snapshot:
        db = self._db
        items = [StoredItem(key, _unpack(data), attempts, token, worker)
                 for key, data, attempts, token, worker
                 in db.execute("SELECT key, data, attempts, token, worker FROM items "
                               "ORDER BY seq")]
        finished: list[tuple[Hashable, str]] = [
            (key, status) for key, status
            in db.execute("SELECT key, status FROM finished ORDER BY seq")]
        dead = [DeadLetter(key, _unpack(data), attempts, reason)
                for key, data, attempts, reason
                in db.execute("SELECT key, data, attempts, reason FROM dead ORDER BY seq")]
        return Snapshot(items, finished, dead)

    def write(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` as one transaction (runs of one kind with
        ``executemany``); committed when this returns. Raises ``PosaError``
        (nothing applied) if the database cannot be written."""
        if not changes:
            return
        db, seq = self._db, self._seq
        try:
            db.execute("BEGIN")
            try:
                for kind, run in itertools.groupby(changes, itemgetter(0)):
                    batch = list(run)
                    for sql, params in _STATEMENTS[kind]:
                        db.executemany(sql, [params(c, seq) for c in batch])
                db.execute("COMMIT")
            except BaseException:
                rollback(db)       # SQLite ended some failed ones itself
                raise
        except sqlite3.Error as exc:
            raise PosaError(f"the queue store {self.path!r} could not be written "
                            f"({exc}: is its disk full?); nothing of this batch was "
                            "stored") from None
        self.writes += 1

    def done_keys(self) -> set[Hashable]:
        """The keys finished as done (for inspection and tests)."""
        return {key for key, status in self.load().finished if status == DONE}

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL into it). Idempotent."""
        try:
            self._db.close()
        except sqlite3.Error:
            pass
