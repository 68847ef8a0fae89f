"""One process of a chaos scenario: ``python -m tests.chaos.role --node JSON ...``.

A role uses posa's public API only, as an application would. It prints ``READY``
once its peers (or its server, client) are registered, then reads commands from
stdin, one JSON object a line, and prints ``DONE <id>`` when each is finished.
Each peer runs its commands on a thread of its own (one sending thread per peer:
posa's order holds per sending thread), migrations run on a control thread (so a
receiver moves while its own peer is busy). Everything it does and sees goes to
its history (``tests/chaos/history.py``). End of stdin (the runner is gone) ends
the process at once, so no role outlives its runner.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import runpy
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import posa
from tests.chaos.history import History
from tests.chaos.scenario import LEASE

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


class Context:
    """What every part of one role process shares."""

    def __init__(self, args: argparse.Namespace, node: dict[str, Any]) -> None:
        self.dir = Path(args.dir)
        self.node, self.inc, self.dispatcher = node, args.inc, args.dispatcher
        self.name = node["name"]
        self.hist = History(self.dir / f"{self.name}-{self.inc}.jsonl", node=self.name,
                            inc=self.inc, pid=os.getpid())
        self._addresses = 0

    def address(self, transport: str, peer: str) -> str:
        """A fresh listen address on ``transport`` (ipc paths and inproc names unique)."""
        self._addresses += 1
        tag = f"{self.name}-{self.inc}-{self._addresses}"
        if transport == "zmq+ipc":
            return f"zmq+ipc://{self.dir}/{tag}.sock"
        if transport == "inproc":
            return f"inproc://{peer.replace('/', '-')}-{tag}"
        if transport == "nats":     # the cluster tests/test_nats_transport_chaos.py runs
            return os.environ["POSA_CHAOS_NATS"]
        return f"{transport}://127.0.0.1:0"

    def timed(self, ev: str, call: Callable[[], Any], timeout: float,
              **fields: Any) -> tuple[bool, Any]:
        """Run ``call`` and record its outcome, how long it took and how late it
        returned against ``timeout`` (negative: early)."""
        t0, start = time.time(), time.monotonic()
        try:
            result = call()
        except Exception as exc:
            self.hist.record(ev, t0=t0, timeout=timeout, ok=False, err=describe(exc),
                             late=time.monotonic() - start - timeout, **fields)
            return False, exc
        self.hist.record(ev, t0=t0, timeout=timeout, ok=True,
                         late=time.monotonic() - start - timeout,
                         result=result if isinstance(result, (int, str, type(None))) else None,
                         **fields)
        return True, result


class Answering:
    """Records what arrives; answers requests (slow ones from a thread)."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.peer: Any = None

    def handle(self, msg: posa.Message) -> Any:
        body = msg.body
        if msg.kind != posa.Kind.REQUEST:
            self.ctx.hist.record("deliver", peer=self.name, id=body["id"], src=body["src"],
                                 sinc=body["sinc"], seq=body["seq"], sender=msg.sender,
                                 group=body.get("group", False))
            return None
        answer = self.execute_start(body)
        if body["sleep"] > 0:
            threading.Thread(target=self._slow, args=(msg, body, answer), daemon=True).start()
            return posa.DEFERRED
        self.ctx.hist.record("exec", peer=self.name, rid=body["rid"], phase="end")
        return answer

    def execute_start(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ctx.hist.record("exec", peer=self.name, rid=body["rid"], phase="start",
                             sleep=body["sleep"])
        return {"rid": body["rid"], "by": self.name, "inc": self.ctx.inc}

    def _slow(self, msg: posa.Message, body: dict[str, Any], answer: Any) -> None:
        time.sleep(body["sleep"])          # the slow handler's work, not a synchronisation
        self.ctx.hist.record("exec", peer=self.name, rid=body["rid"], phase="end")
        try:
            self.peer.reply(msg, answer)
        except posa.PosaError as exc:
            self.ctx.hist.record("reply-failed", peer=self.name, rid=body["rid"],
                                 err=describe(exc))


class PeerRole(Answering):
    """A named peer: receives (by handler or by an inbox reader thread) and sends."""

    def __init__(self, ctx: Context, spec: dict[str, Any], registry: Any) -> None:
        super().__init__(ctx, spec["name"])
        self.mode = spec["mode"]
        self.seq = self.requests = 0
        self.peer = posa.Peer(self.name, registry=registry,
                              listen=ctx.address(spec["transport"], self.name),
                              credential=f"chaos-{self.name}", lease=LEASE,
                              handler=self.handle if self.mode == "handler" else None)
        if self.mode == "inbox":
            threading.Thread(target=self._read, daemon=True, name="inbox").start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.peer.receive()
            except posa.PosaError:
                return                      # closed
            result = self.handle(msg)
            if msg.kind == posa.Kind.REQUEST and result is not posa.DEFERRED:
                try:
                    self.peer.reply(msg, result)
                except posa.PosaError as exc:
                    self.ctx.hist.record("reply-failed", peer=self.name, err=describe(exc))

    def _message(self, group: bool = False) -> dict[str, Any]:
        self.seq += 1
        return {"id": f"{self.name}#{self.ctx.inc}#{self.seq}", "src": self.name,
                "sinc": self.ctx.inc, "seq": self.seq, "group": group}

    def send(self, cmd: dict[str, Any]) -> None:
        to, timeout = cmd["to"], cmd["timeout"]
        for _ in range(cmd["n"]):
            body = self._message()
            self.ctx.timed("send", partial(self.peer.send, to, body, timeout=timeout),
                           timeout, peer=self.name, to=to, id=body["id"], seq=body["seq"])
            if cmd.get("pace"):
                time.sleep(cmd["pace"])     # the burst's rate, not a synchronisation
        if cmd.get("flush"):
            self.flush({"timeout": cmd["flush"]})

    def group(self, cmd: dict[str, Any]) -> None:
        for _ in range(cmd["n"]):
            body = self._message(group=True)
            self.ctx.timed("group", partial(self.peer.send, cmd["pattern"], body,
                                                   timeout=cmd["timeout"]),
                           cmd["timeout"], peer=self.name, pattern=cmd["pattern"],
                           id=body["id"], seq=body["seq"])
        self.flush({"timeout": cmd["flush"]})

    def flush(self, cmd: dict[str, Any]) -> None:
        self.ctx.timed("flush", lambda: self.peer.flush(cmd["timeout"]), cmd["timeout"],
                       peer=self.name, upto=self.seq)

    def request(self, cmd: dict[str, Any]) -> None:
        for sleep in cmd["sleeps"]:
            self.requests += 1
            rid = f"{self.name}#{self.ctx.inc}#r{self.requests}"
            ok, reply = self.ctx.timed(
                "request", partial(self.peer.request, cmd["to"], {"rid": rid, "sleep": sleep},
                                   timeout=cmd["timeout"]),
                cmd["timeout"], peer=self.name, to=cmd["to"], rid=rid, sleep=sleep,
                via="peer")
            if ok:
                self.ctx.hist.record("reply", peer=self.name, rid=rid, body=reply)

    def migrate(self, cmd: dict[str, Any]) -> None:
        address = self.ctx.address(cmd["transport"], self.name)
        self.ctx.timed("migrate", lambda: self.peer.migrate(address, grace=cmd["grace"]),
                       10.0, peer=self.name, address=address)

    def close(self) -> None:
        self.peer.close()


class ServerRole:
    """A posa.Server whose handler records each execution and takes ``sleep`` s."""

    def __init__(self, ctx: Context, spec: dict[str, Any]) -> None:
        self.ctx = ctx
        self.server = posa.Server(spec["service"], self.handle, dispatcher=ctx.dispatcher,
                                  listen=ctx.address(spec["transport"], spec["service"]),
                                  workers=spec["workers"], lease=LEASE)
        self.name = self.server.name
        ctx.hist.record("server", server=self.name, workers=spec["workers"])

    def handle(self, body: dict[str, Any]) -> Any:
        self.ctx.hist.record("exec", peer=self.name, rid=body["rid"], phase="start",
                             sleep=body["sleep"])
        if body["sleep"] > 0:
            time.sleep(body["sleep"])      # the slow handler's work, not a synchronisation
        self.ctx.hist.record("exec", peer=self.name, rid=body["rid"], phase="end")
        return {"rid": body["rid"], "by": self.name, "inc": self.ctx.inc}

    def close(self) -> None:
        self.server.close()


class ClientRole:
    """A posa.Client calling the service, one call after another."""

    def __init__(self, ctx: Context, spec: dict[str, Any]) -> None:
        self.ctx, self.name = ctx, ctx.name
        self.client = posa.Client(dispatcher=ctx.dispatcher,
                                  attempt_timeout=spec["attempt_timeout"])
        self.calls = 0

    def call(self, cmd: dict[str, Any]) -> None:
        for sleep in cmd["sleeps"]:
            self.calls += 1
            rid = f"{self.name}#{self.ctx.inc}#r{self.calls}"
            ok, reply = self.ctx.timed(
                "request", partial(self.client.call, cmd["service"], {"rid": rid, "sleep": sleep},
                                   timeout=cmd["timeout"]),
                cmd["timeout"], peer=self.name, to=cmd["service"], rid=rid, sleep=sleep,
                via="client")
            if ok:
                self.ctx.hist.record("reply", peer=self.name, rid=rid, body=reply)

    def close(self) -> None:
        self.client.close()


def _actor(ctx: Context, target: Any, commands: queue.Queue[dict[str, Any]]) -> None:
    """Run ``target``'s commands one after another on this thread."""
    while True:
        cmd = commands.get()
        try:
            getattr(target, cmd["op"])(cmd)
        except Exception as exc:
            ctx.hist.record("error", cmd=cmd, err=describe(exc),
                            trace=traceback.format_exc()[-2000:])
        say(f"DONE {cmd['id']}")


def _dispatcher(args: argparse.Namespace) -> None:
    """``posa dispatcher`` itself, as a user runs it (python -m posa dispatcher)."""
    sys.argv = ["posa", "dispatcher", "--listen", args.dispatcher,
                "--state", str(Path(args.dir) / "dispatcher.state")]
    threading.Thread(target=_exit_on_eof, daemon=True).start()
    runpy.run_module("posa", run_name="__main__", alter_sys=True)


def _exit_on_eof() -> None:
    while sys.stdin.readline():
        pass
    os._exit(0)


def _start(ctx: Context) -> tuple[dict[str, Any], list[Any], Any]:
    """The node's parts: name -> the object that runs commands; what to close."""
    node = ctx.node
    if node["kind"] == "server":
        server = ServerRole(ctx, node)
        return {}, [server], None
    if node["kind"] == "client":
        client = ClientRole(ctx, node)
        return {ctx.name: client}, [client], None
    registry = posa.RegistryClient(ctx.dispatcher)
    peers = [PeerRole(ctx, spec, registry) for spec in node["peers"]]
    return {p.name: p for p in peers}, peers, registry


def _die_with_parent() -> None:
    """SIGKILL this process when the runner dies, even while it is SIGSTOPped (where
    it could not notice the end of its stdin). Linux only; elsewhere stdin suffices."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)           # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        os._exit(2)                             # the runner died before prctl


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.role")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--node", required=True, help="the node's spec, JSON")
    parser.add_argument("--inc", type=int, required=True, help="incarnation, from 1")
    parser.add_argument("--dispatcher", required=True)
    args = parser.parse_args(argv)
    node = json.loads(args.node)
    if node["kind"] == "dispatcher":
        _dispatcher(args)
        return 0
    ctx = Context(args, node)
    ctx.hist.record("start", kind=node["kind"],
                    peers=[{"name": p["name"], "mode": p["mode"]} for p in node.get("peers", [])])
    targets, parts, registry = _start(ctx)
    queues: dict[str, queue.Queue[dict[str, Any]]] = {}
    for name, target in [*targets.items(), ("control", None)]:
        queues[name] = queue.Queue()
        threading.Thread(target=_actor, args=(ctx, target or _Control(targets), queues[name]),
                         daemon=True, name=f"actor-{name}").start()
    ctx.hist.record("ready")
    say("READY")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        queues["control" if cmd["op"] == "migrate" else cmd.get("peer", ctx.name)].put(cmd)
    else:
        os._exit(2)                         # the runner is gone: leave at once
    for part in parts:
        part.close()
    if registry is not None:
        registry.close()
    ctx.hist.record("stop")
    say("BYE")
    return 0


class _Control:
    """Runs migrations beside the peers' own command threads."""

    def __init__(self, targets: dict[str, Any]) -> None:
        self.targets = targets

    def migrate(self, cmd: dict[str, Any]) -> None:
        self.targets[cmd["peer"]].migrate(cmd)


if __name__ == "__main__":
    sys.exit(main())
