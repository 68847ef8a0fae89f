"""The outcome checks, with no I/O: what the agents report against what must be.

- Every agent's routing table equals the one computed centrally: Dijkstra over
  the true final topology (``routing.shortest_paths`` over ``Network.graph``).
- Every message an agent sent to another by name was received by it exactly
  once: per pair of agents, sent == received, no hole in the numbering.
- The migrated agent received messages both before and after its move, and
  none sent to it was lost.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .network import Network
from .routing import shortest_paths

__all__ = ["central_tables", "table_mismatches", "message_counts", "migration_summary"]


def central_tables(network: Network) -> dict[str, dict[str, list[Any]]]:
    """Every router's table computed centrally, in the agents' wire form."""
    graph = network.graph()
    return {router: {dest: [hop, cost] for dest, (hop, cost)
                     in sorted(shortest_paths(graph, router).items())}
            for router in network.routers}


def table_mismatches(network: Network, tables: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, list[str]]:
    """Per router whose table differs from the central one, what differs ({} if none)."""
    problems: dict[str, list[str]] = {}
    for router, expected in central_tables(network).items():
        got = tables.get(router)
        if got is None:
            problems[router] = ["no routing table"]
            continue
        wrong = [f"to {dest}: has {got.get(dest)}, central Dijkstra says {expected.get(dest)}"
                 for dest in sorted(set(expected) | set(got))
                 if list(got.get(dest) or []) != list(expected.get(dest) or [])]
        if wrong:
            problems[router] = wrong
    return problems


def message_counts(counters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over every agent's counters, and the pairs that do not balance."""
    sent = {(c["router"], to): n for c in counters for to, n in c["sent"].items()}
    received = {(frm, c["router"]): n for c in counters for frm, n in c["received"].items()}
    unbalanced = [f"{a} -> {b}: sent {sent.get((a, b), 0)}, received {received.get((a, b), 0)}"
                  for a, b in sorted(set(sent) | set(received))
                  if sent.get((a, b), 0) != received.get((a, b), 0)]
    total_sent, total_received = sum(sent.values()), sum(received.values())
    return {"sent": total_sent, "received": total_received,
            "lost": sum(max(0, n - received.get(pair, 0)) for pair, n in sent.items()),
            "missing": sum(c["missing"] for c in counters),
            "duplicates_dropped": sum(c["duplicates"] for c in counters),
            "send_errors": sum(c["send_errors"] for c in counters),
            "pairs": len(sent), "unbalanced": unbalanced}


def migration_summary(counters: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The migration (as the migrated agent recorded it), with its traffic after the
    move and the messages sent to it against those it received."""
    moved = [c for c in counters if c.get("migration")]
    if not moved:
        return None
    agent = moved[0]
    record = dict(agent["migration"])
    router = agent["router"]
    received = sum(agent["received"].values())
    sent_to_it = sum(c["sent"].get(router, 0) for c in counters)
    record.update(received_after=received - record["received_before"],
                  sent_to_it=sent_to_it, received_by_it=received,
                  lost=max(0, sent_to_it - received))
    return record
