"""Deliveries framed from what a subscription took (``ChannelCore.take``).

Runs that arrived encoded go out as they came (the publisher's bytes); only a
run a subscriber takes in part, or one too large for a frame, is encoded here,
split to fit (``encode_chunks``), and a body that cannot be encoded at all
becomes a ``dropped`` gap, never a silent loss. A take becomes as few
deliveries as the frame size allows, each hole at its place; when the policy
ended the subscription, one more delivery says so (``end``).
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from posa.channel.protocol import delivery_body, encode_chunks
from posa.channel.run import Run
from posa.delivery.quick import Packed

if TYPE_CHECKING:
    from posa.channel.core import Taken
    from posa.channel.service import EventChannel

__all__ = ["Framer"]

log = logging.getLogger("posa.channel.delivery")


class Framer:
    """Frames the takes of one channel's subscriptions into delivery bodies.
    Delivery thread only (its packer is its own)."""

    def __init__(self, channel: EventChannel) -> None:
        self.channel = channel
        self._packv: Callable[[Any], bytes] | None = None   # made by the thread

    def packed(self, takes: list[tuple[Taken, int]]) -> list[list[Any]]:
        """The deliveries of each of ``takes`` (as ``bodies``), packed: a delivery
        taken alike by several subscriptions in one pass (the same runs, holes
        and head, as when they keep up) is packed once, and the frame to each
        joins its bytes (``Packed``). One that cannot be packed stays a map (its
        send says why)."""
        made: dict[Hashable, tuple[list[Any], int]] = {}  # (runs are alive: ids hold)
        out: list[list[Any]] = []
        counters = self.channel.counters
        for taken, head in takes:
            key = (tuple(map(id, taken.runs)), tuple(map(tuple, taken.gaps)),
                   taken.dropped, head, taken.end)
            if key in made:
                bodies, bad = made[key]
                counters["undeliverable"] += bad
            else:
                before = counters["undeliverable"]
                bodies = [self._pack(body) for body in self.bodies(taken, head)]
                made[key] = bodies, counters["undeliverable"] - before
            out.append(bodies)
        return out

    def _pack(self, body: dict[str, Any]) -> Any:
        if self._packv is None:
            self._packv = self.channel.peer.codec.packers()[1]
        try:
            return Packed(self._packv(body))
        except (TypeError, ValueError, OverflowError):
            return body

    def bodies(self, taken: Taken, head: int) -> list[dict[str, Any]]:
        """The deliveries of ``taken`` (``head``: the channel's seq when taken);
        none for a replay pass that selected nothing."""
        bodies: list[dict[str, Any]] = []
        if taken.runs or taken.gaps:
            bodies = self._frames(taken.runs, taken.gaps, taken.dropped, head)
        if taken.end is not None:       # the policy ended it: say so, last
            bodies.append({**self._body([], [], taken.dropped, head), "end": taken.end})
        return bodies

    def _frames(self, runs: list[Run], gaps: list[list[Any]], dropped: int,
                head: int) -> list[dict[str, Any]]:
        segments: list[Any] = []       # ("gap", count, reason) or (run, blob)
        position, pending = 0, deque(gaps)
        for run in runs:
            while pending and pending[0][0] <= position:
                segments.append(("gap", *pending.popleft()[1:]))
            segments.extend(self._encode(run))
            position += len(run)
        segments.extend(("gap", *gap[1:]) for gap in pending)
        frames: list[dict[str, Any]] = []
        items: list[Any] = []
        holes: list[list[Any]] = []
        count = size = 0
        max_bytes = self.channel._max_bytes
        for segment in segments:
            if segment[0] == "gap":
                holes.append([count, segment[1], segment[2]])
                continue
            run, blob = segment
            weight = len(blob) + run.topics_size() + run.traces_size()
            if items and size + weight > max_bytes:
                frames.append(self._body(items, holes, dropped, head))
                items, holes, count, size = [], [], 0, 0
            items.append(run.wire(blob))
            count += len(run)
            size += weight
        frames.append(self._body(items, holes, dropped, head))
        return frames

    def _body(self, items: list[Any], holes: list[list[Any]], dropped: int,
              head: int) -> dict[str, Any]:
        return delivery_body(self.channel.name, self.channel.core.incarnation, items,
                             holes, dropped, head)

    def _encode(self, run: Run) -> list[Any]:
        """(run, blob) pieces small enough for a frame; ("gap", n, "dropped")
        where bodies cannot be encoded at all."""
        budget = self.channel._max_bytes - run.topics_size() - run.traces_size()
        if run.blob is not None and len(run.blob) <= budget:
            return [(run, run.blob)]
        bodies = run.body_list()
        chunks, bad = encode_chunks(lambda s, e: bodies[s:e], len(run), budget)
        if bad:
            self.channel.counters["undeliverable"] += len(bad)
            log.warning("channel %s: %d event(s) cannot be encoded for delivery (nested "
                        "too deeply or too large); the subscriber is told of a gap",
                        self.channel.name, len(bad))
        pieces: list[Any] = [(start, ("gap", 1, "dropped")) for start in bad]
        for start, end, blob in chunks:
            piece = run.slice(start, end)
            piece.blob = blob
            pieces.append((start, (piece, blob)))
        pieces.sort(key=lambda p: p[0])
        return [piece for _, piece in pieces]
