"""The event channel's control requests (subscribe, renew, unsubscribe, stats),
its numbers (``stats``, ``depths`` for metrics) and its drain
(``stop_accepting``, ``in_flight``): the part of ``EventChannel`` that deals
with subscriptions rather than with publications (``posa.channel.service``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from posa.channel.core import ChannelCore
from posa.channel.delivery import Delivery
from posa.channel.lane import Lane
from posa.channel.protocol import Publication
from posa.channel.store import HistoryStore
from posa.errors import Rejected
from posa.peer import Peer
from posa.wire.codec import Message

__all__ = ["ChannelControl"]

log = logging.getLogger("posa.channel.service")


class ChannelControl:
    """Subscriptions, numbers and drain of an ``EventChannel`` (a base class:
    the state is the channel's, guarded by its lock)."""

    name: str
    core: ChannelCore
    store: HistoryStore
    peer: Peer
    counters: dict[str, int]
    _lock: threading.Lock
    _parked: deque[Publication]
    _lanes: dict[str, Lane]
    _delivery: Delivery
    window: int
    _accepting: bool

    def _unpark(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Counters and every subscription's state (buffered, dropped, delivered)."""
        with self._lock:
            stats = self.core.stats()
            stats["parked"] = len(self._parked)
        stats.update(self.counters)
        stats["store_bytes"] = self.store.size()
        stats["drops"] = dict(self.core.drops)
        return stats

    def depths(self) -> dict[str, int]:
        """The channel's numbers for metrics (``posa.ops.Monitor``): events
        buffered for subscribers, the largest lag, subscribers, parked
        publications, history held (events, bytes in the store), and events
        dropped per cause and duplicates dropped, since the start."""
        with self._lock:
            core = self.core
            subs = list(core.subscriptions.values())
            numbers = {"channel_buffered": sum(s.size for s in subs),
                       "channel_lag": max((core.seq - (s.cursor or core.seq) + s.size
                                           for s in subs), default=0),
                       "channel_subscribers": len(subs),
                       "channel_parked": len(self._parked),
                       "channel_history": core.history_size,
                       "channel_store_bytes": self.store.size(),
                       "channel_duplicates": core.duplicates}
            for cause, count in self._drop_totals().items():
                numbers[f"channel_dropped_{cause.replace('-', '_')}"] = count
        return numbers

    def _drop_totals(self) -> dict[str, int]:
        return {**self.core.drops, "undeliverable": self.counters["undeliverable"]}

    # -- draining -------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """First step of a clean stop: new requests (subscriptions) are refused;
        what publishers send still comes in and is delivered (or, with a
        store, kept)."""
        self._accepting = False
        self.peer.stop_accepting()

    def in_flight(self) -> int:
        """Events accepted and not yet delivered: buffered for subscribers,
        parked, and publications waiting to be taken in."""
        with self._lock:
            buffered = sum(s.size for s in self.core.subscriptions.values())
            return buffered + len(self._parked) + self.peer.depths().get("inbox", 0)

    # -- control requests (ingest thread) ---------------------------------------
    def _op_subscribe(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        sender = msg.sender
        if not sender:
            raise Rejected("subscribe from a named peer: deliveries go to its name")
        lease = float(fields["lease"])
        with self._lock:
            answer = self.core.subscribe(
                sender, topics=fields["topics"], filter=fields["filter"],
                policy=fields["policy"], limit=fields["buffer"],
                from_seq=fields["from_seq"], incarnation=fields["inc"],
                skip_via=fields["skip_via"])
            now = time.monotonic()
            lane = self._lanes.get(sender)
            if lane is None or lane.stopped:
                lane = self._lanes[sender] = Lane(sender, window=self.window,
                                                  lease=lease, now=now)
            lane.lease = lease
            lane.expires = now + lease
        self._delivery.wake()
        return {"inc": answer.incarnation, "head": answer.head, "first": answer.first,
                "replay_from": answer.replay_from, "restarted": answer.restarted}

    def _op_renew(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            lane = self._lanes.get(msg.sender)
            sub = self.core.subscriptions.get(msg.sender)
            if lane is None or lane.stopped or sub is None:
                return {"known": False, "inc": self.core.incarnation}
            lane.expires = time.monotonic() + lane.lease
            return {"known": True, "inc": self.core.incarnation, "head": self.core.seq,
                    "dropped": sub.dropped}

    def _op_unsubscribe(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            sub = self.core.subscriptions.get(msg.sender)
            stats = sub.stats() if sub is not None else {}
            self._end(msg.sender)
        return stats

    def _op_stats(self, msg: Message, fields: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    def _end(self, sub_id: str) -> None:
        """Stop a subscription and its lane (lock held)."""
        lane = self._lanes.pop(sub_id, None)
        if lane is not None:
            lane.stop()
            self._delivery.wake()
        if self.core.unsubscribe(sub_id) is not None and self._parked:
            self._unpark()

    def _expire(self, now: float) -> None:
        with self._lock:
            for sub_id, lane in list(self._lanes.items()):
                if lane.expires < now:
                    log.info("channel %s: subscription of %r expired (no renewal)",
                             self.name, sub_id)
                    self.counters["expired"] += 1
                    self._end(sub_id)
