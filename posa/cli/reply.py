"""``posa reply NAME [-- COMMAND ARGS...]``: answer requests from the shell.

Registers NAME at the dispatcher and answers every request sent to it, one at a
time, as ``nats reply`` does: with ``--body JSON``, with the output of COMMAND,
or with the request's own body (an echo).  COMMAND runs once per request with
the request's body on stdin (bytes as they are, anything else as JSON) and
``$POSA_SENDER`` set; exit status 0 answers with its stdout (as JSON when it
parses as JSON, else as text), any other status answers with an error carrying
the tail of its stderr, which the requester raises (``posa request`` exits 1).
Every message is printed as it comes (``--json``: one object a line); one-way
messages are printed and not answered.  Runs until Ctrl-C or ``--count N``
requests; it prints ``replying as NAME at ADDRESS`` once it is registered.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from posa.cli.options import (
    add_client_parser,
    json_body,
    to_json,
    usage,
    with_authenticator,
)
from posa.cli.values import count
from posa.wire.codec import Kind, Message

__all__ = ["add_parser"]

_TAIL = 2000            # characters of a failed command's stderr sent back


class CommandFailed(RuntimeError):
    """COMMAND failed: the requester raises ``RemoteError('CommandFailed', ...)``."""


def add_parser(subparsers: Any) -> None:
    """Add ``posa reply``."""
    p = add_client_parser(subparsers, "reply", "answer the requests sent to NAME (posa "
                          "reply NAME [OPTIONS] -- COMMAND ARGS): with a fixed body, a "
                          "command's output, or an echo",
                          "posa reply lab/date --count 1 -- date -u   "
                          "(then: posa request lab/date)", budget=False)
    p.add_argument("name", help="the name to answer as, e.g. lab/echo")
    p.set_defaults(command=[])      # what follows --: posa.cli._parse
    p.add_argument("--body", default=None, metavar="JSON", help="answer with this body")
    p.add_argument("--count", type=count, default=None, metavar="N",
                   help="exit after answering N requests (default: until Ctrl-C)")
    p.add_argument("--listen", default="tcp://127.0.0.1:0",
                   help="where to receive (default tcp://127.0.0.1:0)")
    p.set_defaults(run=with_authenticator(_reply))


def _reply(args: argparse.Namespace) -> int:
    from posa.naming.client import RegistryClient
    from posa.peer import Peer
    command = list(args.command)
    if command and args.body is not None:
        usage("give --body or a COMMAND, not both")
    fixed = json_body(args.body) if args.body is not None else None
    with RegistryClient(args.dispatcher, timeout=args.timeout,
                        authenticator=args.authenticator) as registry, \
            Peer(args.name, registry=registry, listen=args.listen,
                 authenticator=args.authenticator) as peer:
        print(to_json({"replying": peer.name, "address": peer.address}) if args.json
              else f"replying as {peer.name} at {peer.address}", flush=True)
        answered = 0
        while args.count is None or answered < args.count:
            msg = peer.receive()
            _print(args, msg)
            if msg.kind != Kind.REQUEST:
                continue
            try:
                answer = (_run(command, msg) if command else
                          fixed if args.body is not None else msg.body)
            except CommandFailed as exc:
                peer.reply_error(msg, exc)
            else:
                peer.reply(msg, answer)
            answered += 1
    return 0


def _print(args: argparse.Namespace, msg: Message) -> None:
    kind = "request" if msg.kind == Kind.REQUEST else "message"
    if args.json:
        print(to_json({kind: msg.body, "sender": msg.sender, "headers": msg.headers}),
              flush=True)
    else:
        print(f"{kind} from {msg.sender or '(anonymous)'}: {to_json(msg.body)}", flush=True)


def _run(command: list[str], msg: Message) -> Any:
    """COMMAND's answer to ``msg``; ``CommandFailed`` if it fails."""
    stdin = msg.body if isinstance(msg.body, bytes) else to_json(msg.body).encode()
    env = dict(os.environ, POSA_SENDER=msg.sender)
    remaining = None if msg.deadline is None else max(0.0, msg.deadline - time.monotonic())
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, env=env,
                              timeout=remaining, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{command[0]} did not finish before the request's deadline") \
            from None
    except OSError as exc:
        raise CommandFailed(f"cannot run {command[0]}: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-_TAIL:].strip()
        raise CommandFailed(f"{command[0]} exited with {done.returncode}: {tail}")
    text = done.stdout.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.rstrip("\n")
