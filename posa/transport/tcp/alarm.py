"""Waking listeners at a time: the alarm thread.

A tcp listener runs only when its descriptor fires, but its deadlines (a
connection that sent nothing, a stalled frame, an idle one, the end of an
accept back-off) fall due while nothing happens. ``alarm.at(when, wake)`` calls
``wake()`` at ``when`` (``time.monotonic()``) from one thread per process; a
listener's ``wake`` writes its wake-up socket, so its descriptor fires and the
poll that follows does what is due. The thread starts when a wake-up is asked
for and ends when none is left; a wake-up that comes too early or twice costs
one empty poll; a closing listener cancels its wake-ups.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["Alarm", "alarm"]


class Alarm:
    """Calls each ``wake`` at its time, on one daemon thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def at(self, when: float, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (which must not block or raise) at ``when``."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), wake))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="posa-tcp-alarm")
                self._thread.start()
            elif self._heap[0][0] == when:
                self._cond.notify()

    def cancel(self, wake: Callable[[], None]) -> None:
        """Forget every wake-up of ``wake`` (its listener closed)."""
        with self._cond:
            kept = [entry for entry in self._heap if entry[2] != wake]
            if len(kept) != len(self._heap):
                heapq.heapify(kept)
                self._heap = kept
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._heap:
                    self._thread = None
                    return
                when = self._heap[0][0]
                now = time.monotonic()
                if when > now:
                    self._cond.wait(when - now)
                    continue
                _, _, wake = heapq.heappop(self._heap)
            wake()


alarm = Alarm()
