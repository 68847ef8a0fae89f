"""A channel's history in memory: the runs it keeps for replay, and retention
by count, bytes and age (sans-IO, pure: the time is given).

Runs are kept as accepted, oldest first. Retention forgets the oldest events
beyond ``count`` events, ``max_bytes`` bytes of bodies and topics, or older
than ``max_age`` seconds; the oldest run is forgotten in part by skipping its
first events (slicing would decode it), so memory holds at most one run more.
A ``posa.channel.store`` store keeps the same history on disk.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import deque

from posa.channel.run import Run

__all__ = ["History", "run_bytes"]


def run_bytes(run: Run) -> int:
    """About how many bytes a run's bodies, topics and traces take (its encoded
    form when it has one, else an estimate of 64 bytes per event)."""
    return (len(run.blob) if run.blob is not None else 64 * len(run)) \
        + run.topics_size() + run.traces_size()


class History:
    """The runs a channel keeps for replay, bounded by ``count`` events,
    ``max_bytes`` and ``max_age`` seconds (None: no bound of that kind)."""

    def __init__(self, count: int, *, max_bytes: int | None = None,
                 max_age: float | None = None) -> None:
        if count < 0 or (max_bytes is not None and max_bytes < 0) or \
                (max_age is not None and max_age <= 0):
            raise ValueError("history must be >= 0 events, max_bytes >= 0, max_age > 0 s")
        self.limit = count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.runs: deque[Run] = deque()
        self._stamps: deque[float] = deque()
        self._sizes: deque[int] = deque()
        self.size = 0              # events held
        self.bytes = 0             # bytes of the runs held (a partly skipped one whole)
        self.skip = 0              # events of runs[0] no longer held
        self.head = 0              # the last seq added

    def first_seq(self) -> int:
        """The oldest seq held (head + 1 when empty)."""
        return self.head - self.size + 1

    def add(self, run: Run, stamp: float) -> None:
        """Keep ``run`` (accepted at ``stamp``) and apply the count and byte limits."""
        nbytes = run_bytes(run)
        self.runs.append(run)
        self._stamps.append(stamp)
        self._sizes.append(nbytes)
        self.size += len(run)
        self.bytes += nbytes
        self.head = run.last
        self._forget(self.size - self.limit)
        while self.max_bytes is not None and self.bytes > self.max_bytes and self.runs:
            self._forget(len(self.runs[0]) - self.skip)

    def expire(self, now: float) -> None:
        """Forget the runs older than ``max_age`` at ``now``."""
        if self.max_age is None:
            return
        cutoff = now - self.max_age
        while self._stamps and self._stamps[0] < cutoff:
            self._forget(len(self.runs[0]) - self.skip)

    def _forget(self, excess: int) -> None:
        runs = self.runs
        while excess > 0 and runs:
            held = len(runs[0]) - self.skip
            if held <= excess:
                runs.popleft()
                self._stamps.popleft()
                self.bytes -= self._sizes.popleft()
                self.skip = 0
                self.size -= held
                excess -= held
            else:
                self.skip += excess
                self.size -= excess
                excess = 0

    def index(self, seq: int) -> int:
        """The index of the run holding ``seq`` (or the first after it)."""
        return max(0, bisect_right(self.runs, seq, key=lambda r: r.first) - 1)
