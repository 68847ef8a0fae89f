"""One SQLite file, one owner, one kind of store: what the work queue's and the
channel's stores (``posa.work.sqlitestore``, ``posa.channel.store``) check when
they open their file, and how they say what is wrong with it.

Each kind of store marks its file (``PRAGMA user_version``): a queue's store is
not taken for a channel's, nor the other way round, nor a database of another
program. A file without a mark is taken if its tables are the store's own (a
store written before the mark) or it has none (a new file).

``refusal`` words an error met while opening, with what to do; ``rollback``
ends a transaction that failed, if SQLite did not end it itself, so that the
next one can begin (a transaction left open refuses every later ``BEGIN``).
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Set

__all__ = ["MARKS", "KindError", "check_kind", "refusal", "rollback"]

MARKS = {"queue": 0x706F7371, "channel": 0x706F7363}     # "posq", "posc"


class KindError(ValueError):
    """The file is not a store of the kind asked for."""


def check_kind(db: sqlite3.Connection, kind: str,
               tables: Mapping[str, Set[str]]) -> None:
    """Raise ``KindError`` if the database is not a ``kind`` store: marked as
    another, or holding tables (or lacking columns) a ``kind`` store does not."""
    mark = db.execute("PRAGMA user_version").fetchone()[0]
    if mark == MARKS[kind]:
        return
    others = [other for other, value in MARKS.items() if value == mark]
    if others:
        raise KindError(f"it is a {others[0]} store, not a {kind} store")
    if mark:
        raise KindError(f"it was written by another program (user_version {mark})")
    found = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    foreign = sorted(found - set(tables))
    if foreign:
        raise KindError(f"it holds tables a {kind} store does not ({', '.join(foreign)})")
    for name in found:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({name})")}
        if not tables[name] <= columns:
            raise KindError(f"its table {name} lacks the columns "
                             f"{', '.join(sorted(tables[name] - columns))}")


def rollback(db: sqlite3.Connection) -> None:
    """End the transaction in progress, if any (SQLite ends some itself)."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def refusal(path: str, kind: str, exc: Exception) -> str:
    """Why the ``kind`` store at ``path`` cannot be used, and what to do."""
    text = str(exc)
    if isinstance(exc, ValueError) and not isinstance(exc, KindError):
        text = f"a row is corrupt: {text}"         # msgpack could not read what it holds
    if "locked" in text or "busy" in text:
        return (f"the {kind} store {path!r} is in use by another {kind} (one {kind} per "
                f"store file) or held by another process; stop it, or give this {kind} "
                "a file of its own")
    if "readonly" in text or "read-only" in text or not _writable(path):
        return (f"the {kind} store {path!r} cannot be written ({text}); make the file "
                "and its directory writable, or give a file where this process may write")
    if "malformed" in text or "corrupt" in text:
        return (f"the {kind} store {path!r} is damaged ({text}): restore it from a "
                "backup, or keep what SQLite can recover (sqlite3 FILE .recover) in a new "
                f"file, or give the {kind} a new file")
    if "disk I/O" in text or "full" in text:
        return (f"the {kind} store {path!r} could not be written ({text}): is its disk "
                "full, or may the file not grow? Make room, then start again")
    return (f"cannot use {path!r} as a {kind} store: {text}; give the {kind} a file of "
            "its own (it is created if missing)")


def _writable(path: str) -> bool:
    """The file (if there) and its directory (where SQLite puts the WAL) may be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return True             # not the trouble: said as it is
    return os.access(folder, os.W_OK) and (not os.path.exists(path)
                                           or os.access(path, os.W_OK))
