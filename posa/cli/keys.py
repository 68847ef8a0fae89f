"""``posa keygen`` and the security options every service command shares.

``--keys FILE``, ``--key-id ID`` and ``--acl FILE`` override the environment
(``POSA_KEYS``, ``POSA_KEY_ID``, ``POSA_ACL``) for one command; options not given
fall back to it, so a service started by a supervisor with the variables set
and one started by hand with the options behave alike.  ``keygen`` appends to a
key file created with mode 600 and refuses to add a key id twice.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from posa.admission.keys import MIN_SECRET_BYTES, check_key
from posa.errors import PosaError
from posa.security import Acl, HmacAuthenticator, Keyring, acl_from_env, from_env

__all__ = ["add_parser", "add_security_arguments", "security_from_args"]


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--keys FILE``, ``--key-id ID`` and ``--acl FILE`` to a subcommand."""
    group = parser.add_argument_group("security")
    group.add_argument("--keys", metavar="FILE", default=None,
                       help="key file (`key-id base64-secret` lines, mode 600): seal and "
                       "check every frame (default: $POSA_KEYS, else authentication off)")
    group.add_argument("--key-id", metavar="ID", default=None,
                       help="the key that seals this process's frames (default: the most "
                       "specific key for its name)")
    group.add_argument("--acl", metavar="FILE", default=None,
                       help="access rules: who may send to whom, which keys may register "
                       "which names (default: $POSA_ACL)")


def security_from_args(args: argparse.Namespace, name: str | None = None
                       ) -> tuple[HmacAuthenticator | None, Acl | None]:
    """The authenticator and ACL that ``--keys/--key-id/--acl`` (or the
    environment, for options not given) ask for."""
    environ = dict(os.environ)
    if getattr(args, "keys", None):
        environ["POSA_KEYS"] = args.keys
    if getattr(args, "key_id", None):
        environ["POSA_KEY_ID"] = args.key_id
    if getattr(args, "acl", None):
        environ["POSA_ACL"] = args.acl
    return from_env(name, environ=environ), acl_from_env(environ)


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
