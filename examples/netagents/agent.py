"""The management agent of one router: a ``posa.Peer`` named ``netmgmt/SITE/ROUTER``.

An agent observes its router's links, keeps a link-state database and a
routing table, floods link changes to its neighbours *by name*, publishes
alerts, and answers the administrators' requests.  It is client and server at
once (Forwarder-Receiver): it never knows where a neighbour lives, nor over
which transport, and keeps working when one moves.

One thread does all of an agent's work (receive, handle, send hellos on time),
so its state needs no lock, and its sends to each neighbour keep their order.

Between agents (one-way messages, by name).  Each carries ``seq``, numbered
per recipient from 1, so that the recipient counts what it got and notices a
duplicate or a hole:

    {"type": "hello", "seq", "load"}          to every neighbour over an up link,
                                              every ``hello_interval`` seconds
    {"type": "lsa", "seq", "lsa"}             an advert being flooded
    {"type": "sync", "seq", "lsas", "reply"}  the whole database, to a neighbour
                                              that came up (it answers in kind
                                              if ``reply``)

Requests (from the admin service):

    {"op": "routes"}                          -> {"router", "address", "epoch",
                                                  "routes", "links", "loads", "sent",
                                                  "received"}
    {"op": "set-link", "neighbor", ["up"], ["weight"]}   -> {"links"}
    {"op": "migrate", "listen"}               -> {"router", "from", "epoch"}, then
                                                 it moves (see ``_migrate``)
    {"op": "quiet"}                           stop hellos, flush -> counters
    {"op": "stats"}                           flush -> counters

One-way control: ``{"op": "handover", "to": NAME, "epoch": E}`` hands the
agent registered with epoch E over to another process (see ``handover.py``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import posa
from posa import Kind, Message, Registry
from posa.errors import Closed, NameNotFound, PosaError, Timeout

from .network import ROOT, Network, peer_name, router_of
from .routing import LSA, LinkStateDB, Routes

__all__ = ["Agent", "Publish", "MIGRATION_GRACE", "state_sender_name"]

log = logging.getLogger("netagents.agent")

MIGRATION_GRACE = 0.5   # seconds the old address keeps delivering after a migration
SEND_TIMEOUT = 2.0      # seconds a send may wait for a neighbour that is moving

Publish = Callable[[str, dict[str, Any]], None]


def state_sender_name(router: str) -> str:
    """The name that sends ``router``'s state when its agent hands over: the agent's
    own name is unregistered by then, so that its senders hold their messages."""
    return f"{ROOT}/handover/{router}/state"


def _wire_routes(routes: Routes) -> dict[str, list[Any]]:
    return {dest: [hop, cost] for dest, (hop, cost) in sorted(routes.items())}


class Agent:
    """The agent of ``router``; starts working at once, stops with ``close()``.

    ``state`` (from another process's ``export_state``) continues that agent's
    work here instead of starting afresh: see ``handover.py``."""

    def __init__(self, router: str, network: Network, *, registry: Registry,
                 publish: Publish, listen: str | None = None, credential: str | None = None,
                 hello_interval: float = 0.05, state: dict[str, Any] | None = None) -> None:
        self.router = router
        self.network = network        # the simulated hardware: what the links measure
        self.publish = publish
        self.hello_interval = hello_interval
        # the router's configuration: neighbour -> [weight, up]
        self.links = {n: [link.weight, link.up] for n, link in network.neighbors(router).items()}
        self.db = LinkStateDB()
        self.own_seq = 0
        self.routes: Routes = {}
        self.loads: dict[str, float] = {}      # per neighbour: the load it last reported
        self.next_seq: dict[str, int] = {}     # per recipient: the seq of the next message
        self.last_seq: dict[str, int] = {}     # per sender: the last seq received
        self.received: dict[str, int] = {}
        self.duplicates = self.missing = self.send_errors = 0
        self.migration: dict[str, Any] | None = None
        self.hellos = True
        self._outbox: list[tuple[str, dict[str, Any]]] | None = None   # while handing over
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self.handed_over = threading.Event()
        self._resumed = state is not None
        if state is not None:
            self._restore(state)
        self.peer = posa.Peer(peer_name(router), registry=registry, listen=listen,
                              credential=credential, linger=1.0)
        self._thread = threading.Thread(target=self._run, name=f"agent-{router}",
                                        daemon=True)
        self._thread.start()

    # -- the agent's thread ------------------------------------------------------
    def _run(self) -> None:
        if self._resumed:
            self._taken_over()
        else:
            self._advertise(flood=False)
            self._send_to_neighbors({"type": "sync", "lsas": self.db.to_wire(), "reply": True})
        next_hello = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self.hellos and now >= next_hello:
                self._send_hellos(int(now * 10))
                next_hello = max(next_hello + self.hello_interval, now)
            wait = max(0.0, next_hello - now) if self.hellos else 0.1
            try:
                msg = self.peer.receive(timeout=min(wait, 0.1))
            except Timeout:
                continue
            except Closed:
                return
            self._handle(msg)
            if self.handed_over.is_set():
                return

    def _handle(self, msg: Message) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        if msg.kind == Kind.REQUEST:
            try:
                self.peer.reply(msg, self._request(body))
            except PosaError as exc:
                self.peer.reply_error(msg, exc)
                return
            except (KeyError, TypeError, ValueError) as exc:
                self.peer.reply_error(msg, posa.Rejected(
                    f"malformed request {body!r:.80} for {self.router}: {exc!r}"))
                return
            if body.get("op") == "migrate":    # after the reply, sent where it was asked
                self._migrate(body["listen"])
        elif body.get("op") == "handover" and isinstance(body.get("to"), str):
            if body.get("epoch") == self.peer.epoch:   # not a late copy meant for
                self._hand_over(body["to"])            # the agent before this one
        elif "type" in body and self._count(router_of(msg.sender), body.get("seq")):
            self._traffic(router_of(msg.sender), body)

    def _count(self, sender: str, seq: Any) -> bool:
        """Account one message from ``sender``; False for a duplicate (dropped)."""
        if not isinstance(seq, int):
            return False
        last = self.last_seq.get(sender, 0)
        if seq <= last:
            self.duplicates += 1
            return False
        self.missing += seq - last - 1
        self.last_seq[sender] = seq
        self.received[sender] = self.received.get(sender, 0) + 1
        return True

    def _traffic(self, sender: str, body: dict[str, Any]) -> None:
        kind = body["type"]
        if kind == "hello":
            self.loads[sender] = float(body["load"])
        elif kind == "lsa":
            self._learn([LSA.from_wire(body["lsa"])], came_from=sender)
        elif kind == "sync":
            self._learn([LSA.from_wire(x) for x in body["lsas"]], came_from=sender)
            if body.get("reply"):
                self._send(sender, {"type": "sync", "lsas": self.db.to_wire(), "reply": False})

    # -- link state ----------------------------------------------------------------
    def _learn(self, adverts: list[LSA], came_from: str | None) -> None:
        """Keep the newer adverts, flood them on, recompute the routes."""
        fresh = [lsa for lsa in adverts if lsa.origin != self.router and self.db.offer(lsa)]
        for lsa in fresh:
            for neighbor in self._up_neighbors():
                if neighbor not in (came_from, lsa.origin):
                    self._send(neighbor, {"type": "lsa", "lsa": lsa.to_wire()})
        if fresh:
            self._recompute()

    def _advertise(self, flood: bool = True) -> None:
        """A new advert of this router's up links (next seq); flood it to every up
        neighbour unless told not to (a sync carries it instead)."""
        self.own_seq += 1
        own = LSA(self.router, self.own_seq,
                  {n: w for n, (w, up) in sorted(self.links.items()) if up})
        self.db.offer(own)
        if flood:
            self._send_to_neighbors({"type": "lsa", "lsa": own.to_wire()})
        self._recompute()

    def _recompute(self) -> None:
        routes = self.db.routes(self.router)
        if routes == self.routes:
            return
        changes = [[dest, list(self.routes[dest]) if dest in self.routes else None,
                    list(routes[dest]) if dest in routes else None]
                   for dest in sorted(set(routes) | set(self.routes))
                   if routes.get(dest) != self.routes.get(dest)]
        self.routes = routes
        self.publish("route/changed", {"router": self.router, "changes": changes})

    def _set_link(self, neighbor: str, up: bool | None, weight: int | None) -> None:
        if neighbor not in self.links:
            raise posa.Rejected(f"{self.router} has no link to {neighbor!r}; its links: "
                                + ", ".join(sorted(self.links)))
        was_weight, was_up = self.links[neighbor]
        now_up = was_up if up is None else bool(up)
        now_weight = was_weight if weight is None else int(weight)
        if now_weight < 1:
            raise posa.Rejected(f"a link weight must be >= 1, got {weight!r}")
        if (now_weight, now_up) == (was_weight, was_up):
            return
        self.links[neighbor] = [now_weight, now_up]
        alert: dict[str, Any] = {"router": self.router, "neighbor": neighbor}
        if now_up != was_up:
            self.publish("link/up" if now_up else "link/down",
                         dict(alert, weight=now_weight) if now_up else alert)
        elif now_weight != was_weight:
            self.publish("link/weight", dict(alert, weight=now_weight, was=was_weight))
        self._advertise()
        if now_up and not was_up:
            self._send(neighbor, {"type": "sync", "lsas": self.db.to_wire(), "reply": False})

    # -- sending -------------------------------------------------------------------
    def _up_neighbors(self) -> list[str]:
        return [n for n, (_, up) in sorted(self.links.items()) if up]

    def _send_to_neighbors(self, body: dict[str, Any]) -> None:
        for neighbor in self._up_neighbors():
            self._send(neighbor, dict(body))

    def _send_hellos(self, tick: int) -> None:
        for neighbor in self._up_neighbors():
            self._send(neighbor, {"type": "hello",
                                  "load": self.network.load(self.router, neighbor, tick)})

    def _send(self, neighbor: str, body: dict[str, Any]) -> None:
        """Send ``body`` to ``neighbor``'s agent by name, numbered for the count."""
        seq = body["seq"] = self.next_seq.get(neighbor, 1)
        if self._outbox is not None:    # handing over: the next process sends it
            self._outbox.append((neighbor, body))
        elif not self._forward(neighbor, body):
            return      # not started yet: it syncs with us when it starts; seq not used
        self.next_seq[neighbor] = seq + 1

    def _forward(self, neighbor: str, body: dict[str, Any]) -> bool:
        """Hand one numbered message to posa; False if the neighbour has no agent."""
        try:
            self.peer.send(peer_name(neighbor), body, timeout=SEND_TIMEOUT)
        except NameNotFound:
            return False
        except PosaError as exc:
            # still queued for resending (flush retries it), so it counts as sent
            self.send_errors += 1
            if not self._stop.is_set():     # neighbours go away while all stop
                log.warning("%s: sending to %s: %s", self.router, neighbor, exc)
        return True

    # -- requests --------------------------------------------------------------------
    def _request(self, body: dict[str, Any]) -> Any:
        op = body.get("op")
        if op == "routes":
            return {"router": self.router, "address": self.peer.address,
                    "epoch": self.peer.epoch, "routes": _wire_routes(self.routes),
                    "links": dict(self.links), "loads": dict(sorted(self.loads.items())),
                    "received": self._total_received(),
                    "sent": sum(self.next_seq.values()) - len(self.next_seq)}
        if op == "set-link":
            self._set_link(body["neighbor"], body.get("up"), body.get("weight"))
            return {"links": dict(self.links)}
        if op == "migrate":
            if not isinstance(body["listen"], str):
                raise posa.Rejected("migrate needs the address to listen on, e.g. "
                                    '{"op": "migrate", "listen": "zmq+tcp://127.0.0.1:0"}')
            return {"router": self.router, "from": self.peer.address,
                    "epoch": self.peer.epoch}
        if op in ("quiet", "stats"):
            if op == "quiet":
                self.hellos = False
            self.peer.flush(timeout=10.0)
            return self.counters()
        raise posa.Rejected(f"unknown op {op!r}; use routes, set-link, migrate, quiet or "
                            "stats")

    def counters(self) -> dict[str, Any]:
        """What this agent sent and received, by the other router, and its migration."""
        return {"router": self.router, "address": self.peer.address, "epoch": self.peer.epoch,
                "sent": {n: s - 1 for n, s in sorted(self.next_seq.items())},
                "received": dict(sorted(self.received.items())),
                "duplicates": self.duplicates, "missing": self.missing,
                "send_errors": self.send_errors, "migration": self.migration}

    def _total_received(self) -> int:
        return sum(self.received.values())

    # -- moving ------------------------------------------------------------------------
    def _migrate(self, listen: str) -> None:
        """Move to another address (and transport) in this process, under traffic.

        Called after the reply to the request that asked for it: a reply must
        leave by the address its request came to, before senders hear of the move."""
        before, epoch = self.peer.address, self.peer.epoch
        try:
            after = self.peer.migrate(listen, grace=MIGRATION_GRACE)
        except PosaError as exc:
            log.warning("%s: could not migrate to %s: %s", self.router, listen, exc)
            return
        self.migration = {"router": self.router, "from": before, "to": after,
                          "epochs": [epoch, self.peer.epoch],
                          "received_before": self._total_received()}
        self.publish("agent/migrated", {"router": self.router, "from": before, "to": after,
                                        "epoch": self.peer.epoch})

    def _hand_over(self, to: str) -> None:
        """Give this agent to the process waiting as ``to``, and stop (old side).

        Close the peer first (its name is free, senders hold on and retry),
        handle what had already arrived (sends it causes go to the outbox),
        then send the whole state to ``to`` as a request: the reply confirms it."""
        self.hellos = False
        self._outbox = []
        epoch, address, registry = self.peer.epoch, self.peer.address, self.peer.registry
        self.peer.close()
        while True:
            try:
                self._handle(self.peer.receive(timeout=0))
            except (Timeout, Closed):
                break
        state = self.export_state()
        state["migration"] = {"router": self.router, "from": address, "epochs": [epoch],
                              "received_before": self._total_received(),
                              "across_processes": True}
        try:            # the name is free now: a peer of its own carries the state
            with posa.Peer(state_sender_name(self.router), registry=registry) as courier:
                courier.request(to, state, timeout=10.0)  # answered once it has the state
        except PosaError as exc:
            log.error("%s: %s did not confirm it has this agent's state (%s); the agent "
                      "may be lost", self.router, to, exc)
        self.handed_over.set()

    def export_state(self) -> dict[str, Any]:
        """Everything another process needs to continue as this agent."""
        return {"router": self.router, "links": self.links, "lsdb": self.db.to_wire(),
                "own_seq": self.own_seq, "routes": _wire_routes(self.routes),
                "next_seq": self.next_seq, "last_seq": self.last_seq,
                "received": self.received, "duplicates": self.duplicates,
                "missing": self.missing, "send_errors": self.send_errors,
                "outbox": [[n, body] for n, body in self._outbox or []]}

    def _restore(self, state: dict[str, Any]) -> None:
        self.links = {n: list(v) for n, v in state["links"].items()}
        self.db = LinkStateDB(LSA.from_wire(x) for x in state["lsdb"])
        self.own_seq = state["own_seq"]
        self.routes = {d: (h, c) for d, (h, c) in state["routes"].items()}
        self.next_seq = dict(state["next_seq"])
        self.last_seq = dict(state["last_seq"])
        self.received = dict(state["received"])
        self.duplicates, self.missing = state["duplicates"], state["missing"]
        self.send_errors = state["send_errors"]
        self._pending = [(n, body) for n, body in state["outbox"]]
        self.migration = state["migration"]

    def _taken_over(self) -> None:
        """First steps after taking over from another process (new side)."""
        assert self.migration is not None
        self.migration.update(to=self.peer.address,
                              epochs=[*self.migration["epochs"], self.peer.epoch])
        for neighbor, body in self._pending:
            self._forward(neighbor, body)
        self._pending = []
        self.publish("agent/migrated", {"router": self.router, "from": self.migration["from"],
                                        "to": self.peer.address, "epoch": self.peer.epoch})
        self._send_to_neighbors({"type": "sync", "lsas": self.db.to_wire(), "reply": True})

    # -- stopping ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the agent's thread; its name stays registered until ``close``.

        Stop every agent of a process before closing any, so that none keeps
        sending to a neighbour that is already gone."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(10.0)

    def close(self) -> None:
        """Stop, and close the peer (unregisters the name). Idempotent."""
        self.stop()
        self.peer.close()


