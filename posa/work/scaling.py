"""The scaling rule for a pool of workers (sans-IO: the time is an argument).

``ScalingAdvisor`` applies the rules of the work-queue pattern for sizing the
pool of workers: a queue is stable when the mean processing time divided by the
number of workers is below the mean interval between arrivals (the rate rule);
and the items already waiting must be worked off within ``target`` seconds —
the backlog (``pending`` items x the processing time / ``target``) and the age
of the oldest waiting item (older than ``target``: one worker more) raise the
advice whatever the rates say. A pool is never advised down while items wait.
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
    pending: int = 0                # items waiting when it was given
    oldest: float = 0.0             # seconds the oldest of them had waited

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "current": self.current,
                "mean_interval": self.mean_interval,
                "mean_processing": self.mean_processing, "reason": self.reason,
                "pending": self.pending, "oldest": self.oldest}


class ScalingAdvisor:
    """Sizes a pool of workers from the mean arrival interval and processing time.

    The rule: a queue is stable when the mean processing time divided by the
    number of workers is below the mean interval between arrivals. Scale up to
    the smallest count that satisfies it; scale down only as far as the
    processing time per worker stays within ``headroom`` (90 %) of the interval,
    so that a pool does not flap at the boundary. The means are taken over the
    last ``window`` observations; the interval is measured up to ``now``, so a
    burst followed by silence lengthens it as time passes. Items waiting
    (``pending``, ``oldest``: see the module) raise the advice to work them off
    within ``target`` seconds, and hold the pool from shrinking.
    """

    def __init__(self, *, window: int = 1000, headroom: float = 0.9,
                 min_workers: int = 1, max_workers: int = 64, target: float = 10.0) -> None:
        if not 0 < headroom < 1:
            raise ValueError("headroom must be between 0 and 1 (e.g. 0.9)")
        if not target > 0:
            raise ValueError("target must be a positive number of seconds")
        self.target = target
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

    def recommend(self, current: int, now: float, *, pending: int = 0,
                  oldest: float = 0.0) -> Recommendation:
        """The number of workers to run, given ``current`` running now, ``pending``
        items waiting and the ``oldest`` of them waiting that many seconds."""
        arrivals, durations = self._arrivals, self._durations
        interval = (now - arrivals[0]) / len(arrivals) if arrivals else None
        processing = self._duration_sum / len(durations) if durations else None
        advice = self._by_rates(current, interval, processing)
        backlog = self._by_backlog(current, pending, oldest, processing)
        if backlog is not None and backlog[0] > advice[0]:
            advice = backlog
        elif pending and advice[0] < current:
            advice = (self._clamp(current), f"steady: {pending} item(s) still waiting")
        return Recommendation(advice[0], current, interval, processing, advice[1],
                              pending, oldest)

    def _by_backlog(self, current: int, pending: int, oldest: float,
                    processing: float | None) -> tuple[int, str] | None:
        """Workers to work off ``pending`` items within ``target`` seconds (by the
        processing time), one more than ``current`` if the oldest waited longer."""
        if not pending:
            return None
        needed = 0
        if processing is not None:
            needed = math.ceil(pending * processing / self.target)
        if oldest > self.target:
            needed = max(needed, current + 1)
        if needed <= current:
            return None
        return self._clamp(needed), (
            f"scale up: {pending} item(s) waiting, the oldest for {oldest:.3g} s; "
            f"{current} worker(s) do not work them off within {self.target:g} s")

    def _by_rates(self, current: int, interval: float | None,
                  processing: float | None) -> tuple[int, str]:
        keep = self._clamp(current)
        if interval is None or processing is None:
            return keep, "not enough data yet: need arrivals and finished items"
        if interval <= 0:
            return self.max_workers, "items arrive all at once: use the most workers allowed"
        per_worker = processing / max(current, 1)
        if current < 1 or per_worker >= interval:
            needed = self._clamp(math.floor(processing / interval) + 1)
            return needed, (f"scale up: {processing:.3g} s per item / {current} worker(s) "
                            f"is not below the {interval:.3g} s between arrivals")
        enough = self._clamp(math.ceil(processing / (self.headroom * interval)))
        if enough < current:
            return enough, (f"scale down: {enough} worker(s) keep {processing:.3g} s per "
                            f"item within {self.headroom:.0%} of the {interval:.3g} s "
                            "between arrivals")
        return keep, (f"steady: {per_worker:.3g} s per item per worker is below the "
                      f"{interval:.3g} s between arrivals")

    def _clamp(self, workers: int) -> int:
        return min(max(workers, self.min_workers), self.max_workers)
