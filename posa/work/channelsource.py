"""A work queue's items from an event channel's topic: ``ChannelSource``.

Each event of the topics subscribed to becomes one item: its key names the
event where it began — ``CHANNEL/INCARNATION/SEQ`` of the channel it was first
published to (for a chained event, its ``origin`` at ``via[0]``) — so an event
delivered twice (a replay with ``from_seq`` after a restart, a subscriber that
resubscribed, two chained paths) is queued once: the queue ignores a key it
holds or remembers as done (with a ``store``, across its own restarts too).
The item's data is the event's body (or ``data(event)``).

It is a ``posa.work.sources.Source`` driven by the queue's feeder thread:
``items()`` waits up to ``wait`` seconds for events and lists the keys of those
received, ``fetch(key)`` hands over their data. Give the queue a short
``refresh`` (e.g. 0: the wait inside ``items()`` paces the feeder). While the
queue is full the feeder stops taking events, so they pile up in the channel's
buffer for this subscriber, where its ``policy`` applies (``"block"`` holds
the publishers back).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from posa.channel.events import Event
from posa.channel.subscriber import Subscriber
from posa.errors import Timeout
from posa.naming.registration import Registry

__all__ = ["ChannelSource", "event_key"]


def event_key(event: Event, incarnation: int | None) -> str:
    """The key of the item made of ``event``: where it was first published."""
    if event.origin is not None and event.via:
        return f"{event.via[0]}/{event.origin[0]}/{event.origin[1]}"
    return f"{event.channel}/{incarnation}/{event.seq}"


class ChannelSource:
    """Items from the events of ``topics`` on ``channel`` (see the module);
    ``Subscriber`` options (``policy``, ``buffer``, ``from_seq``, ``filter``, ...)
    are passed on."""

    def __init__(self, channel: str, *, topics: Sequence[str] | str = ("",),
                 registry: Registry | None = None, dispatcher: str | None = None,
                 wait: float = 0.5, batch: int = 1000,
                 data: Callable[[Event], Any] | None = None, **options: Any) -> None:
        self.subscriber = Subscriber(channel, topics=topics, registry=registry,
                                     dispatcher=dispatcher, **options)
        self.wait, self.batch = wait, batch
        self._data = data or (lambda event: event.body)
        self._held: OrderedDict[str, Any] = OrderedDict()
        self.received = 0

    @property
    def paced(self) -> bool:
        """``items()`` waits itself (up to ``wait`` s): the queue's refresh may be 0."""
        return self.wait > 0

    def items(self) -> Iterable[str]:
        """The keys of the events received and not yet fetched (waits up to
        ``wait`` seconds for the first when there are none)."""
        if len(self._held) < self.batch:
            try:
                events = self.subscriber.receive_many(
                    self.batch - len(self._held), timeout=0 if self._held else self.wait)
            except Timeout:
                events = []
            incarnation = self.subscriber.incarnation
            for event in events:
                self.received += 1
                self._held.setdefault(event_key(event, incarnation), self._data(event))
        return list(self._held)

    def fetch(self, key: str) -> Any:
        return self._held.pop(key)

    def forget(self, key: str) -> None:
        """Drop an event the queue already knows (the feeder skips its key)."""
        self._held.pop(key, None)

    def close(self) -> None:
        self.subscriber.close()

    def __enter__(self) -> ChannelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
