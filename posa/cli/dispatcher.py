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
from posa.cli.options import (
    add_connection_arguments,
    add_ops_arguments,
    add_security_arguments,
    add_tls_arguments,
    connection_options,
    security_from_args,
)
from posa.cli.values import count, per_second, seconds
from posa.errors import PosaError
from posa.transport.descriptors import raise_descriptor_limit

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
    p.add_argument("--store", metavar="NATS_URL",
                   help="keep the registry in a NATS JetStream key-value bucket, e.g. "
                   "nats://h1:4222,h2:4222,h3:4222, shared by every dispatcher given the "
                   "same store (needs pip install 'posa-messaging[nats]'; docs/scale.md)")
    p.add_argument("--bucket", default="posa-names",
                   help="the key-value bucket of --store (default %(default)s)")
    p.add_argument("--node", help="this dispatcher's id (default: random)")
    p.add_argument("--lease", type=seconds, default=10.0,
                   help="lease of the dispatcher's own name, seconds")
    _add_registry_arguments(p)
    add_security_arguments(p)
    add_tls_arguments(p)
    add_ops_arguments(p)
    add_connection_arguments(p)
    p.set_defaults(run=_run)


def _add_registry_arguments(p: argparse.ArgumentParser) -> None:
    """Registry quotas and reserved names (docs/security.md)."""
    from posa.security import Quotas
    defaults = Quotas()
    g = p.add_argument_group("registry quotas and reserved names (docs/security.md)")
    g.add_argument("--max-names-per-owner", type=count, default=defaults.registry_names_per_owner,
                   metavar="N", help="names one key (or one connection without a key) may "
                   "hold (default %(default)s)")
    g.add_argument("--max-meta-bytes", type=count, default=defaults.registry_meta_bytes,
                   metavar="BYTES", help="packed meta one name may carry (default "
                   "%(default)s, at most 65536)")
    rate = defaults.registry_rate
    g.add_argument("--registration-rate", type=per_second, default=rate.per_second if rate else 0,
                   metavar="PER_SECOND", help="registrations per second per connection, "
                   "bursts of twice as many (default %(default)g; 0: no limit)")
    g.add_argument("--max-names", type=count, default=defaults.registry_names, metavar="N",
                   help="names the registry holds in all (default %(default)s)")
    g.add_argument("--reserved-key", action="append", default=[], metavar="KEY_ID",
                   help="a key that may register names under posa/ (a posa service of "
                   "your own), repeatable; none by default")


def _registry_options(args: argparse.Namespace) -> dict[str, Any]:
    from posa.naming.quotas import check_quotas
    from posa.security import Quotas, Rate
    rate = args.registration_rate
    try:
        quotas = check_quotas(Quotas(
            registry_names_per_owner=args.max_names_per_owner,
            registry_meta_bytes=args.max_meta_bytes, registry_names=args.max_names,
            registry_rate=Rate(rate, max(1.0, 2 * rate)) if rate > 0 else None))
    except ValueError as exc:
        raise PosaError(f"bad registry quota: {exc}") from None
    return {"quotas": quotas, "reserved_keys": args.reserved_key}


def _run(args: argparse.Namespace) -> int:
    from posa.dispatch.dispatcher import Dispatcher  # loaded by the one command that runs it
    authenticator, acl = security_from_args(args, "posa/dispatcher")
    raise_descriptor_limit()
    store = None
    if args.store is not None and args.state is not None:
        raise PosaError("--store and --state exclude each other: the registry lives in "
                        "the NATS bucket or in the state file; drop one")
    if args.store is not None:
        from posa.naming.nats.registry import NatsRegistry
        store = NatsRegistry(args.store, bucket=args.bucket)
    try:
        dispatcher = Dispatcher(args.listen or [DEFAULT_DISPATCHER], node=args.node,
                                peers=args.peer, state=args.state, lease=args.lease,
                                authenticator=authenticator, acl=acl, registry=store,
                                options=connection_options(args),
                                **_registry_options(args))
    except BaseException:
        if store is not None:
            store.close()
        raise
    monitor = ops.Monitor(dispatcher, dispatcher.registry)
    server = (ops.OpsServer(monitor, host=args.ops_host, port=args.ops_port)
              if args.ops_port is not None else None)
    extra = f" ops on {server.url}" if server is not None else ""
    announce = (f"posa dispatcher {dispatcher.node} listening on "
                f"{' '.join(dispatcher.addresses)}{extra}")
    try:
        return ops.serve_until_signalled([dispatcher], grace=args.grace, monitor=monitor,
                                         server=server,
                                         ready=lambda: print(announce, flush=True))
    finally:
        if store is not None:
            store.close()
