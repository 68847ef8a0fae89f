"""``posa gather``: one request to a group or a service's servers, the answers gathered.

    posa gather 'calc/*' '{"x": 2}' --quorum 2 --timeout 3 --json

Asks every member NAME stands for (a group pattern's peers, a service's
servers, or the one peer of that name) at once and prints what came back once
``--quorum`` members answered (default: all) or at ``--timeout``: each answer
by member, then the members that did not answer and why. Exit 0 when the
quorum was reached, 4 (timeout) when it was not — the partial answers are
printed either way.
"""
from __future__ import annotations

import argparse
from typing import Any

from posa.cli import EXIT_TIMEOUT
from posa.cli.options import add_client_parser, authenticator_from_args, json_body, to_json
from posa.cli.values import count

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa gather``."""
    p = add_client_parser(subparsers, "gather", "send a request (JSON body) to every member "
                          "of a group or service and print the answers gathered")
    p.add_argument("name", help="a group pattern such as 'calc/*', a service, or a name")
    p.add_argument("body", help="the body as JSON")
    p.add_argument("--quorum", type=count, default=None, metavar="N",
                   help="stop once N members answered (default: every member)")
    p.set_defaults(run=_gather)


def _gather(args: argparse.Namespace) -> int:
    from posa.naming.client import RegistryClient  # only this command loads them
    from posa.work.gather import gather
    body = json_body(args.body)
    authenticator = authenticator_from_args(args)
    with RegistryClient(args.dispatcher, timeout=args.timeout, cache=False,
                        authenticator=authenticator) as registry:
        try:
            found = gather(args.name, body, registry=registry, quorum=args.quorum,
                           timeout=args.timeout, authenticator=authenticator)
        except ValueError as exc:           # a quorum larger than the group
            raise SystemExit(f"posa gather: {exc}") from None
    if args.json:
        print(to_json(found.as_dict()))
    else:
        for member, answer in found.answers.items():
            print(f"{member}: {answer if isinstance(answer, str) else to_json(answer)}")
        for member in found.missing:
            why = found.errors.get(member)
            print(f"{member}: no answer" + (f" ({why})" if why else ""))
    return 0 if found.reached else EXIT_TIMEOUT
