"""The ``posa`` command: run services, and talk to them from the shell.

    posa dispatcher --listen tcp://127.0.0.1:7000      the dispatcher service
    posa names 'netmgmt/**' --dispatcher ADDR          names and where they live
    posa services --dispatcher ADDR                    services and their servers
    posa send NAME JSON --dispatcher ADDR              one-way message to a name
    posa request NAME JSON --dispatcher ADDR           request; prints the reply

Exit codes: 0 success, 1 a posa error, 2 bad usage, 3 name not found,
4 timeout, 5 unauthorized.  ``--json`` prints machine-readable output.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from posa.errors import NameNotFound, PosaError, Timeout, Unauthorized

__all__ = ["main"]

DEFAULT_DISPATCHER = "tcp://127.0.0.1:7000"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNAUTHORIZED = 1, 2, 3, 4, 5

# subcommands contributed by other modules: (module, function that adds the parser)
_PLUGINS = ("posa.channel.eventchannel", "posa.work.queue", "posa.security")


def _to_json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.decode("utf-8", "replace")
                      if isinstance(v, (bytes, bytearray)) else repr(v), sort_keys=True)


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"posa: the message body must be JSON ({exc}); for a string, "
                         "quote it: '\"hello\"'") from None


def _cmd_dispatcher(args: argparse.Namespace) -> int:
    from posa import ops, security
    from posa.dispatch.dispatcher import Dispatcher
    authenticator, acl = security.from_args(args, "posa/dispatcher")
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


def _registry(args: argparse.Namespace) -> Any:
    from posa.naming.client import RegistryClient
    return RegistryClient(args.dispatcher, timeout=args.timeout, cache=False)


def _cmd_names(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        found = registry.names(args.pattern)
    if args.json:
        print(_to_json([{"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
                         "expires_in": round(r.expires_in, 3), "meta": dict(r.meta)}
                        for r in found]))
    else:
        for r in found:
            print(f"{r.name}\t{' '.join(r.addresses)}\tepoch {r.epoch}\t"
                  f"expires in {r.expires_in:.1f} s")
    return 0 if found or args.pattern != args.pattern.strip("*/") else EXIT_NOT_FOUND


def _cmd_services(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        services = registry.services()
    if args.json:
        print(_to_json(services))
    else:
        for service, servers in sorted(services.items()):
            print(f"{service}\t{' '.join(sorted(servers))}")
    return 0


def _sender(args: argparse.Namespace, registry: Any) -> Any:
    from posa.delivery.forwarder import Sender
    from posa.naming.registry import resolver
    return Sender("", resolve=resolver(registry))


def _cmd_send(args: argparse.Namespace) -> int:
    body = _body(args.body)
    with _registry(args) as registry:
        sender = _sender(args, registry)
        try:
            sender.send(args.name, body, timeout=args.timeout)
            sender.flush(args.timeout)
        finally:
            sender.close()
    if args.json:
        print(_to_json({"sent": args.name}))
    return 0


def _cmd_request(args: argparse.Namespace) -> int:
    body = _body(args.body)
    with _registry(args) as registry:
        sender = _sender(args, registry)
        try:
            reply = sender.request(args.name, body, timeout=args.timeout)
        finally:
            sender.close()
    print(_to_json(reply.body) if args.json else
          (reply.body if isinstance(reply.body, str) else _to_json(reply.body)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posa", description="posa: location-transparent messaging. Run a dispatcher "
        "or an event channel, or talk to peers by name from the shell.",
        epilog="Exit codes: 0 ok, 1 posa error, 2 usage, 3 not found, 4 timeout, "
        "5 unauthorized. Start with: posa dispatcher --listen tcp://127.0.0.1:7000")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("dispatcher", help="run the dispatcher service (name registry)",
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
    from posa import ops, security
    security.add_arguments(p)
    ops.add_arguments(p)
    p.set_defaults(run=_cmd_dispatcher)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("--dispatcher", default=DEFAULT_DISPATCHER, metavar="ADDRESS",
                       help=f"the dispatcher to ask (default {DEFAULT_DISPATCHER})")
        q.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        return q

    p = client("names", "list registered names matching a pattern")
    p.add_argument("pattern", nargs="?", default="**",
                   help="a name or group pattern such as 'netmgmt/*' or 'netmgmt/**'")
    p.set_defaults(run=_cmd_names)
    p = client("services", "list services and the servers that provide them")
    p.set_defaults(run=_cmd_services)
    p = client("send", "send a one-way message (JSON body) to a name")
    p.add_argument("name")
    p.add_argument("body", help="the body as JSON, e.g. '{\"op\": \"routes\"}'")
    p.set_defaults(run=_cmd_send)
    p = client("request", "send a request (JSON body) to a name and print the reply")
    p.add_argument("name")
    p.add_argument("body", help="the body as JSON")
    p.set_defaults(run=_cmd_request)

    for module_name in _PLUGINS:
        try:
            module = __import__(module_name, fromlist=["add_parser"])
        except ImportError:
            continue
        add = getattr(module, "add_parser", None)
        if add is not None:
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except NameNotFound as exc:
        print(f"posa: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except Timeout as exc:
        print(f"posa: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except Unauthorized as exc:
        print(f"posa: {exc}", file=sys.stderr)
        return EXIT_UNAUTHORIZED
    except PosaError as exc:
        print(f"posa: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
