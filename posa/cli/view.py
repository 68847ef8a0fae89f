"""``posa view``: the live web view of a system, on a server of its own (docs/web.md).

    posa view --dispatcher tcp://127.0.0.1:7000 --port 8080 \\
        --channel events/orders --queue jobs/resize

prints ``web view at http://HOST:PORT/view/`` once it listens, and stops on
SIGTERM or Ctrl-C. ``python -m posa.gateway.view`` is the same command.
Needs the ``gateway`` extra (aiohttp), loaded only when the command runs.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from posa.cli.options import (
    add_dispatcher_argument,
    add_security_arguments,
    authenticator_from_args,
)
from posa.cli.values import port, seconds

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add the ``view`` sub-command to a ``posa`` command's subparsers."""
    parser = subparsers.add_parser(
        "view", help="serve the live web view of a system",
        description="Serve the live web view of a posa system in a browser: names, "
        "services, channels, queues, migrations and failovers (docs/web.md).")
    add_dispatcher_argument(parser)     # flag, $POSA_DISPATCHER, context, default
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port, default=8080,
                        help="the port (default 8080; 0 picks one)")
    parser.add_argument("--channel", action="append", default=[], metavar="NAME",
                        help="an event channel whose rates and drops to show (repeatable)")
    parser.add_argument("--queue", action="append", default=[], metavar="NAME",
                        help="a work queue whose depth and age to show (repeatable)")
    parser.add_argument("--interval", type=seconds, default=1.0, metavar="SECONDS",
                        help="seconds between readings of leases and numbers (default 1)")
    add_security_arguments(parser, acl=False)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; the exit code (0)."""
    try:        # aiohttp: loaded when the command runs
        from posa.gateway.view.server import serve
    except ImportError as exc:
        raise SystemExit(f"posa view needs aiohttp ({exc}): pip install 'posa[gateway]'"
                         ) from None
    from posa.naming.client import RegistryClient
    from posa.ops.shutdown import serve_until_signalled
    from posa.peer import Peer

    name = f"view/{os.uname().nodename}/{os.getpid()}".replace(".", "-")
    auth = authenticator_from_args(args, name)
    registry = RegistryClient(args.dispatcher, cache=False, authenticator=auth)
    peer = Peer(name, registry=registry, authenticator=auth) \
        if args.channel or args.queue else None
    server = serve(registry=registry, host=args.host, port=args.port, peer=peer,
                   channels=args.channel, queues=args.queue, interval=args.interval)
    print(f"web view at {server.url}/view/", flush=True)
    closeables = [server, *([peer] if peer is not None else []), registry]
    return serve_until_signalled(closeables, grace=1.0)
