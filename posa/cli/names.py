"""``posa names``, ``services``, ``watch``: what is registered, now and as it changes.

Each asks the dispatcher's registry afresh (no cache: a shell command wants what
is registered now).  ``names`` says on stderr when nothing matched, and exits
with 3 for a name (0 for an empty group); ``watch`` prints the names matching a
pattern, then every change to them as it happens (``+`` registered or renewed
with a new epoch or addresses, ``-`` gone), until Ctrl-C or ``--count`` changes.
"""
from __future__ import annotations

import argparse
import queue
import sys
from typing import TYPE_CHECKING, Any

from posa.cli import EXIT_NOT_FOUND
from posa.cli.options import add_client_parser, registry_from_args, to_json, with_authenticator
from posa.cli.values import count
from posa.wire.names import matches, validate_pattern

if TYPE_CHECKING:
    from posa.naming.registration import Registration

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa names``, ``posa services`` and ``posa watch``."""
    p = add_client_parser(subparsers, "names", "list registered names matching a pattern",
                          "posa names 'netmgmt/**' --json")
    p.add_argument("pattern", nargs="?", default="**",
                   help="a name or group pattern such as 'netmgmt/*' or 'netmgmt/**'")
    p.set_defaults(run=with_authenticator(_names))
    p = add_client_parser(subparsers, "services",
                          "list services and the servers that provide them",
                          "posa services --json")
    p.add_argument("pattern", nargs="?", default="**", help="only services matching it")
    p.set_defaults(run=with_authenticator(_services))
    p = add_client_parser(subparsers, "watch",
                          "print the names matching a pattern, then every change to them",
                          "posa watch 'netmgmt/**' --json", budget=False)
    p.add_argument("pattern", nargs="?", default="**", help="a name or group pattern")
    p.add_argument("--count", type=count, default=None, metavar="N",
                   help="exit after N changes (default: until Ctrl-C)")
    p.add_argument("--changes", action="store_true",
                   help="print only changes, not the names registered at the start")
    p.set_defaults(run=with_authenticator(_watch))


def _entry(r: Registration) -> dict[str, Any]:
    return {"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
            "expires_in": round(r.expires_in, 3), "meta": dict(r.meta)}


def _names(args: argparse.Namespace) -> int:
    validate_pattern(args.pattern)
    with registry_from_args(args) as registry:
        found = [r for page in registry.pages(args.pattern) for r in page]  # page by page
    if args.json:
        print(to_json([_entry(r) for r in found]))
    else:
        for r in found:
            print(f"{r.name}\t{' '.join(r.addresses)}\tepoch {r.epoch}\t"
                  f"expires in {r.expires_in:.1f} s")
    if not found:       # said on stderr; an empty group is an answer, a name is not
        hint = "" if "*" in args.pattern else f" (its group: '{args.pattern}/**')"
        print(f"posa: no live name matches {args.pattern!r} at {args.dispatcher}{hint}",
              file=sys.stderr)
    return 0 if found or "*" in args.pattern else EXIT_NOT_FOUND


def _services(args: argparse.Namespace) -> int:
    validate_pattern(args.pattern)
    with registry_from_args(args) as registry:
        services = {service: servers for service, servers in registry.services().items()
                    if matches(args.pattern, service)}
    if args.json:
        print(to_json(services))
    else:
        for service, servers in sorted(services.items()):
            print(f"{service}\t{' '.join(sorted(servers))}")
    if services or args.pattern == "**":
        return 0
    print(f"posa: no service matches {args.pattern!r} at {args.dispatcher}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _show(args: argparse.Namespace, name: str, r: Registration | None) -> None:
    if args.json:
        print(to_json({"change": "+" if r else "-", "name": name,
                       **({"registration": _entry(r)} if r else {})}), flush=True)
    elif r is None:
        print(f"- {name}", flush=True)
    else:
        print(f"+ {name}\t{' '.join(r.addresses)}\tepoch {r.epoch}", flush=True)


def _watch(args: argparse.Namespace) -> int:
    validate_pattern(args.pattern)
    changes: queue.Queue[tuple[str, Registration | None]] = queue.Queue()
    with registry_from_args(args) as registry:
        stop = registry.watch(lambda name, r: changes.put((name, r))
                              if matches(args.pattern, name) else None)
        try:
            if not args.changes:
                for page in registry.pages(args.pattern):
                    for r in page:
                        _show(args, r.name, r)
            print("# watching", args.pattern, file=sys.stderr, flush=True)
            seen = 0
            while args.count is None or seen < args.count:
                name, r = changes.get()
                _show(args, name, r)
                seen += 1
        finally:
            stop()
    return 0
