"""A chaos scenario, generated from a seed: which processes run, and what happens to them.

A scenario is data (JSON-able): the nodes (one process each: the dispatcher, peer
nodes, servers, a client) and a list of steps the runner executes in order. A step
sends a command to a role process (waiting for it to finish, or not: ``join`` waits
later), injects a fault (``kill`` = SIGKILL, ``stop`` = SIGSTOP, ``cont``, ``restart``),
or pauses. A pause is never a synchronisation: it only says how long a fault lasts
(how long a peer stays dead or stopped) or how far into a burst it strikes.

The same seed and the same ``without`` set give the same scenario, so a failure is
replayed by ``python -m tests.chaos --seed S [--without KIND ...]``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FEATURES", "Scenario", "generate", "GROUP", "SERVICE"]

FEATURES: dict[str, str] = {
    "sigkill": "SIGKILL and restart of peer processes (receivers and senders)",
    "sigstop": "SIGSTOP, then SIGCONT, of peer processes",
    "dispatcher": "SIGKILL/restart and SIGSTOP/SIGCONT of the posa dispatcher",
    "server-faults": "SIGKILL/restart and SIGSTOP/SIGCONT of posa.Server processes",
    "migration": "receivers migrating along random chains of transports",
    "slow": "handlers that take longer than 1 s",
    "group": "group sends to a pattern",
    "requests": "peer.request() to receivers",
    "services": "posa.Server/posa.Client through the dispatcher",
    "first-contact": "a sender's first send to a peer that was just killed",
    "inproc": "in-process receivers (reached only from their own process)",
    "zmq": "the zmq+tcp and zmq+ipc transports",
}

GROUP = "chaos/rx/*"          # every remote receiver
SERVICE = "chaos/svc/echo"
LEASE = 4.0                   # every registration's lease, seconds


@dataclass
class Scenario:
    seed: int
    without: frozenset[str]
    nodes: list[dict[str, Any]]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.nodes if n["name"] == name)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "without": sorted(self.without), "nodes": self.nodes,
                "steps": self.steps}


def check_without(without: set[str] | frozenset[str]) -> frozenset[str]:
    unknown = set(without) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; "
                         f"choose among {', '.join(FEATURES)}")
    return frozenset(without)


class _Gen:
    """Builds one scenario's steps, tracking which peers have talked to which."""

    def __init__(self, seed: int, without: frozenset[str]) -> None:
        self.rng = random.Random(seed)
        self.on = {f: f not in without for f in FEATURES}
        self.transports = ["tcp"] + (["zmq+tcp", "zmq+ipc"] if self.on["zmq"] else [])
        self.scenario = Scenario(seed, without, self._nodes())
        self.steps = self.scenario.steps
        self.ids = 0
        self.contacts: set[tuple[str, str]] = set()    # (sender, receiver) since restart
        self.where: dict[str, str] = {}                 # peer name -> node
        self.transport: dict[str, str] = {}             # peer name -> transport now
        for node in self.scenario.nodes:
            for peer in node.get("peers", []):
                self.where[peer["name"]] = node["name"]
                self.transport[peer["name"]] = peer["transport"]

    def _nodes(self) -> list[dict[str, Any]]:
        rng = self.rng
        nodes: list[dict[str, Any]] = [{"name": "d", "kind": "dispatcher"}]
        for i in range(rng.randint(2, 3)):
            peers = [{"name": f"chaos/rx/p{i}", "transport": rng.choice(self.transports),
                      "mode": rng.choice(["handler", "inbox"])}]
            if self.on["inproc"] and rng.random() < 0.5:
                peers.append({"name": f"chaos/lo/p{i}", "transport": "inproc",
                              "mode": rng.choice(["handler", "inbox"])})
            nodes.append({"name": f"p{i}", "kind": "peers", "peers": peers})
        if self.on["services"]:
            for i in range(rng.randint(1, 2)):
                nodes.append({"name": f"s{i}", "kind": "server", "service": SERVICE,
                              "transport": rng.choice(self.transports),
                              "workers": rng.choice([0, 4])})
            nodes.append({"name": "c0", "kind": "client", "attempt_timeout": 1.0})
        return nodes

    # -- step helpers ---------------------------------------------------------
    def cmd(self, node: str, op: str, *, wait: bool = True, **fields: Any) -> int:
        self.ids += 1
        self.steps.append({"do": "cmd", "node": node, "wait": wait,
                           "cmd": {"id": self.ids, "op": op, **fields}})
        return self.ids

    def join(self, node: str, ident: int) -> None:
        self.steps.append({"do": "join", "node": node, "id": ident})

    def fault(self, node: str, kind: str) -> None:
        self.steps.append({"do": "fault", "node": node, "fault": kind})
        if kind == "restart":
            self.contacts = {(s, r) for s, r in self.contacts if self.where.get(s) != node}
            for peer in self.scenario.node(node).get("peers", []):
                self.transport[peer["name"]] = peer["transport"]

    def pause(self, seconds: float) -> None:
        self.steps.append({"do": "pause", "seconds": round(seconds, 3)})

    # -- choosing ----------------------------------------------------------------
    def remotes(self) -> list[str]:
        return sorted(n for n in self.where if n.startswith("chaos/rx/"))

    def pair(self) -> tuple[str, str]:
        """A sender and a receiver it can reach (a local receiver only from its node)."""
        pairs = [(s, r) for s in self.remotes() for r in self.where if s != r
                 and (r.startswith("chaos/rx/") or self.where[r] == self.where[s])]
        return self.rng.choice(pairs)

    def send(self, sender: str, to: str, n: int, *, wait: bool = True,
             timeout: float = 8.0, pace: float = 0.0) -> int:
        """``n`` sends, ``pace`` s apart, then a flush."""
        self.contacts.add((sender, to))
        return self.cmd(self.where[sender], "send", peer=sender, to=to, n=n,
                        timeout=timeout, flush=12.0, wait=wait, pace=pace)

    def paced(self) -> float:
        return self.rng.choice([0.001, 0.002, 0.004])

    def sleeps(self, k: int) -> list[float]:
        choices = [0.0, 0.0, 0.05, 0.3] + ([1.2, 1.6] if self.on["slow"] else [])
        return [self.rng.choice(choices) for _ in range(k)]

    def migrations(self, receiver: str, hops: int, *, idle: bool) -> None:
        options = list(self.transports)
        if receiver.startswith("chaos/lo/"):
            options.append("inproc")
        for _ in range(hops):
            to = self.rng.choice([t for t in options if t != self.transport[receiver]]
                                 or options)
            grace = self.rng.choice([0.2, 0.5, 1.0])
            self.cmd(self.where[receiver], "migrate", peer=receiver, transport=to,
                     grace=grace)
            self.transport[receiver] = to
            if idle:        # let the old endpoint close while its senders are idle
                self.pause(grace + self.rng.uniform(0.05, 0.3))


class _Episodes(_Gen):
    """Each episode starts and ends with every process alive and running."""

    def stream(self) -> None:
        """A burst to one receiver, which (maybe) migrates while it arrives."""
        sender, receiver = self.pair()
        ident = self.send(sender, receiver, self.rng.randint(100, 600), wait=False,
                          pace=self.paced())
        if self.on["migration"]:
            self.migrations(receiver, self.rng.randint(1, 3), idle=False)
        self.join(self.where[sender], ident)

    def idle_migration(self) -> None:
        """Senders talk to a receiver, go idle while it moves along a chain of
        transports (old endpoints closing), then send and request again."""
        receiver = self.rng.choice(sorted(self.where))
        senders = [s for s in self.remotes() if s != receiver
                   and (receiver.startswith("chaos/rx/")
                        or self.where[s] == self.where[receiver])]
        for sender in senders:
            self.send(sender, receiver, 20)
        self.migrations(receiver, self.rng.randint(2, 4), idle=True)
        for sender in senders:      # 3 s: shorter than zmq's 5 s send timeout
            self.send(sender, receiver, 20, timeout=self.rng.choice([3.0, 8.0]))
            if self.on["requests"]:
                self.cmd(self.where[sender], "request", peer=sender, to=receiver,
                         sleeps=self.sleeps(1), timeout=6.0)

    def requests(self) -> None:
        sender, receiver = self.pair()
        self.contacts.add((sender, receiver))
        self.cmd(self.where[sender], "request", peer=sender, to=receiver,
                 sleeps=self.sleeps(self.rng.randint(1, 3)), timeout=self.rng.choice([3.0, 6.0]))

    def service(self) -> None:
        """Calls through posa.Client; maybe a server dies or stops meanwhile."""
        ident = self.cmd("c0", "call", service=SERVICE, sleeps=self.sleeps(self.rng.randint(2, 5)),
                         timeout=6.0, wait=False)
        servers = [n["name"] for n in self.scenario.nodes if n["kind"] == "server"]
        if self.on["server-faults"] and self.rng.random() < 0.6:
            victim = self.rng.choice(servers)
            self.pause(self.rng.uniform(0.05, 1.0))
            if self.on["sigkill"] and self.rng.random() < 0.5:
                self.fault(victim, "kill")
                self.pause(self.rng.uniform(0.3, 1.5))
                self.fault(victim, "restart")
            elif self.on["sigstop"]:
                self.fault(victim, "stop")
                self.pause(self.rng.uniform(0.5, 2.0))
                self.fault(victim, "cont")
        self.join("c0", ident)

    def group(self) -> None:
        """Group sends; maybe one member was killed just before (still registered)."""
        sender = self.rng.choice(self.remotes())
        dead = None
        if self.on["sigkill"] and self.rng.random() < 0.5:
            others = sorted({self.where[r] for r in self.remotes()} - {self.where[sender]})
            dead = self.rng.choice(others)
            self.fault(dead, "kill")
        self.cmd(self.where[sender], "group", peer=sender, pattern=GROUP,
                 n=self.rng.randint(1, 4), timeout=5.0, flush=8.0)
        if dead is not None:
            self.fault(dead, "restart")

    def kill_restart(self) -> None:
        """SIGKILL a peer node; a sender that never talked to it sends meanwhile
        (first contact with a crashed peer); the node restarts a moment later."""
        node = self.rng.choice(sorted({self.where[r] for r in self.remotes()}))
        fresh = [(s, r) for s in self.remotes() for r in self.remotes()
                 if self.where[s] != node and self.where[r] == node
                 and (s, r) not in self.contacts]
        talked = [(s, r) for s in self.remotes() for r in self.remotes()
                  if self.where[s] != node and self.where[r] == node]
        self.fault(node, "kill")
        ident = None
        if fresh and self.on["first-contact"]:
            sender, receiver = self.rng.choice(fresh)
            ident = self.send(sender, receiver, 3, wait=False, timeout=10.0)
        self.pause(self.rng.choice([0.3, 1.0, 2.0]))
        self.fault(node, "restart")
        if ident is not None:
            self.join(self.where[sender], ident)
        elif talked:
            sender, receiver = self.rng.choice(talked)
            self.send(sender, receiver, 10)

    def stop_cont(self) -> None:
        sender, receiver = self.pair()
        if self.where[sender] == self.where[receiver]:
            return
        ident = self.send(sender, receiver, self.rng.randint(50, 300), wait=False,
                          timeout=10.0, pace=self.paced())
        self.pause(self.rng.uniform(0.0, 0.2))
        self.fault(self.where[receiver], "stop")
        self.pause(self.rng.uniform(0.3, 2.0))
        self.fault(self.where[receiver], "cont")
        self.join(self.where[sender], ident)

    def sender_kill(self) -> None:
        """Kill a sender in the middle of a burst, then restart it."""
        sender, receiver = self.pair()
        node = self.where[sender]
        self.send(sender, receiver, self.rng.randint(300, 1000), wait=False,
                  pace=self.paced())
        self.pause(self.rng.uniform(0.05, 0.5))
        self.fault(node, "kill")
        self.pause(self.rng.uniform(0.1, 0.5))
        self.fault(node, "restart")

    def dispatcher(self) -> None:
        """The dispatcher dies (or stops) while peers that know each other talk."""
        known = sorted(self.contacts) or [self.pair()]
        sender, receiver = self.rng.choice(known)
        kill = self.on["sigkill"] and (not self.on["sigstop"] or self.rng.random() < 0.5)
        self.fault("d", "kill" if kill else "stop")
        ident = self.send(sender, receiver, self.rng.randint(20, 200), wait=False,
                          pace=self.paced())
        self.pause(self.rng.uniform(0.3, 1.5))
        self.fault("d", "restart" if kill else "cont")
        self.join(self.where[sender], ident)


def generate(seed: int, without: set[str] | frozenset[str] = frozenset()) -> Scenario:
    """The scenario of ``seed``: 4 to 7 episodes drawn from what ``without`` allows."""
    gen = _Episodes(seed, check_without(without))
    on = gen.on
    menu = [(gen.stream, 3, True), (gen.idle_migration, 2, on["migration"]),
            (gen.requests, 2, on["requests"]), (gen.service, 3, on["services"]),
            (gen.group, 2, on["group"]), (gen.kill_restart, 2, on["sigkill"]),
            (gen.stop_cont, 2, on["sigstop"]), (gen.sender_kill, 1, on["sigkill"]),
            (gen.dispatcher, 1, on["dispatcher"] and (on["sigkill"] or on["sigstop"]))]
    episodes = [e for e, _, enabled in menu if enabled]
    weights = [w for _, w, enabled in menu if enabled]
    for _ in range(gen.rng.randint(4, 7)):
        episode = gen.rng.choices(episodes, weights)[0]
        gen.steps.append({"do": "episode", "name": episode.__name__})
        episode()
    return gen.scenario
