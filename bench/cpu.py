"""CPU per operation: user+system time of every process a row involves.

A row's CPU is the growth, over the row, of the CPU of every process below
the runner (``/proc``: each live descendant's own time plus what it reaped,
and the runner's reaped children), minus each process's start-up: when a
process prints its ``READY`` line (or a dispatcher its ``listening on``
line), ``at_ready(pid)`` notes its CPU so far, and that part is not counted.
Long-lived processes (the shared dispatcher, nats-server) count only what
they spent during the row.  A process that prints no READY line (a
request-reply client of posa or of an anchor) counts its interpreter's
start-up, its 500 warm-up calls and its exit, the same for posa and for the
anchors: about 0.23 s for posa's ``Peer.request`` client and 0.16 s for
Pyro5's, against the 2-3 s of CPU of a 10k-call row (so posa's rows carry
about 7 µs per call more start-up than Pyro5's).  Roles import only what they
use (a thread role does not load asyncio).  The runner itself (reading
pipes) is not counted.
"""
from __future__ import annotations

import os
import resource
import threading

__all__ = ["RowMeter", "at_ready", "process_ticks"]

_HZ = os.sysconf("SC_CLK_TCK")
_lock = threading.Lock()
_ready: dict[int, int] = {}        # pid -> its CPU ticks when it was ready


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime+stime+cutime+cstime in ticks) of ``pid``, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is the state (field 3 of stat); utime..cstime are fields 14..17
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def process_ticks(pid: int) -> int:
    stat = _stat(pid)
    return 0 if stat is None else stat[1]


def at_ready(pid: int) -> None:
    """Note ``pid``'s start-up CPU (call when it says it is ready)."""
    ticks = process_ticks(pid)
    with _lock:
        _ready.setdefault(pid, ticks)


def _tree_ticks(root: int) -> tuple[int, dict[int, int]]:
    """CPU ticks of every live descendant of ``root`` (each with what it reaped)."""
    parents: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                parents[int(name)] = stat
    below: dict[int, int] = {}
    for pid, (ppid, ticks) in parents.items():
        seen = 0
        while ppid not in (0, 1, root) and ppid in parents and seen < 64:
            ppid = parents[ppid][0]
            seen += 1
        if ppid == root and pid != root:
            below[pid] = ticks
    return sum(below.values()), below


def _reaped_ticks() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * _HZ


class RowMeter:
    """``start()`` before a row, ``stop()`` after its processes were stopped: CPU µs."""

    def __init__(self) -> None:
        self._root = os.getpid()
        self._start = 0.0
        self._live: set[int] = set()

    def start(self) -> None:
        ticks, below = _tree_ticks(self._root)
        self._live = set(below)
        with _lock:
            _ready.clear()
        self._start = ticks + _reaped_ticks()

    def stop(self) -> float:
        ticks, _ = _tree_ticks(self._root)
        with _lock:   # a process alive at start() counts from then on, start-up or not
            startup = sum(t for pid, t in _ready.items() if pid not in self._live)
        spent = ticks + _reaped_ticks() - self._start - startup
        return max(0.0, spent) * 1e6 / _HZ
