"""``posa channel NAME``: run an event channel as a service of its own.

The channel (``posa.channel.service.EventChannel``) registers NAME with the
dispatcher and runs until SIGTERM or SIGINT; it prints ``channel NAME at
ADDRESS`` once it is ready. The signal handlers are in place before that line,
so a signal sent as soon as it appears is never missed; on a signal the channel
delivers what it buffered (up to 2 s), unregisters its name and the command
exits with 0.  With ``--keys`` (or ``POSA_KEYS``) it seals with the most specific
key for NAME and checks every frame (its upstream subscriptions do not yet).
"""
from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from posa.channel.protocol import POLICIES
from posa.cli.options import add_security_arguments, authenticator_from_args

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add the ``channel`` sub-command to a ``posa`` command's subparsers."""
    from posa.cli import DEFAULT_DISPATCHER  # the command's defaults live there
    parser = subparsers.add_parser(
        "channel", help="run an event channel",
        description="Run the event channel NAME until SIGTERM or SIGINT.")
    parser.add_argument("name", help="the channel's name, e.g. events/netmgmt")
    parser.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="ADDRESS",
                        help=f"the dispatcher's address (default {DEFAULT_DISPATCHER})")
    parser.add_argument("--listen", default="zmq+tcp://127.0.0.1:0",
                        help="where to receive (default zmq+tcp://127.0.0.1:0)")
    parser.add_argument("--history", type=int, default=10000,
                        help="events kept for replay (default 10000)")
    parser.add_argument("--credential", default=None,
                        help="token owning the name; reuse it to restart in place")
    parser.add_argument("--upstream", action="append", default=[],
                        help="a channel to subscribe to (repeatable)")
    parser.add_argument("--upstream-topic", action="append", default=None,
                        help="topic prefix taken from upstream (repeatable; default all)")
    parser.add_argument("--upstream-filter", default=None, type=json.loads,
                        help='filter for upstream events, JSON, e.g. '
                             '\'{"field": "load", "op": ">", "value": 0.8}\'')
    parser.add_argument("--upstream-policy", default="drop-oldest", choices=POLICIES)
    add_security_arguments(parser, acl=False)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Run the channel until SIGTERM/SIGINT; the exit code (0)."""
    from posa.channel.service import EventChannel  # loaded when the command runs
    from posa.naming.client import RegistryClient
    authenticator = authenticator_from_args(args, args.name)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    registry = RegistryClient(args.dispatcher, authenticator=authenticator)
    try:
        channel = EventChannel(args.name, registry=registry, listen=args.listen,
                               history=args.history, credential=args.credential,
                               upstream=args.upstream,
                               upstream_topics=args.upstream_topic or [""],
                               upstream_filter=args.upstream_filter,
                               upstream_policy=args.upstream_policy,
                               authenticator=authenticator)
        print(f"channel {channel.name} at {channel.address}", flush=True)
        while not stop.wait(0.5):
            pass
        channel.close()
    finally:
        registry.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
