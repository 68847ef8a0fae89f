"""``python -m posa.gateway.view``: the web view of a system, on a server of its own.

    python -m posa.gateway.view --dispatcher tcp://127.0.0.1:5555 --port 8080 \\
        --channel events/orders --queue jobs/resize

It prints ``web view at http://HOST:PORT/view/`` once it listens, and stops
on SIGTERM or Ctrl-C. ``--keys``/``--key-id`` (or ``POSA_KEYS``) as for every
``posa`` command. ``posa gateway`` serves the same page at ``/view/``.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from posa.cli import DEFAULT_DISPATCHER
from posa.cli.options import add_security_arguments, authenticator_from_args
from posa.naming.client import RegistryClient
from posa.ops.shutdown import serve_until_signalled
from posa.peer import Peer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m posa.gateway.view",
        description="Serve the live web view of a posa system: names, services, "
        "channels, queues, migrations and failovers, in a browser.")
    parser.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="ADDRESS",
                        help=f"the dispatcher whose names to show (default {DEFAULT_DISPATCHER})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080,
                        help="the port (default 8080; 0 picks one)")
    parser.add_argument("--channel", action="append", default=[], metavar="NAME",
                        help="an event channel whose rates and drops to show (repeatable)")
    parser.add_argument("--queue", action="append", default=[], metavar="NAME",
                        help="a work queue whose depth and age to show (repeatable)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between readings of leases and numbers (default 1)")
    add_security_arguments(parser, acl=False)
    args = parser.parse_args(argv)
    from posa.gateway.view.server import serve

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


if __name__ == "__main__":
    sys.exit(main())
