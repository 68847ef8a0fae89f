"""The scenario, played the same way in both modes, with a live view of it.

The ``Driver`` plays the administrator and the failing hardware: it walks the
network's scenario (``network.scenario``), asks ``netmgmt/admin`` to change
links, has one agent migrate, and after each step waits until every agent's
routing table equals the central computation.  At the end it quiets the
agents and collects their counters, and ``report`` prints the outcome and the
``RESULT {json}`` line that tests read.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from posa import Registry

from .admin import AdminClient
from .network import Network, Step, scenario
from .outcome import message_counts, migration_summary, table_mismatches

__all__ = ["View", "Driver", "report"]


class View:
    """The live view: one line per event, prefixed by the seconds since the start."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.start = time.monotonic()
        self.alerts: Counter[str] = Counter()
        self.show_alerts = False       # off while the agents first converge
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.start:6.2f}s] {text}", file=self.out, flush=True)

    def alert(self, topic: str, body: dict[str, Any]) -> None:
        """Show one alert from the event channel (called by ``alerts.AlertFeed``)."""
        self.alerts[topic] += 1
        if self.show_alerts:
            self.say(f"  alert {topic:<15} {describe(topic, body)}")

    def attach(self, registry: Registry) -> None:
        """Follow the agents' names in ``registry`` (the web view does: ``web.py``)."""

    def done(self, result: dict[str, Any]) -> None:
        """The run is over and reported (the web view keeps its page up: ``web.py``)."""


def describe(topic: str, body: dict[str, Any]) -> str:
    """One readable line for an alert."""
    router = body.get("router", "?")
    if topic in ("link/down", "link/up", "link/weight"):
        text = f"{router}: link to {body.get('neighbor')}"
        if topic == "link/weight":
            return f"{text}: weight {body.get('was')} -> {body.get('weight')}"
        return f"{text} is {topic[5:]}" + (f" (weight {body['weight']})"
                                           if "weight" in body else "")
    if topic == "route/changed":
        changes = body.get("changes") or []
        parts = [_route_change(*c) for c in changes[:2]]
        more = f" (+{len(changes) - 2} more)" if len(changes) > 2 else ""
        return f"{router}: " + "; ".join(parts) + more
    if topic == "agent/migrated":
        return f"{router}: {body.get('from')} -> {body.get('to')}, epoch {body.get('epoch')}"
    return f"{router}: {body}"


def _route_change(dest: str, old: list[Any] | None, new: list[Any] | None) -> str:
    if new is None:
        return f"{dest} unreachable"
    was = f", was via {old[0]} cost {old[1]}" if old else ""
    return f"{dest} via {new[0]} cost {new[1]}{was}"


class Driver:
    """Plays ``network``'s scenario through ``admin``; ``migrate(router)`` moves an
    agent (each mode moves it its own way) and returns what it did."""

    def __init__(self, network: Network, admin: AdminClient, view: View,
                 migrate: Callable[[str], dict[str, Any]], *, pace: float = 1.0,
                 converge_timeout: float = 10.0) -> None:
        self.network = network
        self.admin = admin
        self.view = view
        self.migrate = migrate
        self.pace = pace
        self.converge_timeout = converge_timeout
        self.migrated: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        """Play every step; return the outcome (see ``report``)."""
        self.converge("the agents start")
        self.view.show_alerts = True
        for step in scenario(self.network):
            due = time.monotonic() + self.pace
            self._play(step)
            self.converge(step.text)
            time.sleep(max(0.0, due - time.monotonic()))   # let traffic flow between steps
        return self.finish()

    def _play(self, step: Step) -> None:
        self.view.say(f"admin: {step.text}")
        if step.action == "link":
            assert step.link is not None
            change = {k: v for k, v in (("up", step.up), ("weight", step.weight))
                      if v is not None}
            self.admin.call("link", link=list(step.link), **change)
            self.network.apply(step)
        else:
            assert step.router is not None
            record = self.migrated = self.migrate(step.router)
            self.view.say(f"migrated {step.router}: {record['from']} -> {record['to']}, "
                          f"epochs {record['epochs']}, while its neighbours kept sending")

    def tables(self) -> tuple[dict[str, Any], int]:
        """Every agent's routing table, and the messages they report so far."""
        tables, traffic = {}, 0
        for router in self.network.routers:
            answer = self.admin.routes(router)
            tables[router] = answer["routes"]
            traffic += answer["sent"]
        return tables, traffic

    def converge(self, after: str) -> list[str]:
        """Wait until every table equals the central computation (bounded)."""
        start = time.monotonic()
        deadline = start + self.converge_timeout
        while True:
            tables, traffic = self.tables()
            mismatches = table_mismatches(self.network, tables)
            if not mismatches or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        took = time.monotonic() - start
        n = len(self.network.routers)
        if mismatches:
            self.view.say(f"NOT converged {took:.2f} s after {after}: "
                          f"{len(mismatches)} of {n} tables differ, e.g. "
                          + "; ".join(_lines(mismatches)[:2]))
        else:
            self.view.say(f"converged in {took:.2f} s: {n} of {n} routing tables equal "
                          f"Dijkstra over the topology ({traffic} messages so far)")
        return _lines(mismatches)

    def finish(self) -> dict[str, Any]:
        """Quiet every agent, then collect counters until two rounds agree."""
        for router in self.network.routers:
            self.admin.call("quiet", router=router)
        previous: list[dict[str, Any]] | None = None
        for _ in range(5):
            counters = [self.admin.call("stats", router=r) for r in self.network.routers]
            if previous is not None and _totals(counters) == _totals(previous):
                break
            previous = counters
        tables, _ = self.tables()
        mismatches = table_mismatches(self.network, tables)
        messages = message_counts(counters)
        migration = migration_summary(counters)
        if migration is not None:
            migration = {**self.migrated, **migration}
        ok = (not mismatches and messages["lost"] == 0 and messages["missing"] == 0
              and not messages["unbalanced"] and migration is not None
              and migration["received_before"] > 0 and migration["received_after"] > 0)
        return {"ok": ok, "seed": self.network.seed, "routers": len(self.network.routers),
                "links": len(self.network.links),
                "tables": {"checked": len(tables), "equal": len(tables) - len(mismatches),
                           "mismatches": _lines(mismatches)},
                "messages": messages, "migration": migration,
                "alerts": dict(sorted(self.view.alerts.items())),
                "elapsed": round(time.monotonic() - self.view.start, 2)}


def _lines(mismatches: dict[str, list[str]]) -> list[str]:
    return [f"{router} {problem}" for router, problems in mismatches.items()
            for problem in problems]


def _totals(counters: list[dict[str, Any]]) -> tuple[int, int]:
    return (sum(sum(c["sent"].values()) for c in counters),
            sum(sum(c["received"].values()) for c in counters))


def report(view: View, result: dict[str, Any]) -> None:
    """Print the outcome for people, then as one ``RESULT {json}`` line for programs."""
    tables, messages, migration = result["tables"], result["messages"], result["migration"]
    view.say(f"routing tables: {tables['equal']} of {tables['checked']} equal to the "
             "central computation (Dijkstra over the final topology)")
    for line in tables["mismatches"][:5]:
        view.say(f"  {line}")
    view.say(f"messages by name between agents: {messages['sent']} sent, "
             f"{messages['received']} received, {messages['lost']} lost, "
             f"{messages['missing']} missing, {messages['duplicates_dropped']} duplicates "
             f"dropped, over {messages['pairs']} pairs")
    for line in messages["unbalanced"][:5]:
        view.say(f"  unbalanced: {line}")
    if migration is not None:
        view.say(f"migration of {migration['router']}: {migration['received_before']} "
                 f"messages received before, {migration['received_after']} after; "
                 f"{migration['sent_to_it']} sent to it, {migration['lost']} lost")
    view.say("alerts on events/netmgmt: " + ", ".join(
        f"{n} {topic}" for topic, n in result["alerts"].items()))
    view.say("OK" if result["ok"] else "FAILED: see the lines above")
    print("RESULT " + json.dumps(result, sort_keys=True), file=view.out, flush=True)
