"""Where a channel's history survives a restart: the history-store interface and
its SQLite implementation (standard library ``sqlite3``, WAL).

A store holds publications in two steps:

- ``journal``: publications as the channel received them, before it
  acknowledged them (written on the reactor thread at the end of each turn,
  before that turn's acknowledgements go out: an event acknowledged to its
  publisher is in the store first);
- ``record``: the seqs the channel's core gave them (written under the
  channel's lock before any subscriber can take them). A publication accepted
  whole is numbered by a small row of its own (its bodies are written once); a
  part (a filter, a loop, a duplicate, a full ``block`` buffer) is written as an
  entry of its own, numbered at once.

``load`` gives both back after a restart: the incarnation and the head seq
continue, the numbered history is replayed into the core, and entries not yet
numbered are offered again (they were never delivered to anyone, so they may
take any seq after the head). ``trim`` forgets history below a seq.

``MemoryStore`` keeps nothing (the default: a restart starts a new
incarnation). A later store (JetStream) implements the same five calls.

Durability: ``synchronous=NORMAL`` in WAL mode. A commit survives the process
being killed (SIGKILL, a crash) but not the machine losing power or the kernel
crashing, which may lose the last commits (``synchronous="FULL"`` survives
those, at an fsync per commit; see docs/event-channel.md for what it costs).
"""
from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from posa.channel.history import run_bytes
from posa.channel.protocol import Publication
from posa.channel.run import Run
from posa.errors import PosaError
from posa.runtime.sqlitefile import MARKS, check_kind, refusal, rollback

__all__ = ["HistoryStore", "MemoryStore", "SqliteStore", "Stored", "open_store"]

SYNCHRONOUS = ("OFF", "NORMAL", "FULL")


@dataclass
class Stored:
    """What a store gives back at start: the incarnation, the last seq given
    out, the retained history (oldest first), and the journal entries still to
    number as ``(entry id, publication)``."""

    incarnation: int
    seq: int = 0
    runs: list[tuple[Run, float, int | None, int | None]] = field(default_factory=list)
    pending: list[tuple[int, Publication]] = field(default_factory=list)


class HistoryStore(Protocol):
    """The small interface a channel's durable history sits behind."""

    durable: bool

    def load(self) -> Stored: ...

    def journal(self, pubs: Sequence[Publication]) -> list[int]: ...

    def record(self, runs: Sequence[tuple[Run, float, int | None, int | None]],
               done: Sequence[tuple[int, int]], seq: int,
               whole: Sequence[tuple[Run, float, int | None, int | None]] = ()
               ) -> None: ...

    def trim(self, first_seq: int) -> None: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore:
    """No store: history lives in memory only, and a restart begins a new
    incarnation (seqs from 1)."""

    durable = False

    def load(self) -> Stored:
        return Stored(secrets.randbits(62) + 1)

    def journal(self, pubs: Sequence[Publication]) -> list[int]:
        return []

    def record(self, runs: Sequence[tuple[Run, float, int | None, int | None]],
               done: Sequence[tuple[int, int]], seq: int,
               whole: Sequence[tuple[Run, float, int | None, int | None]] = ()
               ) -> None:
        pass

    def trim(self, first_seq: int) -> None:
        pass

    def size(self) -> int:
        return 0

    def close(self) -> None:
        pass


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "seqs BLOB, topics BLOB NOT NULL, bodies BLOB NOT NULL, vias BLOB, origins BLOB, "
    "pid INTEGER, pseq INTEGER, done INTEGER NOT NULL DEFAULT 0, traces BLOB)",
    "CREATE TABLE IF NOT EXISTS numbered (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
    "entry INTEGER NOT NULL UNIQUE, stamp REAL NOT NULL, nbytes INTEGER NOT NULL)",
)
_TABLES = {     # the columns a store of any version has ("traces" came later)
    "meta": {"key", "value"},
    "journal": {"id", "seqs", "topics", "bodies", "vias", "origins", "pid", "pseq", "done"},
    "numbered": {"first", "last", "entry", "stamp", "nbytes"},
}


def _pack(value: Any) -> bytes | None:
    return None if value is None else msgpack.packb(value, use_bin_type=True)


def _unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob)


class SqliteStore:
    """A channel's journal and history in one SQLite file (WAL). Thread-safe:
    one connection under a lock, one transaction per call; a call that raises
    kept nothing. The file is held in exclusive locking mode until ``close``
    (one channel per file) and marked as a channel's store; ``ValueError`` at
    construction, saying what to do, if it is in use, not a channel's store, or
    cannot be written."""

    durable = True

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False,
                                       isolation_level=None, timeout=0.0)
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open the channel store {path!r}: {exc}; give a "
                             "writable file path in a directory that exists (the file is "
                             "created if missing)") from None
        try:
            self._setup(synchronous.upper())
        except (sqlite3.Error, ValueError) as exc:
            self._db.close()
            raise ValueError(refusal(path, "channel", exc)) from None
        self._bytes = self._db.execute(
            "SELECT COALESCE(SUM(nbytes), 0) FROM numbered").fetchone()[0]

    def _setup(self, synchronous: str) -> None:
        """Own the file (exclusive lock, held until ``close``), check it is a
        channel store, create or complete its tables, and prove it writable."""
        db = self._db
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        if str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() != "wal":
            raise sqlite3.OperationalError("WAL mode is not available there")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("BEGIN IMMEDIATE")            # the lock, now; a read-only file fails
        try:
            check_kind(db, "channel", _TABLES)
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(journal)")}
            if "traces" not in columns:      # a store from before events had traces
                db.execute("ALTER TABLE journal ADD COLUMN traces BLOB")
            db.execute(f"PRAGMA user_version = {MARKS['channel']}")
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def load(self) -> Stored:
        """What the store holds. Raises ``PosaError``, saying what to do, if the
        file cannot be read (damaged)."""
        with self._lock:
            try:
                return self._load()
            except (sqlite3.Error, ValueError) as exc:
                raise PosaError(refusal(self.path, "channel", exc)) from None

    def _load(self) -> Stored:
        db = self._db
        inc = self._meta("incarnation")
        if inc is None:
            inc = secrets.randbits(62) + 1
            db.execute("INSERT INTO meta VALUES ('incarnation', ?)", (inc,))
        floor = self._meta("first") or 1
        head = db.execute("SELECT MAX(last) FROM numbered").fetchone()[0]
        stored = Stored(inc, max(head or 0, floor - 1))
        for row in db.execute(
                "SELECT n.first, n.last, j.seqs, j.topics, j.bodies, j.vias, j.origins, "
                "n.stamp, j.pid, j.pseq, j.traces FROM numbered n JOIN journal j ON "
                "j.id = n.entry WHERE n.last >= ? ORDER BY n.first", (floor,)):
            run = _run_of(row)
            run.traces = _unpack(row[10])
            if run.first < floor:
                run = run.slice(floor - run.first, len(run))
            stored.runs.append((run, row[7], row[8], row[9]))
        for row in db.execute(
                "SELECT id, topics, bodies, vias, origins, pid, pseq, done, traces "
                "FROM journal "
                "WHERE id NOT IN (SELECT entry FROM numbered) ORDER BY id"):
            pub = Publication(_unpack(row[1]), blob=row[2], vias=_unpack(row[3]),
                              origins=_unpack(row[4]), pid=row[5], pseq=row[6],
                              traces=_unpack(row[8]))
            stored.pending.append((row[0], pub.tail(row[7]) if row[7] else pub))
        return stored

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; one that fails is rolled back (the
        next can begin: the store recovers once the disk has room again)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise

    def journal(self, pubs: Sequence[Publication]) -> list[int]:
        """Keep publications just received; durable when this returns (nothing
        of them kept if it raises)."""
        with self._transaction() as db:
            return [db.execute(
                "INSERT INTO journal (topics, bodies, vias, origins, pid, pseq, traces) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_pack(p.topics), p.blob if p.blob is not None else _pack(p.bodies),
                 _pack(p.vias), _pack(p.origins), _int64(p.pid), _int64(p.pseq),
                 _pack(p.traces))).lastrowid or 0
                for p in pubs]

    def record(self, runs: Sequence[tuple[Run, float, int | None, int | None]],
               done: Sequence[tuple[int, int]], seq: int,
               whole: Sequence[tuple[Run, float, int | None, int | None]] = ()
               ) -> None:
        """Number journal entries, in one transaction: ``done`` says for each
        ``(id, n)`` how many more of its events are settled (-1: all of them,
        what was accepted being in ``runs``; -2: all, accepted as they are: the
        next run of ``whole``); ``runs`` are written as entries of their own."""
        added = 0
        with self._transaction() as db:
            numbered = iter(whole)
            for entry, n in done:
                if n == -2:
                    run, stamp, _, _ = next(numbered)
                    added += self._number(run, entry, stamp)
                elif n < 0:
                    db.execute("DELETE FROM journal WHERE id = ? AND id NOT IN "
                               "(SELECT entry FROM numbered)", (entry,))
                else:
                    db.execute("UPDATE journal SET done = done + ? WHERE id = ?", (n, entry))
            for run, stamp, pid, pseq in runs:
                entry = db.execute(
                    "INSERT INTO journal (seqs, topics, bodies, vias, origins, pid, pseq, "
                    "done, traces) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (_pack(run.seqs), _pack(run.topic if run.topic is not None
                                            else run.topics),
                     _blob(run), _pack(run.vias), _pack(run.origins), _int64(pid),
                     _int64(pseq), _pack(run.traces))
                ).lastrowid or 0
                added += self._number(run, entry, stamp)
        self._bytes += added

    def _number(self, run: Run, entry: int, stamp: float) -> int:
        nbytes = _size(run)
        self._db.execute("INSERT OR REPLACE INTO numbered VALUES (?, ?, ?, ?, ?)",
                         (run.first, run.last, entry, stamp, nbytes))
        return nbytes

    def trim(self, first_seq: int) -> None:
        """Forget history below ``first_seq``."""
        with self._transaction() as db:
            gone = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM numbered WHERE "
                              "last < ?", (first_seq,)).fetchone()[0]
            db.execute("DELETE FROM journal WHERE id IN (SELECT entry FROM numbered "
                       "WHERE last < ?)", (first_seq,))
            db.execute("DELETE FROM numbered WHERE last < ?", (first_seq,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('first', ?)", (first_seq,))
        self._bytes -= gone

    def size(self) -> int:
        """Bytes of history held (events' bodies and topics)."""
        return int(self._bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _int64(value: int | None) -> int | None:
    """A publisher's id or seq as SQLite keeps it (one out of range: none)."""
    return value if value is None or -2**63 <= value < 2**63 else None


def _blob(run: Run) -> bytes:
    return run.blob if run.blob is not None else _pack(run.bodies) or b""


def _size(run: Run) -> int:
    return run_bytes(run)


def _run_of(row: Any) -> Run:
    """A numbered run from a row of (first, last, seqs, topics, bodies, vias, origins ...)."""
    first, _last, seqs, topics, blob, vias, origins = row[:7]
    topics = _unpack(topics)
    seqs = _unpack(seqs)
    n = len(seqs) if seqs is not None else _last - first + 1
    if isinstance(topics, str):
        return Run(first, [topics] * n, blob=blob, seqs=seqs, vias=_unpack(vias),
                   origins=_unpack(origins), topic=topics)
    return Run(first, topics, blob=blob, seqs=seqs, vias=_unpack(vias),
               origins=_unpack(origins))


def open_store(store: str | HistoryStore | None) -> HistoryStore:
    """A store from what ``EventChannel(store=...)`` was given: None (memory
    only), a file path (SQLite), or a store object."""
    if store is None:
        return MemoryStore()
    if isinstance(store, str):
        return SqliteStore(store)
    return store
