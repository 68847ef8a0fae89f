"""A work queue's pace: which workers are active, how fast items complete, how
many workers to run, and the metrics map built from them (sans-IO: the time is
an argument).

``Pace`` is fed by the queue manager (``posa.work.queue``): ``saw(worker,
now)`` at every request of a worker, ``review(now, state)`` from its timer
(the advice follows the rates, the items waiting and the oldest one's age). The
map ``metrics`` returns is the one ``WorkQueue.metrics()`` and the ``metrics``
request answer (docs/work.md, "Progress").
"""
from __future__ import annotations

from collections import deque
from typing import Any

from posa.work.scaling import Recommendation, ScalingAdvisor
from posa.work.state import WorkState

__all__ = ["Pace", "ACTIVE", "gauges"]

ACTIVE = 10.0           # a worker seen within this many seconds counts as active
REVIEW = 1.0            # seconds between reviews of the rate and the advice


class Pace:
    """Workers seen, completion rate and scaling advice of one queue."""

    def __init__(self, advisor: ScalingAdvisor) -> None:
        self.advisor = advisor
        self.seen: dict[str, float] = {}
        self.advice: Recommendation | None = None
        self._samples: deque[tuple[float, int]] = deque(maxlen=40)
        self._reviewed_at = 0.0

    def saw(self, worker: str, now: float) -> None:
        """``worker`` asked for work at ``now``."""
        self.seen[worker] = now

    def review(self, now: float, state: WorkState) -> tuple[bool, Recommendation | None]:
        """Once per ``REVIEW`` seconds: sample the rate (items done so far), forget
        workers idle for ``ACTIVE`` seconds and renew the advice. Returns whether
        it reviewed, and the new advice if the advised number of workers changed."""
        if now - self._reviewed_at < REVIEW:
            return False, None
        self._reviewed_at = now
        self._samples.append((now, state.counters["done"]))
        for worker in [w for w, t in self.seen.items() if now - t > ACTIVE]:
            del self.seen[worker]
        recommendation = self.advisor.recommend(len(self.seen), now, pending=state.n_pending,
                                                oldest=state.oldest_age(now))
        changed = self.advice is None or self.advice.workers != recommendation.workers
        self.advice = recommendation
        return True, recommendation if changed else None

    def workers(self, now: float) -> int:
        """Workers seen in the last ``ACTIVE`` seconds."""
        return sum(1 for t in self.seen.values() if now - t <= ACTIVE)

    def rate(self, now: float, done: int) -> float:
        """Items completed per second over the recent samples."""
        samples = self._samples
        if samples and now - samples[0][0] > 0:
            return (done - samples[0][1]) / (now - samples[0][0])
        return 0.0

    def metrics(self, name: str, state: WorkState, now: float, *, waiting: int,
                listed: bool) -> dict[str, Any]:
        """The metrics map of a queue whose state is ``state``."""
        counts = state.counts()
        total, done = counts["total"], counts["done"]
        return {
            "name": name, "total": total, "done": done,
            "pending": counts["pending"], "in_flight": counts["leased"],
            "dead": counts["dead"], "failed": counts["failed"],
            "expired": counts["expired"], "redelivered": counts["redelivered"],
            "duplicates": counts["duplicate_adds"] + counts["duplicate_acks"],
            "oldest_age": state.oldest_age(now),
            "workers": self.workers(now), "waiting": waiting,
            "rate": self.rate(now, done),
            "progress": (done + counts["dead"]) / total if total else 0.0,
            "listed": listed,
            "scaling": self.advice.as_dict() if self.advice is not None else None,
        }


# the queue's numbers exported by posa.ops.Monitor (its ``gauges`` hook): metric ->
# the key of the metrics map; a name ending in _total is a counter
GAUGES = {"queue_pending": "pending", "queue_in_flight": "in_flight",
          "queue_dead": "dead", "queue_redelivered_total": "redelivered",
          "queue_oldest_age_seconds": "oldest_age", "queue_done_total": "done",
          "queue_workers": "workers"}


def gauges(metrics: dict[str, Any]) -> dict[str, float]:
    """The queue's numbers for ``/metrics`` from its metrics map."""
    return {metric: float(metrics[key]) for metric, key in GAUGES.items()}
