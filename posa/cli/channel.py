"""``posa channel NAME``: run an event channel as a service of its own.

The channel (``posa.channel.service.EventChannel``) registers NAME with the
dispatcher and runs until SIGTERM or SIGINT; it prints ``channel NAME at
ADDRESS`` once it is ready. The signal handlers are in place before that line,
so a signal sent as soon as it appears is never missed. On a signal the
channel stops accepting, waits (up to ``--grace``) while events it accepted
are undelivered, delivers what is still buffered (up to 2 s), unregisters its
name and the command exits with 0. With ``--store PATH`` its history (and
what it acknowledged and did not number yet) survives any stop, a SIGKILL
included; ``--ops-port`` serves /health and /metrics. With ``--keys`` (or
``POSA_KEYS``) it seals with the most specific key for NAME and checks every
frame (its upstream subscriptions do not yet).
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from posa.channel.protocol import POLICIES
from posa.cli.options import (
    add_dispatcher_argument,
    add_ops_arguments,
    add_security_arguments,
    add_tls_arguments,
    authenticator_from_args,
)
from posa.cli.values import natural, seconds

if TYPE_CHECKING:
    from posa.channel.store import HistoryStore
    from posa.naming.registration import Registry
    from posa.security import HmacAuthenticator

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add the ``channel`` sub-command to a ``posa`` command's subparsers."""
    parser = subparsers.add_parser(
        "channel", help="run an event channel",
        description="Run the event channel NAME until SIGTERM or SIGINT.")
    parser.add_argument("name", help="the channel's name, e.g. events/netmgmt")
    add_dispatcher_argument(parser)
    parser.add_argument("--listen", default="zmq+tcp://127.0.0.1:0",
                        help="where to receive (default zmq+tcp://127.0.0.1:0)")
    parser.add_argument("--history", type=natural, default=10000,
                        help="events kept for replay (default 10000)")
    parser.add_argument("--history-bytes", type=natural, default=None, metavar="BYTES",
                        help="keep at most this many bytes of history (default: no bound)")
    parser.add_argument("--history-age", type=seconds, default=None, metavar="SECONDS",
                        help="forget history older than this (default: never)")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="keep the history in this SQLite file, so that it and the "
                             "seqs survive a restart (default: memory only)")
    parser.add_argument("--store-sync", default="normal", choices=("normal", "full"),
                        help="normal: a commit survives the process's crash; full: "
                             "also the machine's (an fsync per commit; default normal)")
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
    add_tls_arguments(parser)
    add_ops_arguments(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Run the channel until SIGTERM/SIGINT; the exit code (0)."""
    from posa.channel.store import SqliteStore  # loaded when the command runs
    from posa.naming.client import RegistryClient
    from posa.transport.descriptors import raise_descriptor_limit
    if args.history < 0 or (args.history_bytes is not None and args.history_bytes < 0) \
            or (args.history_age is not None and args.history_age <= 0):
        raise SystemExit("posa channel: --history and --history-bytes must be >= 0, "
                         "--history-age > 0 seconds")
    raise_descriptor_limit()
    try:
        store = SqliteStore(args.store, synchronous=args.store_sync) \
            if args.store is not None else None
    except ValueError as exc:
        raise SystemExit(f"posa channel: {exc}") from None
    authenticator = authenticator_from_args(args, args.name)
    registry = RegistryClient(args.dispatcher, authenticator=authenticator)
    try:
        return _serve(args, registry, store, authenticator)
    finally:
        registry.close()


def _serve(args: argparse.Namespace, registry: Registry, store: HistoryStore | None,
           authenticator: HmacAuthenticator | None) -> int:
    from posa import ops
    from posa.channel.service import EventChannel
    channel = EventChannel(args.name, registry=registry, listen=args.listen,
                           history=args.history, history_bytes=args.history_bytes,
                           history_age=args.history_age, store=store,
                           credential=args.credential, upstream=args.upstream,
                           upstream_topics=args.upstream_topic or [""],
                           upstream_filter=args.upstream_filter,
                           upstream_policy=args.upstream_policy,
                           authenticator=authenticator)
    monitor = ops.Monitor(channel)
    server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
              if args.ops_port is not None else None)
    extra = f" ops on {server.url}" if server is not None else ""
    announce = f"channel {channel.name} at {channel.address}{extra}"
    return ops.serve_until_signalled([channel], grace=args.grace, monitor=monitor,
                                     server=server, ready=lambda: print(announce, flush=True))
