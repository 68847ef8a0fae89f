"""One process of agents, for the multi-process mode (started by ``multi.py``).

    python -m examples.netagents.node --dispatcher ADDR [--seed N] [--listen ADDRESS] ROUTER...
    python -m examples.netagents.node --dispatcher ADDR [--seed N] --take-over ROUTER \\
        --listen zmq+tcp://127.0.0.1:0

It runs the agents of the routers given (or takes one over from the process
running it), a server of ``netmgmt/admin``, and an alert publisher, all on the
dispatcher's registry.  Agents' credentials derive from the secret in the
environment variable ``NETAGENTS_SECRET`` (see ``handover.credential_for``).

Prints ``agent NAME at ADDRESS`` per agent (``took over NAME at ADDRESS, epoch
N`` after a take-over), then ``ready``.  Exits 0 on SIGTERM or SIGINT, once
every agent it ran was handed over to another process, or (with
``--exit-with-stdin``, as the launcher starts it) when its standard input
closes because the launcher is gone.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from posa import RegistryClient
from posa.errors import PosaError

from .admin import AdminService
from .agent import Agent
from .alerts import Alerts
from .handover import credential_for, take_over
from .network import build

__all__ = ["main"]

SECRET_VARIABLE = "NETAGENTS_SECRET"


def _watch_stdin(stop: threading.Event) -> None:
    """Stop when standard input reaches its end: the launcher went away."""
    def watch() -> None:
        try:    # unbuffered: a buffered reader's lock would trouble the exit
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()
    threading.Thread(target=watch, name="netagents-stdin", daemon=True).start()


def serve(args: argparse.Namespace, stop: threading.Event) -> None:
    network = build(args.seed)
    secret = os.environ.get(SECRET_VARIABLE) or secrets.token_hex(16)
    registry = RegistryClient(args.dispatcher)
    alerts = Alerts(registry)
    agents: list[Agent] = []
    admin: AdminService | None = None
    try:
        if args.take_over:
            router = args.take_over
            agents.append(take_over(router, network, registry=registry,
                                    publish=alerts.publish, listen=args.listen,
                                    credential=credential_for(secret, router)))
            peer = agents[0].peer
            print(f"took over {peer.name} at {peer.address}, epoch {peer.epoch}", flush=True)
        for router in args.routers:
            agents.append(Agent(router, network, registry=registry, publish=alerts.publish,
                                listen=args.listen, credential=credential_for(secret, router)))
            print(f"agent {agents[-1].peer.name} at {agents[-1].peer.address}", flush=True)
        admin = AdminService(registry, listen=args.listen)
        print("ready", flush=True)
        while not stop.wait(0.1):
            if all(agent.handed_over.is_set() for agent in agents):
                print("handed over: " + ", ".join(a.peer.name for a in agents), flush=True)
                break
    finally:
        if admin is not None:
            admin.close()
        for agent in agents:            # all stopped before any is closed
            agent.stop()
        for agent in agents:
            agent.close()
        alerts.close()
        registry.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.netagents.node",
                                     description="Run network-management agents in this "
                                     "process, on a posa dispatcher's registry.")
    parser.add_argument("routers", nargs="*", help="routers to run agents for, e.g. site-a/r1")
    parser.add_argument("--dispatcher", required=True, help="e.g. tcp://127.0.0.1:7000")
    parser.add_argument("--seed", type=int, default=1, help="the simulated network (default 1)")
    parser.add_argument("--listen", default="tcp://127.0.0.1:0",
                        help="where the agents listen (default tcp://127.0.0.1:0)")
    parser.add_argument("--take-over", metavar="ROUTER",
                        help="take this router's agent over from the process running it")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop when standard input closes (for a launcher's children)")
    args = parser.parse_args(argv)
    if not args.routers and not args.take_over:
        parser.error("give routers to run, or --take-over ROUTER")
    known = build(args.seed).routers
    unknown = [r for r in [*args.routers, args.take_over] if r and r not in known]
    if unknown:
        parser.error(f"no router {', '.join(unknown)} in the network of seed {args.seed}; "
                     f"its routers: {' '.join(known)}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    if args.exit_with_stdin:
        _watch_stdin(stop)
    try:
        serve(args, stop)
    except PosaError as exc:
        print(f"netagents node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
