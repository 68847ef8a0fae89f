"""Latency histograms: observations counted in cumulative Prometheus buckets.

``Histogram.observe`` appends to a queue (a ``deque``: atomic, no lock), so any
thread may call it at the cost of an append; every ``FOLD_AT`` observations, and
before ``samples`` reads the counts, the queue is folded into the counts under a
lock (each observation once: only a fold takes from the queue). ``samples``
copies the counts under the lock and accumulates outside it.
``timed`` wraps a handler to observe its own duration.  A ``Monitor`` given a
histogram exports it with its own ``# HELP`` text.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from posa.wire.codec import Message

__all__ = ["Histogram", "timed", "DEFAULT_BUCKETS", "FOLD_AT"]

FOLD_AT = 256       # observations queued before they are counted (samples counts them)

DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted in cumulative buckets (seconds by default).

    ``observe`` may be called from any thread."""

    def __init__(self, name: str = "posa_request_seconds",
                 help: str = "time from a request's arrival to its answer, seconds",
                 buckets: Sequence[float] = DEFAULT_BUCKETS,
                 labels: Mapping[str, str] | None = None) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and not empty")
        self.name = name
        self.help = help
        self.buckets = tuple(float(b) for b in buckets)
        self.labels = dict(labels or {})
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()       # the counts and sum; held to fold
        self._new: deque[float] = deque()   # observations not counted yet
        self._slot = partial(bisect.bisect_left, self.buckets)

    def observe(self, value: float) -> None:
        new = self._new
        new.append(value)
        if len(new) >= FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Count the observations queued (those appended meanwhile wait)."""
        with self._lock:
            new = self._new
            taken = [new.popleft() for _ in range(len(new))]
            counts = self._counts
            for slot, n in Counter(map(self._slot, taken)).items():
                counts[slot] += n
            self._sum += sum(taken)

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe how long the ``with`` block takes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        self._fold()
        with self._lock:
            counts, total = list(self._counts), self._sum
        out = []
        running = 0
        for bound, count in zip(self.buckets + (float("inf"),), counts):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append((self.name + "_bucket", {**self.labels, "le": le}, float(running)))
        out.append((self.name + "_sum", dict(self.labels), total))
        out.append((self.name + "_count", dict(self.labels), float(running)))
        return out


def timed(handler: Callable[[Message], Any], histogram: Histogram) -> Callable[[Message], Any]:
    """``handler`` that observes its own duration in ``histogram`` (for
    ``Peer.serve``; a handler that returns ``DEFERRED`` should call
    ``histogram.observe`` itself when it replies)."""
    def run(msg: Message) -> Any:
        start = time.perf_counter()
        try:
            return handler(msg)
        finally:
            histogram.observe(time.perf_counter() - start)
    return run

