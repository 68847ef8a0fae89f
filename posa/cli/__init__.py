"""The ``posa`` command: run services, and talk to them from the shell.

    posa dispatcher --listen tcp://127.0.0.1:7000      the dispatcher service
    posa names 'netmgmt/**'                            names and where they live
    posa services                                      services and their servers
    posa send NAME|GROUP JSON                          one-way message to a name or a group
    posa request NAME JSON                             request; prints the reply
    posa call SERVICE JSON                             a service call (any of its servers)
    posa reply NAME [-- COMMAND]                       answer requests from the shell
    posa gather NAME JSON --quorum N                   request to a group; the answers
    posa ping NAME                                     round-trip times
    posa pub CHANNEL TOPIC JSON / posa sub CHANNEL     publish to / tail an event channel
    posa watch PATTERN / posa top                      registrations as they change / a live view
    posa channel NAME / queue NAME / worker ...        an event channel, a work queue, a worker
    posa autoscale --queue NAME --max N -- COMMAND     worker processes scaled to the backlog
    posa context add|use|ls / posa completion bash     settings by name / shell completion
    posa gateway --listen http://127.0.0.1:8080        posa over HTTP/JSON
    posa view --dispatcher ADDR                        a live web view of a system

Exit codes: one table, ``EXITS`` (docs/cli.md prints it; a test walks it).
Settings: flag > environment > context > default (``posa.cli.settings``).
A one-shot command (``budget`` set on its parser) runs whole within
``--timeout``: every request it makes gets the time left
(``posa.delivery.budget``), and the process exits by the deadline.

One module per command group, each with ``add_parser(subparsers)`` that sets
``run`` on its subcommands; this package builds the parser from them, runs the
chosen command, and maps posa's errors to the exit codes.  The groups are
imported when the parser is built, so importing ``posa.cli`` (or one group) is
cheap and a group may import the defaults from here.  No library module uses
argparse.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import sys
import time
from collections.abc import Sequence

from posa.errors import NameNotFound, PartialDelivery, PosaError, Timeout, Unauthorized

__all__ = ["main", "build_parser", "DEFAULT_DISPATCHER", "EXITS"]

DEFAULT_DISPATCHER = "tcp://127.0.0.1:7000"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_UNAUTHORIZED, EXIT_PARTIAL = 5, 6
EXIT_INTERRUPTED = 130      # a one-shot command cut short by Ctrl-C, as a shell's programs
_INTERRUPTED_LINGER = 1.0   # s closed connections may linger after a Ctrl-C
# the one table of exit codes: docs/cli.md shows it, tests/test_cli_exits.py walks it
EXITS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "a posa error: a protocol error, a bad key or contexts file, the far "
                 "side refused the request or its handler failed"),
    (EXIT_USAGE, "bad usage: an unknown option, an option's value out of range (the "
                 "message names the option and what it takes), a body that is not JSON, "
                 "or a message the recipient cannot take (`send` to an event channel)"),
    (EXIT_NOT_FOUND, "not found: no live name, service, group member or context matches "
                     "(the message says what matched nothing)"),
    (EXIT_TIMEOUT, "timeout: the far side did not answer in time; a one-shot command "
                   "ends within `--timeout` (never an authentication failure)"),
    (EXIT_UNAUTHORIZED, "unauthorized: refused by the far side (no key it holds, a rule), "
                        "or its answers cannot be verified here (no key for it): the "
                        "message says which key is missing"),
    (EXIT_PARTIAL, "partial: a group send reached some members, not all (the message "
                   "names those it did not)"),
)

# the command groups, in the order ``posa --help`` lists them
_GROUPS = ("posa.cli.dispatcher", "posa.cli.names", "posa.cli.talk", "posa.cli.gather",
           "posa.cli.reply", "posa.cli.events", "posa.cli.top", "posa.cli.channel",
           "posa.cli.queue", "posa.cli.worker", "posa.cli.keys", "posa.cli.context",
           "posa.cli.completion", "posa.cli.gateway",
           "posa.cli.view")
# exit code of each error class, most specific first
_EXIT_CODES: tuple[tuple[type[PosaError], int], ...] = (
    (NameNotFound, EXIT_NOT_FOUND), (Timeout, EXIT_TIMEOUT),
    (Unauthorized, EXIT_UNAUTHORIZED), (PartialDelivery, EXIT_PARTIAL),
    (PosaError, EXIT_ERROR))


def build_parser() -> argparse.ArgumentParser:
    """The ``posa`` parser with every command group's subcommands."""
    from posa import __version__
    parser = argparse.ArgumentParser(
        prog="posa", description="posa: location-transparent messaging. Run a dispatcher "
        "or an event channel, or talk to peers by name from the shell.",
        epilog="Exit codes: " + ", ".join(f"{code} {text.split(':')[0]}"
                                          for code, text in EXITS)
        + ". Start with: posa dispatcher --listen tcp://127.0.0.1:7000")
    parser.add_argument("--version", action="version", version=f"posa {__version__}")
    parser.add_argument("--context", metavar="NAME", default=None,
                        help="the settings to use (posa context ls)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _GROUPS:     # imported here: a group may import from posa.cli
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``posa`` command; returns its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = _parse(build_parser(), list(sys.argv[1:] if argv is None else argv))
    deadline = None
    try:
        from posa.cli import settings
        settings.apply(args)
        if getattr(args, "budget", False):
            deadline = time.monotonic() + args.timeout
        return _run(args, deadline)
    except PosaError as exc:
        print(f"posa: {exc}{_hint(args, exc)}", file=sys.stderr)
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    except KeyboardInterrupt:   # ends a service or a tail; cuts a one-shot command short
        if deadline is None:
            return EXIT_OK
        # what was written lingers a moment, not until the command's deadline (a
        # connection to a peer whose handler holds it is never closed from there)
        deadline = min(deadline, time.monotonic() + _INTERRUPTED_LINGER)
        return EXIT_INTERRUPTED
    finally:
        if deadline is not None:
            _exit_by(deadline)


def _hint(args: argparse.Namespace, exc: PosaError) -> str:
    """What to check when the dispatcher itself did not answer: a tcp:// client and
    a zmq+tcp:// listener (or the other way round) connect, then never talk."""
    address = getattr(args, "dispatcher", None)
    if not isinstance(exc, Timeout) or not address or "'posa/dispatcher'" not in str(exc):
        return ""
    return (f"; is a posa dispatcher listening at {address}, on that transport? (a "
            "tcp:// client and a zmq+tcp:// dispatcher, or the other way round, connect "
            "and never talk)")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; for ``posa reply NAME [OPTIONS] -- COMMAND`` what follows
    ``--`` is the command, whatever it looks like (``args.command``)."""
    if "--" in argv and "reply" in argv[:argv.index("--")]:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        args.command = argv[cut + 1:]
        return args
    return parser.parse_args(argv)


def _run(args: argparse.Namespace, deadline: float | None) -> int:
    from posa.delivery.budget import until
    with until(deadline):
        return int(args.run(args) or 0)


def _exit_by(deadline: float) -> None:
    """At exit, closed connections linger until ``deadline`` at the latest, not
    for their whole linger: tcp sockets in the reaper (posa.transport.tcp.closing),
    zmq frames in the context (posa.transport.zmq.context), if loaded."""
    closing = sys.modules.get("posa.transport.tcp.closing")
    if closing is not None:
        atexit.unregister(closing.reaper.finish)
        atexit.register(closing.reaper.finish, deadline)
    context = sys.modules.get("posa.transport.zmq.context")
    if context is not None:
        context.exit_by(deadline)


if __name__ == "__main__":
    sys.exit(main())
