"""The checker: reads every history of a scenario and says which promise broke where.

What "healthy" means: a node (one process, all its incarnations) is *down* from a
SIGKILL until its next incarnation is ready, plus ``RECOVERY`` s, and *stopped* from
a SIGSTOP until its SIGCONT, plus ``RECOVERY`` s; the dispatcher's margin after it is
back is a whole lease (its registrations come back within one). A call is judged
against faults only when every process it depends on was healthy throughout it.

The checks (each a ``Violation`` kind):

- ``out-of-order``: a receiver process delivered one sender's messages out of the
  order that sender's thread sent them (per receiver name and incarnation, per
  sender incarnation).
- ``duplicate``: a receiver process delivered the same message (the id its sender
  put in the body) twice.
- ``lost``: a send returned, a later ``flush()`` of that thread returned (so it was
  acknowledged), and the message was never delivered. A receiver reading by
  ``receive()`` that was SIGKILLed after the send may lose what sat in its inbox
  (docs/peers.md); a receiver serving by handler records the delivery before it
  acknowledges, so it may not.
- ``group-missed``: a group send did not reach a member that was healthy from the
  send until its sender's next flush returned (whether or not the send raised).
- ``delivered-after-timeout``: a send raised ``Timeout`` and its message was
  delivered more than ``LATE`` s afterwards (a Timeout that was not final).
- ``failed-while-healthy``: a send, a request, a flush or a service call failed
  although every process it needed was healthy throughout (and a request's handler
  had time: its sleep plus 2 s, 3 s for a service call, within the deadline).
- ``unexpected-error``: a call raised something other than ``Timeout`` or
  ``NameNotFound`` (``TransportError`` escaping, say), or, for a group send,
  ``PartialDelivery`` (whose members are checked by ``group-missed``).
- ``early-timeout``: ``Timeout`` raised more than ``EARLY`` s before the deadline.
- ``overran-deadline``: a call returned or raised more than ``SLACK`` s after its
  deadline (a liveness check, not a timing test).
- ``wrong-reply``: a reply that belongs to another request.
- ``handler-ran-twice``: one server (process) started one request's handler twice.
- ``wrong-sender``: a delivery whose ``msg.sender`` is not who sent it.
- ``command-error``, ``hung``, ``start-failed``, ``crashed``, ``did-not-exit``:
  a role's command raised unexpectedly, a process did not answer in time, died by
  itself, or did not close.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import posa
from tests.chaos.history import read_all
from tests.chaos.scenario import LEASE

__all__ = ["Violation", "check", "summarize", "RECOVERY", "SLACK"]

RECOVERY = 1.0     # s after a node is back before it counts as healthy again
SLACK = 2.0        # s a call may return after its deadline
EARLY = 1.0        # s before its deadline a Timeout may come
LATE = 0.5         # s after a Timeout a delivery counts as "after" it
ALLOWED = ("Timeout", "NameNotFound", "PartialDelivery")   # the last: group sends only

Record = dict[str, Any]


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class World:
    """Who ran where, and when each node was not healthy."""

    def __init__(self, directory: Path) -> None:
        self.records = read_all(directory)
        scenario = json.loads((directory / "scenario.json").read_text())
        self.kinds = {n["name"]: n["kind"] for n in scenario["nodes"]}
        self.node_of: dict[str, str] = {}
        self.mode: dict[str, str] = {}
        for node in scenario["nodes"]:
            for peer in node.get("peers", []):
                self.node_of[peer["name"]] = node["name"]
                self.mode[peer["name"]] = peer["mode"]
        self.servers = [n for n, kind in self.kinds.items() if kind == "server"]
        self.bad: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.kills: dict[str, list[float]] = defaultdict(list)
        self._faults()

    def _faults(self) -> None:
        opened: dict[str, float] = {}
        for r in self.records:
            if r["node"] != "runner" or r["ev"] not in ("fault", "up"):
                continue
            target, t = r["target"], float(r["t"])
            margin = RECOVERY + (LEASE if target == "d" else 0.0)
            if r["ev"] == "up" or r["fault"] == "cont":
                if target in opened:
                    self.bad[target].append((opened.pop(target), t + margin))
            elif r["fault"] in ("kill", "stop"):
                opened.setdefault(target, t)
                if r["fault"] == "kill":
                    self.kills[target].append(t)
        for target, start in opened.items():
            self.bad[target].append((start, math.inf))

    def healthy(self, nodes: list[str], start: float, end: float) -> bool:
        return all(end < a or start > b for n in nodes for a, b in self.bad.get(n, ()))

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r["ev"] == kind]


def _key(r: Record) -> tuple[str, int, str]:
    """The process incarnation and peer a record is of."""
    return r["node"], int(r["inc"]), r.get("peer", "")


def _err_kind(r: Record) -> str:
    return str(r.get("err", "")).partition(":")[0]


def check_deliveries(w: World) -> list[Violation]:
    out: list[Violation] = []
    streams: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for r in w.of("deliver"):
        streams[(*_key(r), r["src"], r["sinc"])].append(r)
        if r["sender"] != r["src"]:
            out.append(Violation("wrong-sender", f"{r['id']} came from {r['src']} but "
                                 f"{r['peer']} was told {r['sender']}"))
    for (node, inc, peer, src, sinc), got in streams.items():
        got.sort(key=lambda r: r["_n"])
        seen: set[int] = set()
        last = 0
        for r in got:
            where = f"{peer} (node {node} incarnation {inc}) from {src} (incarnation {sinc})"
            if r["seq"] in seen:
                out.append(Violation("duplicate", f"{where}: {r['id']} delivered again"))
            elif r["seq"] < last:
                out.append(Violation("out-of-order", f"{where}: seq {r['seq']} after {last}"))
            seen.add(r["seq"])
            last = max(last, r["seq"])
    return out


def _flushes(w: World) -> dict[tuple[str, int, str], list[Record]]:
    flushes: dict[tuple[str, int, str], list[Record]] = defaultdict(list)
    for r in w.of("flush"):
        flushes[_key(r)].append(r)
    return flushes


def check_losses(w: World) -> list[Violation]:
    out: list[Violation] = []
    flushes = _flushes(w)
    delivered: dict[str, list[Record]] = defaultdict(list)
    for r in w.of("deliver"):
        delivered[r["id"]].append(r)
    for s in w.of("send"):
        got = [d for d in delivered.get(s["id"], ()) if d["peer"] == s["to"]]
        if not s["ok"]:
            late = [d for d in got if d["t"] > s["t"] + LATE]
            if _err_kind(s) == "Timeout" and late:
                out.append(Violation("delivered-after-timeout", (
                    f"{s['id']} to {s['to']}: send raised Timeout at {s['t']:.3f}, "
                    f"delivered {late[0]['t'] - s['t']:.2f} s later by {late[0]['node']} "
                    f"incarnation {late[0]['inc']}")))
            continue
        confirm = next((f for f in flushes.get(_key(s), ())
                        if f["ok"] and f["t0"] >= s["t"]), None)
        if confirm is None or got:
            continue
        receiver = w.node_of.get(s["to"], "")
        if w.mode.get(s["to"]) == "inbox" and any(k > s["t0"] for k in w.kills[receiver]):
            continue        # acknowledged into an inbox that died with its process
        out.append(Violation("lost", (
            f"{s['id']} to {s['to']}: sent at {s['t']:.3f}, acknowledged by a flush at "
            f"{confirm['t']:.3f}, never delivered")))
    return out


def check_groups(w: World) -> list[Violation]:
    out: list[Violation] = []
    flushes = _flushes(w)
    delivered = {(r["id"], r["peer"]) for r in w.of("deliver")}
    for g in w.of("group"):
        after = next((f for f in flushes.get(_key(g), ()) if f["t0"] >= g["t"]), None)
        if after is None:
            continue        # its sender died before it could flush
        members = [p for p in w.node_of if p != g["peer"] and posa.matches(g["pattern"], p)]
        for member in members:
            node = w.node_of[member]
            if not w.healthy([node], g["t0"], after["t"]) or (g["id"], member) in delivered:
                continue
            outcome = "returned" if g["ok"] else f"raised {g['err']}"
            out.append(Violation("group-missed", (
                f"{g['id']} to {g['pattern']} (send {outcome}) never reached {member}, "
                f"which was up throughout")))
    return out


def _deadline_checks(w: World, r: Record, what: str) -> list[Violation]:
    out = []
    if r["late"] > SLACK and w.healthy([r["node"]], r["t0"], r["t"]):   # not SIGSTOPped
        outcome = "returned" if r["ok"] else f"raised {r['err']}"
        out.append(Violation("overran-deadline", f"{what} {outcome} {r['late']:.2f} s after "
                             f"its deadline ({r['timeout']} s)"))
    if not r["ok"]:
        kind = _err_kind(r)
        if kind not in ALLOWED:
            out.append(Violation("unexpected-error", f"{what} raised {r['err']}"))
        elif kind == "Timeout" and r["late"] < -EARLY:
            out.append(Violation("early-timeout", f"{what} raised {r['err']} "
                                 f"{-r['late']:.2f} s before its deadline"))
    return out


def check_calls(w: World) -> list[Violation]:
    out: list[Violation] = []
    for s in w.of("send"):
        what = f"send {s['id']} to {s['to']}"
        out += _deadline_checks(w, s, what)
        needs = [s["node"], w.node_of.get(s["to"], ""), "d"]
        if not s["ok"] and w.healthy(needs, s["t0"], s["t"]):
            out.append(Violation("failed-while-healthy", f"{what} raised {s['err']}"))
    for g in w.of("group"):
        out += _deadline_checks(w, g, f"group send {g['id']} to {g['pattern']}")
    replies = {r["rid"]: r["body"] for r in w.of("reply")}
    for r in w.of("request"):
        what = f"{'call' if r['via'] == 'client' else 'request'} {r['rid']} to {r['to']} " \
               f"(handler {r['sleep']} s, timeout {r['timeout']} s)"
        out += _deadline_checks(w, r, what)
        body = replies.get(r["rid"])
        if r["ok"] and (not isinstance(body, dict) or body.get("rid") != r["rid"]):
            out.append(Violation("wrong-reply", f"{what} was answered with {body!r}"))
        end = r["t0"] + r["timeout"]
        if r["via"] == "client":
            fine = w.healthy([r["node"], "d"], r["t0"], end) and r["sleep"] + 3.0 <= \
                r["timeout"] and any(w.healthy([s], r["t0"], end) for s in w.servers)
        else:
            fine = w.healthy([r["node"], w.node_of.get(r["to"], ""), "d"], r["t0"], end) \
                and r["sleep"] + 2.0 <= r["timeout"]
        if not r["ok"] and fine:
            out.append(Violation("failed-while-healthy", f"{what} raised {r['err']}"))
    for m in w.of("migrate"):
        if not m["ok"] and w.healthy([m["node"], "d"], m["t0"], m["t"]):
            out.append(Violation("failed-while-healthy", f"{m['peer']} could not migrate to "
                                 f"{m['address']}: {m['err']}"))
    return out + _check_flushes(w)


def _check_flushes(w: World) -> list[Violation]:
    out: list[Violation] = []
    sent: dict[tuple[str, int, str], list[Record]] = defaultdict(list)
    for r in w.records:
        if r["ev"] in ("send", "group"):
            sent[_key(r)].append(r)
    for key, flushes in _flushes(w).items():
        since = 0.0
        for f in flushes:
            window = [s for s in sent.get(key, ()) if since <= s["t"] <= f["t0"]]
            if f["ok"]:
                since = f["t"]
                continue
            out += _deadline_checks(w, f, f"flush of {key[2]}")
            targets = {w.node_of.get(s.get("to", ""), "") for s in window
                       if s["ev"] == "send"}
            for g in (s for s in window if s["ev"] == "group"):
                targets |= {w.node_of[p] for p in w.node_of if posa.matches(g["pattern"], p)}
            start = min((s["t0"] for s in window), default=f["t0"])
            if w.healthy([key[0], "d", *targets], start, f["t"]):
                out.append(Violation("failed-while-healthy", (
                    f"flush of {key[2]} (node {key[0]} incarnation {key[1]}) raised "
                    f"{f['err']}; it had sent to {sorted(targets)}")))
    return out


def check_executions(w: World) -> list[Violation]:
    runs: dict[tuple[str, int, str, str], int] = defaultdict(int)
    for r in w.of("exec"):
        if r["phase"] == "start":
            runs[(*_key(r), r["rid"])] += 1
    return [Violation("handler-ran-twice", f"{peer} (node {node} incarnation {inc}) ran the "
                      f"handler of {rid} {count} times")
            for (node, inc, peer, rid), count in runs.items() if count > 1]


def check_problems(w: World) -> list[Violation]:
    out = [Violation(r["kind"], r["detail"]) for r in w.of("problem")]
    out += [Violation("command-error", f"{r['node']} incarnation {r['inc']}: {r['cmd']} "
                      f"raised {r['err']}") for r in w.of("error")]
    return out


CHECKS = (check_problems, check_deliveries, check_losses, check_groups, check_calls,
          check_executions)


def check(directory: Path) -> list[Violation]:
    """Every violation the histories in ``directory`` show."""
    world = World(directory)
    return [v for checker in CHECKS for v in checker(world)]


def summarize(violations: list[Violation], examples: int = 3) -> list[str]:
    """One line a kind (how many), then its first ``examples``."""
    kinds: dict[str, list[Violation]] = defaultdict(list)
    for v in violations:
        kinds[v.kind].append(v)
    lines = []
    for kind, found in kinds.items():
        lines.append(f"{kind} ×{len(found)}")
        lines += [f"    {v.detail[:500]}" for v in found[:examples]]
    return lines
