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
from collections.abc import Iterable, Mapping
from typing import Any

from posa.errors import Timeout
from posa.peer import Peer
from posa.work.protocol import QUEUE

__all__ = ["submit"]


def submit(peer: Peer, queue: str, items: Mapping[str, Any] | Iterable[tuple[str, Any]],
           *, timeout: float = 30.0, batch: int = 500) -> int:
    """Put items (key -> data) into the queue named ``queue``, sending through
    ``peer``; returns how many were new (known keys are ignored, so submitting
    again is harmless). Waits while the queue is full; raises ``Timeout`` if
    everything is not accepted within ``timeout`` seconds."""
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
        reply = peer.request(queue, QUEUE.request("put", items=chunk), timeout=remaining)
        sent += reply["accepted"]
        added += reply["added"]
        if reply["accepted"] < len(chunk):
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))  # back off
            delay = min(delay * 2, 0.5)
        else:
            delay = 0.01
    return added
