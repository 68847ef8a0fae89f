"""A dispatcher's state file: its registry kept across restarts and crashes.

The file is a snapshot of the registry (``PATH``, replaced atomically: a reader
sees the old state or the new) plus a journal of the changes since
(``PATH.journal``). Each change is ``record``-ed and the journal appended to and
fsynced (``commit``) before a register or unregister is answered, so an
acknowledged registration survives a crash; the journal is folded into a new
snapshot once it holds more than ``JOURNAL_COMPACT_AFTER`` records (``due``).

``load`` reads the snapshot, replays the journal over it and gives every
restored registration one whole lease from now (owners could not renew while
the dispatcher was down); ``posa/`` names are left out (a dispatcher registers its
own anew, a posa service its own). A state that cannot be read, or a first
snapshot that cannot be written, raises ``PosaError`` saying what to do: the
dispatcher refuses to run without keeping its registry. Later failures are
logged and the dispatcher goes on.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack

from posa.errors import PosaError
from posa.naming.quotas import is_reserved
from posa.naming.table import RegistryTable

__all__ = ["StateFile", "JOURNAL_COMPACT_AFTER"]

log = logging.getLogger("posa.dispatch.dispatcher")    # said as the dispatcher's

JOURNAL_COMPACT_AFTER = 10_000   # journal records folded into a new snapshot


class StateFile:
    """The snapshot and journal at ``path``; ``export()`` gives the registry's
    state to snapshot (``LocalRegistry.export_state``)."""

    def __init__(self, path: str, export: Callable[[], Any]) -> None:
        self.path = path
        self._export = export
        self._pending: list[dict[str, Any]] = []
        self._journaled = 0

    @property
    def due(self) -> bool:
        """The journal has grown enough to be folded into a new snapshot."""
        return self._journaled > JOURNAL_COMPACT_AFTER

    def record(self, name: str, entry: Any) -> None:
        """Note ``name``'s new entry (None: gone) for the next ``commit``."""
        self._pending.append({"name": name, "entry": entry})

    def commit(self) -> None:
        """Append the changes recorded since the last commit to the journal, fsynced."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        data = b"".join(msgpack.packb(record) for record in records)
        try:
            with open(f"{self.path}.journal", "ab") as journal:
                journal.write(data)
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as exc:
            log.error("cannot append to the journal of %s: %s", self.path, exc)
            return
        self._journaled += len(records)

    def snapshot(self, *, first: bool = False) -> None:
        """Replace the snapshot with the registry's state and empty the journal;
        ``first`` (at start): raise ``PosaError`` if it cannot be written."""
        path = self.path
        data = msgpack.packb({"saved_at": time.time(), "table": self._export()})
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)   # atomic: a reader sees the old or the new state
            with open(f"{path}.journal", "wb"):
                pass                # the snapshot holds everything the journal did
        except OSError as exc:
            if first:   # at start: refuse to run without keeping the registry
                raise PosaError(f"cannot keep the dispatcher state in {path}: {exc}; give "
                                "--state a file in a directory this process may write") from None
            log.error("cannot write the state file %s: %s", path, exc)
            return
        self._journaled = 0

    def load(self) -> RegistryTable:
        """The registry kept in the file (empty without one); see the module."""
        path = self.path
        state: dict[str, Any] = {"version": 1, "entries": [], "epochs": {}}
        try:
            try:
                with open(path, "rb") as f:
                    state = msgpack.unpackb(f.read(), raw=False)["table"]
            except FileNotFoundError:
                pass
            entries = {entry["name"]: entry for entry in state["entries"]}
            try:
                with open(f"{path}.journal", "rb") as f:
                    _replay(msgpack.Unpacker(f, raw=False), entries, state["epochs"])
            except FileNotFoundError:
                pass
            state["entries"] = list(entries.values())
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise PosaError(f"cannot read the dispatcher state {path}: {exc}; move it "
                            "and its .journal away to start empty") from None
        # owners could not renew while the dispatcher was down: every restored
        # registration gets one whole lease from now to be renewed, or it expires
        for entry in state["entries"]:
            entry["expires_in"] = entry["lease"]
        # posa/ names are posa's own: this dispatcher registers its own anew, and a
        # posa service its own (its renewal refused, it registers again)
        state["entries"] = [e for e in state["entries"] if not is_reserved(e["name"])]
        return RegistryTable.import_state(state)


def _replay(records: Any, entries: dict[str, Any], epochs: dict[str, Any]) -> None:
    """The journal's ``records`` applied to ``entries`` (a name gone keeps its epoch)."""
    for record in records:
        if record["entry"] is None:
            gone = entries.pop(record["name"], None)
            if gone is not None:
                epochs[record["name"]] = gone["epoch"]
        else:
            entries[record["name"]] = record["entry"]
