"""``posa names``, ``services``, ``send``, ``request``: talk to names from the shell.

Each asks the dispatcher's registry afresh (no cache: a shell command wants
what is registered now) and sends as the anonymous sender, through a forwarder
of its own that is flushed before the command exits, so ``send`` returns only
once the recipient acknowledged the message.  With ``--keys`` (or ``POSA_KEYS``)
every frame is sealed and every answer checked; an authentication failure on
either side raises ``Unauthorized`` at once (exit 5), saying which key is missing.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from posa.cli import EXIT_NOT_FOUND
from posa.cli.options import add_client_parser, authenticator_from_args, json_body, to_json
from posa.delivery.sender import Sender
from posa.naming.registration import resolver

if TYPE_CHECKING:
    from posa.naming.client import RegistryClient

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa names``, ``posa services``, ``posa send`` and ``posa request``."""
    p = add_client_parser(subparsers, "names", "list registered names matching a pattern")
    p.add_argument("pattern", nargs="?", default="**",
                   help="a name or group pattern such as 'netmgmt/*' or 'netmgmt/**'")
    p.set_defaults(run=_run(_names))
    p = add_client_parser(subparsers, "services",
                          "list services and the servers that provide them")
    p.set_defaults(run=_run(_services))
    p = add_client_parser(subparsers, "send", "send a one-way message (JSON body) to a name")
    p.add_argument("name")
    p.add_argument("body", help="the body as JSON, e.g. '{\"op\": \"routes\"}'")
    p.set_defaults(run=_run(_send))
    p = add_client_parser(subparsers, "request",
                          "send a request (JSON body) to a name and print the reply")
    p.add_argument("name")
    p.add_argument("body", help="the body as JSON")
    p.set_defaults(run=_run(_request))


def _registry(args: argparse.Namespace) -> RegistryClient:
    from posa.naming.client import RegistryClient  # only the commands that ask load it
    return RegistryClient(args.dispatcher, timeout=args.timeout, cache=False,
                          authenticator=args.authenticator)


def _run(command: Any) -> Any:
    """``command`` with the authenticator its ``--keys`` ask for made first (one for
    the registry client and the sender), so a bad key file fails before any I/O."""
    def run(args: argparse.Namespace) -> int:
        args.authenticator = authenticator_from_args(args)
        return int(command(args))
    return run


def _names(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        found = [r for page in registry.pages(args.pattern) for r in page]  # page by page
    if args.json:
        print(to_json([{"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
                        "expires_in": round(r.expires_in, 3), "meta": dict(r.meta)}
                       for r in found]))
    else:
        for r in found:
            print(f"{r.name}\t{' '.join(r.addresses)}\tepoch {r.epoch}\t"
                  f"expires in {r.expires_in:.1f} s")
    return 0 if found or args.pattern != args.pattern.strip("*/") else EXIT_NOT_FOUND


def _services(args: argparse.Namespace) -> int:
    with _registry(args) as registry:
        services = registry.services()
    if args.json:
        print(to_json(services))
    else:
        for service, servers in sorted(services.items()):
            print(f"{service}\t{' '.join(sorted(servers))}")
    return 0


def _send(args: argparse.Namespace) -> int:
    body = json_body(args.body)
    with _registry(args) as registry:
        sender = Sender("", resolve=resolver(registry), authenticator=args.authenticator)
        try:
            sender.send(args.name, body, timeout=args.timeout)
            sender.flush(args.timeout)
        finally:
            sender.close()
    if args.json:
        print(to_json({"sent": args.name}))
    return 0


def _request(args: argparse.Namespace) -> int:
    body = json_body(args.body)
    with _registry(args) as registry:
        sender = Sender("", resolve=resolver(registry), authenticator=args.authenticator)
        try:
            reply = sender.request(args.name, body, timeout=args.timeout)
        finally:
            sender.close()
    print(to_json(reply.body) if args.json else
          (reply.body if isinstance(reply.body, str) else to_json(reply.body)))
    return 0
