"""Alerts on the event channel ``events/netmgmt``: publishing them, and following them.

Agents publish what they notice (topics below); whoever wants to know
subscribes to the channel by its name, without knowing who publishes or where
(Publisher-Subscriber through an Event Channel).

    topic            body
    link/down        {"router", "neighbor"}
    link/up          {"router", "neighbor", "weight"}
    link/weight      {"router", "neighbor", "weight", "was"}
    route/changed    {"router", "changes": [[destination, [hop, cost] | None, [hop, cost] | None]]}
    agent/migrated   {"router", "from", "to", "epoch"}
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from posa import Publisher, Registry, Subscriber
from posa.errors import Closed, PosaError, Timeout

__all__ = ["CHANNEL", "Alerts", "AlertFeed"]

CHANNEL = "events/netmgmt"
log = logging.getLogger("netagents.alerts")


class Alerts:
    """Publishes alerts to the channel. One per process; thread-safe."""

    def __init__(self, registry: Registry) -> None:
        self._publisher = Publisher(CHANNEL, registry=registry)
        self.published = 0

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        """Publish one alert; a failure is logged, never raised into the agent."""
        try:
            self._publisher.publish(topic, body)
            self.published += 1
        except PosaError as exc:
            log.warning("alert %s not published: %s", topic, exc)

    def close(self) -> None:
        self._publisher.close()


class AlertFeed:
    """Calls ``on_alert(topic, body)`` for every alert, from a thread of its own."""

    def __init__(self, registry: Registry, on_alert: Callable[[str, dict[str, Any]], None],
                 *, topics: tuple[str, ...] = ("",)) -> None:
        self._subscriber = Subscriber(CHANNEL, registry=registry, topics=list(topics),
                                      buffer=10000)
        self._on_alert = on_alert
        self._stop = threading.Event()
        self.received = 0
        self._thread = threading.Thread(target=self._run, name="netagents-alerts",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._subscriber.receive(timeout=0.2)
            except Timeout:
                continue
            except Closed:
                return
            self.received += 1
            self._on_alert(event.topic, event.body)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._subscriber.close()
