"""``posa keygen``: a new key, printed or appended to a key file.

``keygen`` appends to a key file created with mode 600 and refuses to add a key
id twice.  The ``--keys``/``--key-id``/``--acl`` options every command shares
live in ``posa.cli.options`` (re-exported here for older callers).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from posa.admission.keys import MIN_SECRET_BYTES, check_key
from posa.cli.options import add_security_arguments, security_from_args
from posa.errors import PosaError
from posa.security import Keyring

__all__ = ["add_parser", "add_security_arguments", "security_from_args"]


def add_parser(subparsers: Any) -> None:
    """``posa keygen KEY-ID [--file FILE]``: make a key."""
    p = subparsers.add_parser(
        "keygen", help="make a new secret key for a name or realm",
        description="Print a new `key-id base64-secret` line, or append it to a key file "
        "(created with mode 600). Give the same line to every process that must "
        "check frames sealed with it.")
    p.add_argument("key_id", metavar="KEY-ID",
                   help="the name the key speaks for, with every name below it "
                   "(e.g. netmgmt, or netmgmt/agent-a)")
    p.add_argument("--file", metavar="FILE", help="append to this key file")
    p.set_defaults(run=_cmd_keygen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    check_key(args.key_id, b"\0" * MIN_SECRET_BYTES, "keygen")
    line = f"{args.key_id} {Keyring.new_secret()}\n"
    if not args.file:
        sys.stdout.write(line)
        return 0
    if os.path.exists(args.file) and args.key_id in Keyring.from_file(args.file):
        raise PosaError(f"{args.file} already holds a key {args.key_id!r}; remove that "
                        "line first to replace it")
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PosaError(f"cannot write the key file {args.file}: {exc.strerror}") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line)
    print(f"added key {args.key_id!r} to {args.file}")
    return 0
