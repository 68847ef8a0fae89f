"""A work queue's progress as text: for people watching a queue or a job.

Pure functions of a queue's metrics map (``WorkQueue.metrics()`` or the
``metrics`` request, docs/work.md "Progress"), so the same line is drawn in the
queue's process, by ``posa progress`` in another, or by a master for its
subtasks (``progress_bar``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["finished", "progress_bar", "render_progress"]


def finished(metrics: Mapping[str, Any]) -> bool:
    """Whether a queue's metrics show every item finished (none pending or in
    flight, and its source listed at least once)."""
    return bool(metrics["listed"]) and metrics["pending"] == 0 and metrics["in_flight"] == 0


def progress_bar(done: int, total: int, *, width: int = 30) -> str:
    """``[####......] done/total pct``: a job's progress (a master's subtasks,
    a queue's items) as text."""
    fraction = min(done / total, 1.0) if total else 0.0
    return f"{_bar(fraction, width)} {done}/{total} {fraction:.0%}"


def render_progress(metrics: Mapping[str, Any], *, width: int = 30) -> str:
    """One line for a queue: a bar of items finished (done or dead) of the
    total, the count done, the rate, the time left at that rate, items in
    flight, workers and dead letters."""
    total = metrics["total"]
    settled = metrics["done"] + metrics["dead"]
    fraction = settled / total if total else 0.0
    rate = metrics.get("rate") or 0.0
    left = total - settled
    eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
    return (f"{metrics['name']} {_bar(fraction, width)} {metrics['done']}/{total} "
            f"{fraction:.0%} {rate:.0f}/s eta {eta} in flight {metrics['in_flight']} "
            f"workers {metrics['workers']} dead {metrics['dead']}")


def _bar(fraction: float, width: int) -> str:
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}]"
