"""The scaling rule for a pool of workers (sans-IO: the time is an argument).

``ScalingAdvisor`` applies the rule of the work-queue pattern for sizing the
pool of workers: a queue is stable when the mean processing time divided by the
number of workers is below the mean interval between arrivals.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Recommendation", "ScalingAdvisor"]


@dataclass(frozen=True)
class Recommendation:
    """What the advisor recommends and why (``reason`` is for people)."""

    workers: int                    # recommended number of workers
    current: int                    # the number it was given
    mean_interval: float | None     # seconds between arrivals, on average
    mean_processing: float | None   # seconds to process one item (queue time excluded)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "current": self.current,
                "mean_interval": self.mean_interval,
                "mean_processing": self.mean_processing, "reason": self.reason}


class ScalingAdvisor:
    """Sizes a pool of workers from the mean arrival interval and processing time.

    The rule: a queue is stable when the mean processing time divided by the
    number of workers is below the mean interval between arrivals. Scale up to
    the smallest count that satisfies it; scale down only as far as the
    processing time per worker stays within ``headroom`` (90 %) of the interval,
    so that a pool does not flap at the boundary. The means are taken over the
    last ``window`` observations; the interval is measured up to ``now``, so a
    burst followed by silence lengthens it as time passes.
    """

    def __init__(self, *, window: int = 1000, headroom: float = 0.9,
                 min_workers: int = 1, max_workers: int = 64) -> None:
        if not 0 < headroom < 1:
            raise ValueError("headroom must be between 0 and 1 (e.g. 0.9)")
        if not 1 <= min_workers <= max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        self.headroom = headroom
        self.min_workers = min_workers
        self.max_workers = max_workers
        self._arrivals: deque[float] = deque(maxlen=window)
        self._durations: deque[float] = deque(maxlen=window)
        self._duration_sum = 0.0

    def observe_arrival(self, now: float) -> None:
        self._arrivals.append(now)

    def observe_processing(self, seconds: float) -> None:
        durations = self._durations
        if len(durations) == durations.maxlen:
            self._duration_sum -= durations[0]
        durations.append(max(0.0, seconds))
        self._duration_sum += durations[-1]

    def recommend(self, current: int, now: float) -> Recommendation:
        """The number of workers to run, given ``current`` running now."""
        arrivals, durations = self._arrivals, self._durations
        interval = (now - arrivals[0]) / len(arrivals) if arrivals else None
        processing = self._duration_sum / len(durations) if durations else None
        keep = self._clamp(current)
        if interval is None or processing is None:
            return Recommendation(keep, current, interval, processing,
                                  "not enough data yet: need arrivals and finished items")
        if interval <= 0:
            return Recommendation(self.max_workers, current, interval, processing,
                                  "items arrive all at once: use the most workers allowed")
        per_worker = processing / max(current, 1)
        if current < 1 or per_worker >= interval:
            needed = self._clamp(math.floor(processing / interval) + 1)
            return Recommendation(needed, current, interval, processing,
                                  f"scale up: {processing:.3g} s per item / {current} "
                                  f"worker(s) is not below the {interval:.3g} s between "
                                  "arrivals")
        enough = self._clamp(math.ceil(processing / (self.headroom * interval)))
        if enough < current:
            return Recommendation(enough, current, interval, processing,
                                  f"scale down: {enough} worker(s) keep {processing:.3g} s "
                                  f"per item within {self.headroom:.0%} of the "
                                  f"{interval:.3g} s between arrivals")
        return Recommendation(keep, current, interval, processing,
                              f"steady: {per_worker:.3g} s per item per worker is below "
                              f"the {interval:.3g} s between arrivals")

    def _clamp(self, workers: int) -> int:
        return min(max(workers, self.min_workers), self.max_workers)
