"""A subscription's delivery: one thread that takes what the core buffered for
one subscriber, frames it and sends it.

Each subscription has a thread of its own so that a stalled subscriber costs
only its own buffer (``limit`` events, then its policy) plus ``window``
frames in flight: its thread may block on flow control while the others and
the reactor go on. A pass takes whatever is buffered (up to ``max_batch``
events; runs are not split for it) under the channel's lock, then frames and
sends it without the lock. Runs that arrived encoded go out as they came (the
publisher's bytes); only a run a subscriber takes in part, or one too large for
a frame, is encoded here, split to fit (``encode_chunks``), and a body that
cannot be encoded at all becomes a ``dropped`` gap, never a silent loss.
A slow or unreachable subscriber is retried while its name lives and it is
subscribed; the thread ends when it unsubscribes, expires or is gone.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from posa.channel.protocol import delivery_body, encode_chunks
from posa.channel.run import Run
from posa.delivery.sender import Sender
from posa.errors import NameNotFound, PosaError, Timeout, TransportError
from posa.naming.registration import resolver

if TYPE_CHECKING:
    from posa.channel.service import EventChannel

__all__ = ["Delivery"]

log = logging.getLogger("posa.channel.delivery")


class Delivery:
    """A subscription's delivery thread and its lease (``expires``, renewed by
    the subscriber). Its state is guarded by the channel's lock."""

    __slots__ = ("channel", "sub_id", "cond", "thread", "stopped", "drain_until",
                 "expires", "lease")

    def __init__(self, channel: EventChannel, sub_id: str, lease: float) -> None:
        self.channel = channel
        self.sub_id = sub_id
        self.cond = threading.Condition(channel._lock)
        self.thread: threading.Thread | None = None
        self.stopped = False
        self.drain_until = 0.0
        self.lease = lease
        self.expires = time.monotonic() + lease

    def run(self) -> None:
        """The thread: deliver until stopped (draining until ``drain_until``)."""
        channel, sub_id = self.channel, self.sub_id
        sender = Sender(channel.name, resolve=resolver(channel.registry),
                        codec=channel.peer.codec, options=channel.peer.options,
                        window=channel.window, ack_timeout=2.0,
                        authenticator=channel.peer.authenticator)
        core, lock, cond = channel.core, channel._lock, self.cond
        try:
            while True:
                with lock:
                    while not self.stopped and not core.pending(sub_id):
                        cond.wait()
                    if self.stopped and not (core.pending(sub_id) and
                                             time.monotonic() < self.drain_until):
                        return
                    taken = core.take(sub_id, channel.max_batch)
                    if taken is None:
                        return
                    if taken.freed and channel._parked:
                        channel._unpark()
                    head = core.seq
                if not taken.runs and not taken.gaps and taken.end is None:
                    continue              # a replay pass that selected nothing
                for body in self._frames(taken.runs, taken.gaps, taken.dropped, head):
                    if not self._send(sender, body):
                        return
                if taken.end is not None:   # the policy ended it: say so, and stop
                    self._send(sender, {**self._body([], [], taken.dropped, head),
                                        "end": taken.end})
                    return
        finally:
            with lock:
                if channel._deliveries.get(sub_id) is self:
                    channel._end(sub_id)
            sender.close(linger=0)

    def _frames(self, runs: list[Run], gaps: list[list[Any]], dropped: int,
                head: int) -> list[dict[str, Any]]:
        """The deliveries for taken runs: as few as the frame size allows, each
        hole at its place. Runs that arrived encoded go out as they came."""
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
        for segment in segments:
            if segment[0] == "gap":
                holes.append([count, segment[1], segment[2]])
                continue
            run, blob = segment
            weight = len(blob) + run.topics_size() + run.traces_size()
            if items and size + weight > self.channel._max_bytes:
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

    def _send(self, sender: Sender, body: dict[str, Any]) -> bool:
        """Send one delivery; False when the subscriber is gone or the delivery
        stopped (and its drain time is over)."""
        channel, sub_id = self.channel, self.sub_id
        while True:
            try:
                sender.send(sub_id, body, timeout=channel.send_timeout)
                return True
            except NameNotFound:
                return False
            except Timeout:
                queued = True    # the frame waits in the stream for acknowledgement
            except TransportError:
                queued = False   # the subscriber could not be reached at all
            # slow or unreachable: go on while it lives and is subscribed
            while True:
                if self.stopped and time.monotonic() >= self.drain_until:
                    return False
                try:
                    channel.registry.lookup(sub_id)
                except NameNotFound:
                    return False
                except PosaError:
                    pass
                if not queued:
                    channel._closing.wait(0.2)   # back off before connecting again
                    break
                try:
                    sender.flush(channel.send_timeout)
                    return True
                except Timeout:
                    continue
                except TransportError:
                    queued = False
