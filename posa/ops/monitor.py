"""Health and Prometheus metrics of the objects a ``Monitor`` is given.

It keeps no globals and no counters of its own: it reads the objects' counters
when asked (duck typing, every attribute optional), so watching an object costs
it nothing on its hot path.

What a monitored object may offer (see docs/operations.md):

    name                   label of its samples
    stats                  {event: count} -> posa_messages_<event>_total for
                           received/sent, else posa_<event>_total
    rejections             Counter -> posa_rejections_total{reason}, with
                           listener=<address> if the object has an address
                           and no name (the ops server)
    gatekeeper             its rejections and in_flight are read too
    listeners              transport listeners (address, rejections): their
                           refusals, posa_rejections_total{listener, reason}
    depths()               {queue: depth} -> posa_queue_depth{queue}
    registry, name, address(es)   health checks that the name is registered here
    names("**")            a registry: posa_registry_names
    peer                   a service wrapping a peer: the peer is read too
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from posa.errors import PosaError
from posa.ops.histogram import Histogram

__all__ = ["Monitor", "in_flight_counter"]

log = logging.getLogger("posa.ops")

_STAT_NAMES = {"received": "posa_messages_received_total",
               "sent": "posa_messages_sent_total"}


class Monitor:
    """Health and metrics of the objects given to it. Thread-safe to read."""

    def __init__(self, *sources: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._sources: list[Any] = []
        self._clock = clock
        self.started = clock()
        self.draining = False
        self.add(*sources)

    def add(self, *sources: Any) -> None:
        """Watch more objects (a service's ``peer`` is watched with it)."""
        for source in sources:
            if source not in self._sources:
                self._sources.append(source)
            inner = getattr(source, "peer", None)
            if inner is not None and inner not in self._sources:
                self._sources.append(inner)

    def health(self) -> dict[str, Any]:
        """``{"ok", "status", "names", "uptime", "problems"}``: ok is False while
        draining or when a watched peer's name is not registered at its address."""
        names: list[str] = []
        problems: list[str] = []
        for source in self._sources:
            name, registry = getattr(source, "name", None), getattr(source, "registry", None)
            if not isinstance(name, str) or registry is None or not hasattr(source, "address"):
                continue
            try:
                registration = registry.lookup(name)
            except PosaError as exc:
                problems.append(f"{name}: {exc}")
                continue
            mine = set(getattr(source, "addresses", None) or (source.address,))
            if mine & set(registration.addresses):
                names.append(name)
            else:
                problems.append(f"{name} is registered at {', '.join(registration.addresses)}"
                                f", not here ({', '.join(sorted(mine))})")
        status = "draining" if self.draining else "serving"
        return {"ok": not self.draining and not problems, "status": status,
                "names": sorted(names), "uptime": round(self._clock() - self.started, 3),
                "problems": problems}

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as ``(metric, labels, value)``, each series once: where two
        objects offer the same series (a service and its peer share a name), the
        first one given wins."""
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for metric, labels, value in self._all_samples():
            series = (metric, tuple(sorted(labels.items())))
            if series not in seen:
                seen.add(series)
                yield metric, labels, value

    def _all_samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        yield "posa_up", {}, 0.0 if self.draining else 1.0
        yield "posa_uptime_seconds", {}, self._clock() - self.started
        for source in list(self._sources):
            if isinstance(source, Histogram):
                yield from source.samples()
            else:
                yield from _source_samples(source)

    def metrics(self) -> str:
        """The samples in the Prometheus text format (0.0.4)."""
        grouped: dict[str, list[str]] = {}
        for metric, labels, value in self.samples():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            line = f"{metric}{{{label_text}}} {_number(value)}" if labels else \
                f"{metric} {_number(value)}"
            grouped.setdefault(_family(metric), []).append(line)
        described = {h.name: ("histogram", h.help) for h in self._sources
                     if isinstance(h, Histogram)}
        lines = []
        for family, samples in grouped.items():
            kind, text = described.get(family) or _describe(family)
            lines.append(f"# HELP {family} {text}")
            lines.append(f"# TYPE {family} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def _source_samples(source: Any) -> Iterator[tuple[str, dict[str, str], float]]:
    name = getattr(source, "name", None)
    who = {"name": name} if isinstance(name, str) else {}
    stats = getattr(source, "stats", None)
    if isinstance(stats, Mapping):
        for key, value in list(stats.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield _STAT_NAMES.get(key, f"posa_{_metric_part(key)}_total"), who, value
    listeners = _listeners(source)
    for holder in (source, getattr(source, "gatekeeper", None), *listeners):
        rejections = getattr(holder, "rejections", None)
        if isinstance(rejections, Mapping):
            # a listener's refusals carry its address; a named service's own
            # (a dispatcher's quota refusals) are not a listener's
            address = getattr(holder, "address", None)
            listening = holder in listeners or (holder is source and not who)
            where = {"listener": address} if listening and isinstance(address, str) else {}
            for reason, count in list(rejections.items()):
                yield "posa_rejections_total", {**who, **where, "reason": str(reason)}, count
    count = in_flight_counter(source)
    if count is not None:
        yield "posa_requests_in_flight", who, float(count())
    depths = getattr(source, "depths", None)
    if callable(depths):
        for queue, depth in depths().items():
            yield "posa_queue_depth", {**who, "queue": str(queue)}, depth
    if callable(getattr(source, "names", None)) and hasattr(source, "lookup"):
        try:
            yield "posa_registry_names", who, float(len(source.names("**")))
        except PosaError as exc:
            log.info("metrics: the registry did not answer: %s", exc)


def _listeners(source: Any) -> tuple[Any, ...]:
    """A source's ``listeners`` (a sequence, or a method returning one)."""
    listeners = getattr(source, "listeners", None)
    if callable(listeners):
        listeners = listeners()
    return tuple(listeners) if isinstance(listeners, (list, tuple)) else ()


_HELP = {
    "posa_up": ("gauge", "1 while the process serves, 0 while it drains for shutdown"),
    "posa_uptime_seconds": ("gauge", "seconds since the monitor started"),
    "posa_messages_received_total": ("counter", "messages handed to the application"),
    "posa_messages_sent_total": ("counter", "messages sent to a recipient"),
    "posa_rejections_total": ("counter", "frames or connections refused, by reason"),
    "posa_requests_in_flight": ("gauge", "requests admitted and not yet answered"),
    "posa_queue_depth": ("gauge", "items waiting in a queue"),
    "posa_registry_names": ("gauge", "live registrations in a registry"),
}


def _family(metric: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if metric.endswith(suffix):
            return metric[:-len(suffix)]
    return metric


def _describe(family: str) -> tuple[str, str]:
    if family in _HELP:
        return _HELP[family]
    return "counter", f"count of {family[5:-6].replace('_', ' ')}"


def _metric_part(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text)).lower()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)

def in_flight_counter(source: Any) -> Callable[[], int] | None:
    """How to count ``source``'s requests in flight: its ``in_flight()``, or the
    length of its (or its gatekeeper's) ``in_flight`` tracker; None if neither."""
    own = getattr(source, "in_flight", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    tracker = own if own is not None else getattr(getattr(source, "gatekeeper", None),
                                                  "in_flight", None)
    return tracker.__len__ if tracker is not None else None


