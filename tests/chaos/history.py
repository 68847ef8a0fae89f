"""Histories: every chaos process appends what it did and saw, one JSON object a line.

A record is written with one ``write`` system call on a file opened ``O_APPEND``, so
what a process recorded survives its SIGKILL (the kernel has it); a line cut short by
the kill is skipped when the histories are read back. Times are ``time.time()`` (one
clock for every process of the machine); what must be exact within one process (how
late a call returned against its own deadline) is computed there from the monotonic
clock and recorded as a number.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["History", "read_all"]


class History:
    """The append-only record of one process incarnation (thread-safe)."""

    def __init__(self, path: Path, **common: Any) -> None:
        self.path = path
        self.common = common
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def record(self, ev: str, **fields: Any) -> None:
        entry = {"ev": ev, "t": time.time(), **self.common, **fields}
        line = (json.dumps(entry, separators=(",", ":"), default=repr) + "\n").encode()
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every record of every ``*.jsonl`` history in ``directory``, in time order
    (each with ``_file`` and ``_n``, its line there: one process's own order)."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(errors="replace").splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue            # a line cut short by SIGKILL
            if isinstance(entry, dict) and "ev" in entry:
                entry["_file"], entry["_n"] = path.name, n
                records.append(entry)
    records.sort(key=lambda r: float(r.get("t", 0.0)))
    return records
