"""Chaining: a channel subscribes to an upstream channel, as a subscriber
would, and publishes what it receives as its own events.

Each event remembers the channels it passed (``via``, origin first) and where
it began (its origin's incarnation and seq), so that the downstream channel
refuses events that passed it already (loops) and events it accepted already
by another path (``posa.channel.dedup``): in any graph, each event is
accepted once by each channel.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from posa.channel.events import Event
from posa.channel.protocol import Publication
from posa.channel.subscriber import Subscriber
from posa.errors import Closed, NameNotFound, Rejected, Timeout, TransportError
from posa.naming.registration import Registry

__all__ = ["follow", "publication_of"]

log = logging.getLogger("posa.channel.service")


def publication_of(events: list[Event], upstream: str, incarnation: int | None
                   ) -> Publication:
    """Events received from ``upstream`` as a publication of this channel."""
    origins: list[Any] = []
    for e in events:
        if e.via:
            origins.append(list(e.origin) if e.origin is not None else None)
        else:
            origins.append([incarnation, e.seq] if incarnation is not None else None)
    traces = [e.trace for e in events]
    return Publication([e.topic for e in events], bodies=[e.body for e in events],
                       vias=[[*e.via, upstream] for e in events], origins=origins,
                       traces=traces if any(traces) else None)


def follow(name: str, upstream: str, registry: Registry, selection: dict[str, Any],
           accept: Callable[[Publication], None], closing: threading.Event,
           max_batch: int) -> None:
    """The thread of one upstream: subscribe (retrying until it is there),
    then hand each batch of its events to ``accept`` until ``closing``."""
    sub: Subscriber | None = None
    delay = 0.05
    # the upstream subscriber shares the channel's registry (never closes it)
    try:
        while not closing.is_set():
            if sub is None:
                try:
                    sub = Subscriber(upstream, registry=registry, skip_via=[name],
                                     timeout=2.0, **selection)
                    delay = 0.05
                except (NameNotFound, Timeout, TransportError) as exc:
                    log.info("channel %s: upstream %s not reachable yet (%s)",
                             name, upstream, exc)
                    closing.wait(delay)
                    delay = min(delay * 2, 2.0)
                    continue
            try:
                events = sub.receive_many(max_batch, timeout=0.25)
            except Timeout:
                continue
            except Closed:
                return
            except Rejected as exc:     # policy "fail" ended it: follow anew, from now
                log.warning("channel %s: upstream %s: %s; subscribing again", name,
                            upstream, exc)
                sub.close()
                sub = None
                continue
            accept(publication_of(events, upstream, sub.incarnation))
    finally:
        if sub is not None:
            sub.close()
