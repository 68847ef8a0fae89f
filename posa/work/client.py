"""Producers' side of a work queue: put items into a queue from any process.

``submit`` sends ``put`` requests (``posa.work.protocol.QUEUE``) through a
peer the caller already has, in batches. The queue takes the items that fit,
in order, and says how many it took; the rest are sent again after a short
back-off that doubles up to half a second, so a full queue slows its producer
down (the queue's capacity bounds memory) instead of losing items. Keys the
queue holds or has completed are ignored by the queue, so submitting again
after a failure is harmless.
"""
from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from posa.errors import Timeout
from posa.peer import Peer
from posa.work.protocol import QUEUE

__all__ = ["submit", "submit_steps"]


Put = tuple[dict[str, Any], float]          # a put request and the time left for it
SubmitSteps = Generator[Put | float, Any, int]


def submit_steps(queue: str, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *,
                 timeout: float, batch: int) -> SubmitSteps:
    """The submission as steps (sans-IO): yields ``(request, seconds left)``, to
    be sent with its reply sent back, or seconds to back off for; returns how
    many items were new. ``submit`` and ``posa.aio.submit`` drive it."""
    pairs = [[key, data] for key, data in
             (items.items() if isinstance(items, Mapping) else items)]
    deadline = time.monotonic() + timeout
    added = sent = 0
    delay = 0.01
    while sent < len(pairs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"{queue!r} accepted {sent} of {len(pairs)} items within "
                          f"{timeout} s; it is full: add workers or raise its capacity")
        chunk = pairs[sent:sent + batch]
        reply = yield QUEUE.request("put", items=chunk), remaining
        sent += reply["accepted"]
        added += reply["added"]
        if reply["accepted"] < len(chunk):
            yield min(delay, max(0.0, deadline - time.monotonic()))     # back off
            delay = min(delay * 2, 0.5)
        else:
            delay = 0.01
    return added


def submit(peer: Peer, queue: str, items: Mapping[str, Any] | Iterable[tuple[str, Any]],
           *, timeout: float = 30.0, batch: int = 500) -> int:
    """Put items (key -> data) into the queue named ``queue``, sending through
    ``peer``; returns how many were new (known keys are ignored, so submitting
    again is harmless). Waits while the queue is full; raises ``Timeout`` if
    everything is not accepted within ``timeout`` seconds."""
    steps = submit_steps(queue, items, timeout=timeout, batch=batch)
    try:
        step = next(steps)
        while True:
            if isinstance(step, float):
                time.sleep(step)
                step = steps.send(None)
            else:
                step = steps.send(peer.request(queue, step[0], timeout=step[1]))
    except StopIteration as done:
        added: int = done.value
        return added
