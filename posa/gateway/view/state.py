"""What the web view shows, as a sans-IO state model: values in, updates out.

``ViewState`` is fed what the registry's ``watch()`` reports (``changed``), the
registry's full list from time to time (``resync``: leases renewed, changes a
watch may have missed), and the numbers of channels and queues (``channel``,
``queue``); every call takes ``now`` (seconds, any monotonic clock) and returns
the updates to send to browsers, each a JSON-able dict with a ``type``:

    {"type": "name", "name", "entry": {...} | None}     a name changed or is gone
    {"type": "service", "service", "servers": [...]}    a service's servers changed
    {"type": "channel", "name", ...numbers}             a channel's numbers
    {"type": "queue", "name", ...numbers}               a queue's numbers
    {"type": "log", "event": {...}}                     a migration, a failover, ...

``snapshot(now)`` is the whole state, what a browser gets first. The model
reads no clock, takes no lock and does no I/O: ``posa.gateway.view.feed``
does that around it.

What the log calls what (from one name's successive registrations):

    registered   a name seen for the first time
    migrated     a live name re-registered at other addresses (a new epoch)
    restarted    a live name re-registered at the same addresses (a new epoch)
    failover     a name that was gone comes back at other addresses, or a
                 service loses a server while others still serve it
    gone         a name unregistered, or its lease expired
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from posa.naming.registration import Registration

__all__ = ["ViewState", "Update", "entry_of", "transport_of"]

Update = dict[str, Any]

LOG_SIZE = 200          # events kept for a browser that connects later
GONE_MEMORY = 600.0     # seconds a gone name's last addresses are remembered (failover)


def transport_of(address: str) -> str:
    """The transport of a URI: ``zmq+tcp://h:p`` -> ``zmq+tcp``."""
    return address.partition("://")[0]


def entry_of(registration: Registration, now: float) -> dict[str, Any]:
    """One name as the page shows it; ``expires_at`` is on the ``now`` clock."""
    first = registration.addresses[0] if registration.addresses else ""
    service = registration.meta.get("service") if isinstance(registration.meta, Mapping) \
        else None
    return {"name": registration.name, "addresses": list(registration.addresses),
            "address": first, "transport": transport_of(first),
            "epoch": registration.epoch, "lease": registration.lease,
            "lease_left": round(max(0.0, registration.expires_in), 3),
            "expires_at": now + max(0.0, registration.expires_in),
            "service": service if isinstance(service, str) else None}


@dataclass
class _Rate:
    """Events per second from successive readings of a counter."""

    count: float = 0.0
    at: float | None = None
    rate: float = 0.0

    def read(self, count: float, now: float) -> float:
        if self.at is not None and now > self.at and count >= self.count:
            self.rate = (count - self.count) / (now - self.at)
        self.count, self.at = count, now
        return round(self.rate, 2)


class ViewState:
    """Names, services, channels, queues and the event log of one system."""

    def __init__(self, *, log_size: int = LOG_SIZE) -> None:
        self.names: dict[str, dict[str, Any]] = {}
        self.services: dict[str, list[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self._gone: dict[str, tuple[float, tuple[str, ...], int]] = {}
        self._rates: dict[tuple[str, str], _Rate] = {}
        self._empty_since: dict[str, float | None] = {}
        self._seq = 0
        self._quiet = True      # until the first resync: names there before are not news

    # -- names ---------------------------------------------------------------------
    def changed(self, name: str, registration: Registration | None,
                now: float) -> list[Update]:
        """What ``registry.watch`` reported: ``name`` is now ``registration`` (None:
        gone)."""
        old = self.names.get(name)
        if registration is None:
            if old is None:
                return []
            del self.names[name]
            self._gone[name] = (now, tuple(old["addresses"]), old["epoch"])
            gone = [{"type": "name", "name": name, "entry": None},
                    self._event(now, "gone", name, f"{name} is gone (epoch "
                                f"{old['epoch']}, was at {old['address']})")]
            return gone + self._service_changed(old["service"], now, lost=name)
        if old is not None and registration.epoch < old["epoch"]:
            return []       # a late report of an older registration
        entry = entry_of(registration, now)
        self.names[name] = entry
        updates: list[Update] = [{"type": "name", "name": name, "entry": entry}]
        event = self._what_happened(name, old, entry, now)
        if event is not None:
            updates.append(event)
        if old is not None and old["service"] != entry["service"]:
            updates += self._service_changed(old["service"], now, lost=name)
        if old is None or old["service"] != entry["service"]:
            updates += self._service_changed(entry["service"], now)
        return updates

    def _what_happened(self, name: str, old: dict[str, Any] | None,
                       new: dict[str, Any], now: float) -> Update | None:
        at = ", ".join(new["addresses"])
        if old is None and self._quiet:
            return None
        if old is None:
            gone = self._gone.pop(name, None)
            if gone is not None and now - gone[0] <= GONE_MEMORY:
                if set(gone[1]) != set(new["addresses"]):
                    return self._event(now, "failover", name,
                                       f"{name} is back at {at} (was at "
                                       f"{', '.join(gone[1])}), epoch {new['epoch']}",
                                       was=list(gone[1]))
                return self._event(now, "restarted", name, f"{name} is back at {at}, "
                                   f"epoch {new['epoch']}")
            return self._event(now, "registered", name, f"{name} at {at}, epoch "
                               f"{new['epoch']}")
        if new["epoch"] == old["epoch"]:
            return None     # a renewal, or new meta
        if set(old["addresses"]) != set(new["addresses"]):
            return self._event(now, "migrated", name,
                               f"{name}: {old['address']} -> {new['address']}, epoch "
                               f"{old['epoch']} -> {new['epoch']}", was=old["addresses"])
        return self._event(now, "restarted", name, f"{name} re-registered at {at}, epoch "
                           f"{new['epoch']}")

    def resync(self, registrations: Iterable[Registration], now: float) -> list[Update]:
        """The registry's whole list (``registry.names("**")``): refreshes every
        lease, and reports what a watch may have missed. The names of the first
        list (and those reported before it) were there before: not logged."""
        seen: set[str] = set()
        updates: list[Update] = []
        for registration in registrations:
            seen.add(registration.name)
            old = self.names.get(registration.name)
            if old is not None and old["epoch"] == registration.epoch \
                    and old["addresses"] == list(registration.addresses):
                fresh = entry_of(registration, now)
                if abs(fresh["expires_at"] - old["expires_at"]) > 0.5:
                    self.names[registration.name] = fresh
                    updates.append({"type": "name", "name": registration.name,
                                    "entry": fresh})
                continue
            updates += self.changed(registration.name, registration, now)
        for name in sorted(set(self.names) - seen):
            updates += self.changed(name, None, now)
        self._forget_gone(now)
        self._quiet = False
        return updates

    def _forget_gone(self, now: float) -> None:
        for name in [n for n, (at, _, _) in self._gone.items() if now - at > GONE_MEMORY]:
            del self._gone[name]

    def _service_changed(self, service: str | None, now: float,
                         lost: str | None = None) -> list[Update]:
        if service is None:
            return []
        servers = sorted(n for n, e in self.names.items() if e["service"] == service)
        if servers:
            self.services[service] = servers
        else:
            self.services.pop(service, None)
        updates: list[Update] = [{"type": "service", "service": service,
                                  "servers": servers}]
        if lost is not None and servers:
            updates.append(self._event(
                now, "failover", service, f"service {service} lost {lost}; "
                f"{len(servers)} server(s) left: {', '.join(servers[:3])}"))
        return updates

    # -- numbers ---------------------------------------------------------------------
    def channel(self, name: str, stats: Mapping[str, Any], now: float) -> list[Update]:
        """A channel's ``stats()`` (``EventChannel.stats`` or its ``stats`` request)."""
        subs = stats.get("subscriptions") or {}
        totals = stats.get("drops")     # the channel's, ended subscriptions included
        drops = _number_sum(totals.values()) if isinstance(totals, Mapping) else \
            _number_sum(s.get("dropped", 0) for s in subs.values() if isinstance(s, Mapping))
        published = _number(stats.get("published"))
        row = {"name": name, "published": published,
               "rate": self._rate(name, "published", published, now),
               "subscribers": len(subs), "dropped": drops,
               "drop_rate": self._rate(name, "dropped", drops, now),
               "buffered": _number_sum(s.get("buffered", 0) for s in subs.values()
                                       if isinstance(s, Mapping)),
               "seq": _number(stats.get("seq"))}
        return self._numbers(self.channels, "channel", name, row, now,
                             grew=drops > self.channels.get(name, {}).get("dropped", 0),
                             text=f"channel {name} dropped events ({drops} so far)")

    def queue(self, name: str, metrics: Mapping[str, Any], now: float) -> list[Update]:
        """A work queue's ``metrics()`` (or its ``metrics`` request). ``age`` is the
        seconds since the queue was last seen empty (0 when empty)."""
        pending, in_flight = _number(metrics.get("pending")), _number(metrics.get("in_flight"))
        depth = pending + in_flight
        was = self._empty_since.get(name)
        since = (now if was is None else was) if depth else None
        self._empty_since[name] = since
        row = {"name": name, "depth": depth, "pending": pending, "in_flight": in_flight,
               "age": round(now - since, 1) if since is not None else 0.0,
               "done": _number(metrics.get("done")), "dead": _number(metrics.get("dead")),
               "rate": round(_number(metrics.get("rate")), 2),
               "workers": _number(metrics.get("workers"))}
        return self._numbers(self.queues, "queue", name, row, now,
                             grew=row["dead"] > self.queues.get(name, {}).get("dead", 0),
                             text=f"queue {name}: {row['dead']} item(s) dead")

    def _numbers(self, table: dict[str, dict[str, Any]], kind: str, name: str,
                 row: dict[str, Any], now: float, *, grew: bool, text: str) -> list[Update]:
        first = name not in table
        if table.get(name) == row:
            return []
        table[name] = row
        updates: list[Update] = [{"type": kind, **row}]
        if grew and not first:
            updates.append(self._event(now, "drops" if kind == "channel" else "dead",
                                       name, text))
        return updates

    def _rate(self, name: str, counter: str, count: float, now: float) -> float:
        return self._rates.setdefault((name, counter), _Rate()).read(count, now)

    # -- the log and the whole ------------------------------------------------------------
    def _event(self, now: float, kind: str, name: str, text: str, **more: Any) -> Update:
        self._seq += 1
        event = {"seq": self._seq, "at": now, "kind": kind, "name": name, "text": text,
                 **more}
        self.log.append(event)
        return {"type": "log", "event": event}

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything, for a browser that just connected; lease left as of ``now``."""
        names = [{**e, "lease_left": round(max(0.0, e["expires_at"] - now), 3)}
                 for _, e in sorted(self.names.items())]
        return {"type": "snapshot", "now": now, "names": names,
                "services": [{"service": s, "servers": v}
                             for s, v in sorted(self.services.items())],
                "channels": [v for _, v in sorted(self.channels.items())],
                "queues": [v for _, v in sorted(self.queues.items())],
                "log": list(self.log)}


def _number(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _number_sum(values: Iterable[Any]) -> float:
    return sum(_number(v) for v in values)
