"""The simulated network: routers, links, and the script of what happens to them.

Everything here is pure data, deterministic from a seed: the same seed gives
the same routers, links, weights, loads and scenario in every process, which
is how the processes of the multi-process mode agree on the network without
being told.

    site-a: r1 r2 r3 r4  (a ring plus one chord)   site-b: the same
    a few inter-site links between random routers of the two sites

A router is named ``SITE/ROUTER`` (``site-a/r1``); its agent is the posa peer
``netmgmt/SITE/ROUTER`` (``peer_name``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["Link", "Network", "Step", "build", "scenario", "peer_name", "router_of",
           "ROOT"]

ROOT = "netmgmt"


def peer_name(router: str) -> str:
    """The posa name of ``router``'s agent: ``site-a/r1`` -> ``netmgmt/site-a/r1``."""
    return f"{ROOT}/{router}"


def router_of(name: str) -> str:
    """The router an agent's posa name stands for (the inverse of ``peer_name``)."""
    return name[len(ROOT) + 1:] if name.startswith(ROOT + "/") else name


def link_key(a: str, b: str) -> tuple[str, str]:
    """A link's key: its two ends, sorted."""
    return (a, b) if a < b else (b, a)


@dataclass
class Link:
    """One bidirectional link: the same weight both ways, up or down."""

    weight: int
    up: bool = True


@dataclass
class Network:
    """Routers and links; ``graph()`` is what shortest paths run over."""

    seed: int
    routers: list[str]
    links: dict[tuple[str, str], Link]

    def neighbors(self, router: str) -> dict[str, Link]:
        """Every link of ``router`` (up or down), by the router at its other end."""
        return {(b if a == router else a): link for (a, b), link in self.links.items()
                if router in (a, b)}

    def graph(self) -> dict[str, dict[str, int]]:
        """Adjacency of the links that are up: ``{router: {neighbor: weight}}``."""
        graph: dict[str, dict[str, int]] = {r: {} for r in self.routers}
        for (a, b), link in self.links.items():
            if link.up:
                graph[a][b] = graph[b][a] = link.weight
        return graph

    def apply(self, step: Step) -> None:
        """Change the network as ``step`` says (links only; other steps change nothing)."""
        if step.link is None:
            return
        link = self.links[link_key(*step.link)]
        if step.up is not None:
            link.up = step.up
        if step.weight is not None:
            link.weight = step.weight

    def load(self, router: str, neighbor: str, tick: int) -> float:
        """The simulated load (0..1) of a link at a moment, as ``router`` measures it."""
        a, b = link_key(router, neighbor)
        return round(random.Random(f"{self.seed}/{a}/{b}/{tick}").random(), 3)


@dataclass(frozen=True)
class Step:
    """One thing that happens: ``action`` is ``"link"`` (an administrator takes a
    link down or up, or changes its weight) or ``"migrate"`` (an agent moves)."""

    action: str
    text: str
    link: tuple[str, str] | None = None
    up: bool | None = None
    weight: int | None = None
    router: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def build(seed: int = 1, *, sites: int = 2, per_site: int = 4,
          inter_site: int = 3) -> Network:
    """The network of ``seed``: ``sites`` sites of ``per_site`` routers, each a
    ring plus one chord, joined by ``inter_site`` links."""
    if sites < 1 or per_site < 3 or inter_site < (1 if sites > 1 else 0):
        raise ValueError("need at least 1 site, 3 routers per site, and 1 inter-site "
                         "link when there are several sites")
    rng = random.Random(seed)
    site_names = [f"site-{chr(ord('a') + i)}" for i in range(sites)]
    routers = [f"{s}/r{i}" for s in site_names for i in range(1, per_site + 1)]
    links: dict[tuple[str, str], Link] = {}
    for site in site_names:
        ring = [f"{site}/r{i}" for i in range(1, per_site + 1)]
        for i, router in enumerate(ring):
            links[link_key(router, ring[(i + 1) % per_site])] = Link(rng.randint(1, 9))
        chord = rng.randrange(per_site // 2)
        links.setdefault(link_key(ring[chord], ring[chord + per_site // 2]),
                         Link(rng.randint(2, 9)))
    for i in range(inter_site if sites > 1 else 0):
        a_site, b_site = site_names[i % sites], site_names[(i + 1) % sites]
        while True:
            key = link_key(f"{a_site}/r{rng.randint(1, per_site)}",
                           f"{b_site}/r{rng.randint(1, per_site)}")
            if key not in links:
                links[key] = Link(rng.randint(5, 15))
                break
    return Network(seed, routers, links)


def scenario(network: Network) -> list[Step]:
    """What happens to ``network``, in order (deterministic from its seed).

    An inter-site link goes down, an intra-site weight changes, an agent
    migrates while traffic flows, an intra-site link goes down, the first link
    comes back, an inter-site weight changes. The network stays connected."""
    rng = random.Random(network.seed * 7919 + 1)
    inter = sorted(k for k in network.links if k[0].split("/")[0] != k[1].split("/")[0])
    intra = sorted(k for k in network.links if k not in inter)
    first_down, reweighted = rng.choice(inter), rng.choice(intra)
    second_down = rng.choice([k for k in intra if k != reweighted])
    new_weight = network.links[reweighted].weight + rng.randint(3, 8)
    other_inter = rng.choice([k for k in inter if k != first_down])
    mover = rng.choice(sorted(network.routers))

    def show(key: tuple[str, str]) -> str:
        return f"{key[0]} -- {key[1]}"
    return [
        Step("link", f"take link {show(first_down)} down", link=first_down, up=False),
        Step("link", f"set the weight of {show(reweighted)} to {new_weight}",
             link=reweighted, weight=new_weight),
        Step("migrate", f"migrate the agent of {mover}", router=mover),
        Step("link", f"take link {show(second_down)} down", link=second_down, up=False),
        Step("link", f"bring link {show(first_down)} back up", link=first_down, up=True),
        Step("link", f"set the weight of {show(other_inter)} to 4", link=other_inter,
             weight=4),
    ]

