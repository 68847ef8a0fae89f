"""``posa dispatcher``: the dispatcher service, run until SIGTERM.

It holds the name registry (optionally kept in a state file), answers lookups,
federates with peer dispatchers, and stops cleanly: health turns to
"draining", in-flight requests finish within ``--grace``, names are released.
The announcement line is printed only once the signal handlers are in place,
so a supervisor may signal the process as soon as it reads the line.
"""
from __future__ import annotations

import argparse
from typing import Any

from posa import ops
from posa.cli import DEFAULT_DISPATCHER
from posa.cli.keys import add_security_arguments, security_from_args
from posa.cli.options import add_ops_arguments, add_tls_arguments

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa dispatcher``."""
    p = subparsers.add_parser("dispatcher", help="run the dispatcher service (name registry)",
                              description="Run the dispatcher: the network home of the name "
                              "registry. Stops cleanly on SIGTERM or Ctrl-C.")
    p.add_argument("--listen", action="append", metavar="ADDRESS",
                   help=f"address to listen on, repeatable (default {DEFAULT_DISPATCHER})")
    p.add_argument("--peer", action="append", default=[], metavar="ADDRESS",
                   help="a federated dispatcher to ask for names not held here, repeatable")
    p.add_argument("--state", metavar="PATH",
                   help="keep the registry in this file (written atomically) so a "
                   "restart loses no registration")
    p.add_argument("--node", help="this dispatcher's id (default: random)")
    p.add_argument("--lease", type=float, default=10.0,
                   help="lease of the dispatcher's own name, seconds")
    add_security_arguments(p)
    add_tls_arguments(p)
    add_ops_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from posa.dispatch.dispatcher import Dispatcher  # loaded by the one command that runs it
    authenticator, acl = security_from_args(args, "posa/dispatcher")
    dispatcher = Dispatcher(args.listen or [DEFAULT_DISPATCHER], node=args.node,
                            peers=args.peer, state=args.state, lease=args.lease,
                            authenticator=authenticator, acl=acl)
    monitor = ops.Monitor(dispatcher, dispatcher.registry)
    server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
              if args.ops_port is not None else None)
    extra = f" ops on {server.url}" if server is not None else ""
    announce = (f"posa dispatcher {dispatcher.node} listening on "
                f"{' '.join(dispatcher.addresses)}{extra}")
    return ops.serve_until_signalled([dispatcher], grace=args.grace, monitor=monitor,
                                     server=server, ready=lambda: print(announce, flush=True))
