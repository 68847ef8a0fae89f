"""The ``posa`` command: run services, and talk to them from the shell.

    posa dispatcher --listen tcp://127.0.0.1:7000      the dispatcher service
    posa names 'netmgmt/**' --dispatcher ADDR          names and where they live
    posa services --dispatcher ADDR                    services and their servers
    posa send NAME JSON --dispatcher ADDR              one-way message to a name
    posa request NAME JSON --dispatcher ADDR           request; prints the reply
    posa channel NAME --dispatcher ADDR                an event channel
    posa queue NAME --store PATH --dispatcher ADDR     a work queue (durable with --store)
    posa worker --queue NAME -- COMMAND ARGS...        a program run per item of a queue
    posa progress QUEUE --dispatcher ADDR              a work queue's progress
    posa keygen KEY-ID [--file FILE]                   a new secret key
    posa gateway --listen http://127.0.0.1:8080        posa over HTTP/JSON

Exit codes: 0 success, 1 a posa error, 2 bad usage, 3 name not found,
4 timeout, 5 unauthorized (refused, or an answer that cannot be verified: the
message names the missing key).  ``--json`` prints machine-readable output.
Every command that talks to posa takes ``--keys FILE``/``--key-id ID``
(``POSA_KEYS``/``POSA_KEY_ID``; ``posa.cli.options``).

One module per command group (``dispatcher``, ``names``, ``keys``, ``channel``,
``queue``, ``worker``, ``gateway``), each with ``add_parser(subparsers)`` that sets ``run`` on its
subcommands; this package builds the parser from them, runs the chosen
command, and maps posa's errors to the exit codes.  The groups are imported
when the parser is built, so importing ``posa.cli`` (or one group) is cheap and
a group may import the defaults from here.  No library module uses argparse.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from posa.errors import NameNotFound, PosaError, Timeout, Unauthorized

__all__ = ["main", "build_parser", "DEFAULT_DISPATCHER"]

DEFAULT_DISPATCHER = "tcp://127.0.0.1:7000"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNAUTHORIZED = 1, 2, 3, 4, 5

# the command groups, in the order ``posa --help`` lists them
_GROUPS = ("posa.cli.dispatcher", "posa.cli.names", "posa.cli.channel", "posa.cli.queue",
           "posa.cli.worker", "posa.cli.keys", "posa.cli.gateway", "posa.cli.view")
# exit code of each error class, most specific first
_EXIT_CODES: tuple[tuple[type[PosaError], int], ...] = (
    (NameNotFound, EXIT_NOT_FOUND), (Timeout, EXIT_TIMEOUT),
    (Unauthorized, EXIT_UNAUTHORIZED), (PosaError, EXIT_ERROR))


def build_parser() -> argparse.ArgumentParser:
    """The ``posa`` parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="posa", description="posa: location-transparent messaging. Run a dispatcher "
        "or an event channel, or talk to peers by name from the shell.",
        epilog="Exit codes: 0 ok, 1 posa error, 2 usage, 3 not found, 4 timeout, "
        "5 unauthorized. Start with: posa dispatcher --listen tcp://127.0.0.1:7000")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _GROUPS:     # imported here: a group may import from posa.cli
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``posa`` command; returns its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except PosaError as exc:
        print(f"posa: {exc}", file=sys.stderr)
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
