"""Link-state routing, with no I/O: the database of link-state adverts and Dijkstra.

Every router originates an advert (LSA): its own links that are up, with their
weights, and a sequence number it raises on every change.  Agents flood adverts
to their neighbours; an agent keeps an advert only if it is newer than the one
it has (``LinkStateDB.offer``) and passes on only what it kept, so flooding
ends, and every agent ends with the same database.  Routes are shortest paths
over the links both ends advertise (``graph``), and ties between equal-cost
paths go to the smaller next-hop name, so an agent's table and the one
computed centrally over the true topology are equal, not merely equivalent.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LSA", "LinkStateDB", "Routes", "shortest_paths"]

Routes = dict[str, tuple[str, int]]
"""A routing table: destination -> (next hop, cost)."""


def shortest_paths(graph: Mapping[str, Mapping[str, int]], source: str) -> Routes:
    """Dijkstra from ``source``: the next hop and cost of every reachable router.

    Among paths of equal cost the one whose first hop has the smaller name wins
    (labels ``(cost, first hop)`` compared as tuples)."""
    best: dict[str, tuple[int, str]] = {source: (0, "")}
    heap: list[tuple[int, str, str]] = [(0, "", source)]
    done: set[str] = set()
    while heap:
        cost, hop, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for neighbor, weight in graph.get(node, {}).items():
            label = (cost + weight, hop or neighbor)
            if neighbor not in done and (neighbor not in best or label < best[neighbor]):
                best[neighbor] = label
                heapq.heappush(heap, (label[0], label[1], neighbor))
    return {dest: (hop, cost) for dest, (cost, hop) in best.items() if dest != source}


@dataclass(frozen=True)
class LSA:
    """A link-state advert: ``origin``'s links that are up, as of ``seq``."""

    origin: str
    seq: int
    links: Mapping[str, int]

    def to_wire(self) -> dict[str, Any]:
        return {"origin": self.origin, "seq": self.seq, "links": dict(self.links)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LSA:
        return cls(str(data["origin"]), int(data["seq"]),
                   {str(k): int(v) for k, v in data["links"].items()})


class LinkStateDB:
    """The newest advert of every router an agent has heard of."""

    def __init__(self, adverts: Iterable[LSA] = ()) -> None:
        self.adverts: dict[str, LSA] = {}
        for lsa in adverts:
            self.offer(lsa)

    def offer(self, lsa: LSA) -> bool:
        """Keep ``lsa`` if it is newer than what we have; True if kept (flood it on)."""
        known = self.adverts.get(lsa.origin)
        if known is not None and known.seq >= lsa.seq:
            return False
        self.adverts[lsa.origin] = lsa
        return True

    def graph(self) -> dict[str, dict[str, int]]:
        """The links both ends advertise (a link one end reports down is down)."""
        graph: dict[str, dict[str, int]] = {}
        for origin, lsa in self.adverts.items():
            for neighbor, weight in lsa.links.items():
                other = self.adverts.get(neighbor)
                if other is not None and origin in other.links:
                    graph.setdefault(origin, {})[neighbor] = weight
        return graph

    def routes(self, source: str) -> Routes:
        return shortest_paths(self.graph(), source)

    def to_wire(self) -> list[dict[str, Any]]:
        return [lsa.to_wire() for _, lsa in sorted(self.adverts.items())]
