"""Options and helpers the ``posa`` command groups share.

The dispatcher-client options (``--dispatcher``, ``--timeout``, ``--json``), the
operations options of a long-running service (``--ops-port``, ``--ops-host``,
``--grace``), JSON in (message bodies) and out (``--json``).  Defaults live in
``posa.cli`` (``DEFAULT_DISPATCHER``), so every group shows the same ones.

Keys: every command that talks to posa (clients and services alike) takes
``--keys FILE`` and ``--key-id ID`` (``add_security_arguments``; services add
``--acl FILE``), which override ``POSA_KEYS``, ``POSA_KEY_ID`` (and ``POSA_ACL``)
for one command; options not given fall back to the environment, so a process
started by a supervisor with the variables set and one started by hand with the
options behave alike.  ``authenticator_from_args`` builds what they ask for: a
service seals with the most specific key for its name, a client with
``posa.admission.authenticator.anonymous_key``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from posa.cli import DEFAULT_DISPATCHER
from posa.cli.values import count, port, seconds, seconds_or_zero
from posa.security import Acl, HmacAuthenticator, acl_from_env, from_env
from posa.transport.base import Options

__all__ = ["add_client_parser", "add_ops_arguments", "add_tls_arguments",
           "add_connection_arguments", "connection_options", "to_json", "json_body",
           "add_security_arguments", "authenticator_from_args", "security_from_args",
           "add_dispatcher_argument", "usage", "with_authenticator",
           "registry_from_args", "left"]


def add_client_parser(subparsers: Any, name: str, help_text: str, example: str = "",
                      *, budget: bool = True) -> argparse.ArgumentParser:
    """A subcommand that asks the dispatcher: ``--dispatcher``, ``--timeout``, ``--json``,
    ``--help`` ending with ``example``. ``budget``: the whole command runs within
    ``--timeout`` (a one-shot command; a tail's timeout is per operation)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text,
        epilog=f"example:\n  {example}" if example else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dispatcher_argument(parser)
    parser.add_argument("--timeout", type=seconds, default=5.0,
                        help="seconds (default 5)" + (": the whole command" if budget else ""))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(budget=budget)
    add_security_arguments(parser, acl=False)
    add_tls_arguments(parser)
    return parser


def add_dispatcher_argument(parser: argparse.ArgumentParser) -> None:
    """``--dispatcher ADDRESS``: flag, else $POSA_DISPATCHER, else the context's,
    else ``DEFAULT_DISPATCHER`` (``posa.cli.settings``)."""
    parser.add_argument("--dispatcher", default=None, metavar="ADDRESS",
                        help="the dispatcher (default: $POSA_DISPATCHER, else the "
                        f"context's, else {DEFAULT_DISPATCHER})")


def add_security_arguments(parser: argparse.ArgumentParser, *, acl: bool = True) -> None:
    """Add ``--keys FILE`` and ``--key-id ID`` (and, for a service, ``--acl FILE``)."""
    parser.add_argument("--context", metavar="NAME", default=argparse.SUPPRESS,
                        help="use these named settings (posa context ls; default: "
                        "$POSA_CONTEXT, else the one in use)")
    group = parser.add_argument_group("security")
    group.add_argument("--keys", metavar="FILE", default=None,
                       help="key file (`key-id base64-secret` lines, mode 600): seal and "
                       "check every frame (default: $POSA_KEYS, else authentication off)")
    group.add_argument("--key-id", metavar="ID", default=None,
                       help="the key that seals this process's frames (default: the most "
                       "specific key for its name; for a client, its one key outside posa/)")
    if acl:
        group.add_argument("--acl", metavar="FILE", default=None,
                           help="access rules: who may send to whom, which keys may "
                           "register which names (default: $POSA_ACL)")


def _environ(args: argparse.Namespace) -> dict[str, str]:
    """The environment with ``--keys``, ``--key-id`` and ``--acl`` laid over it."""
    environ = dict(os.environ)
    for option, variable in (("keys", "POSA_KEYS"), ("key_id", "POSA_KEY_ID"),
                             ("acl", "POSA_ACL")):
        value = getattr(args, option, None)
        if value:
            environ[variable] = value
    return environ


def authenticator_from_args(args: argparse.Namespace, name: str | None = None
                            ) -> HmacAuthenticator | None:
    """The authenticator ``--keys``/``--key-id`` (or the environment) ask for, for a
    process named ``name`` (None: an anonymous client); None without keys."""
    return from_env(name, environ=_environ(args))


def security_from_args(args: argparse.Namespace, name: str | None = None
                       ) -> tuple[HmacAuthenticator | None, Acl | None]:
    """The authenticator and the ACL that ``--keys/--key-id/--acl`` (or the
    environment, for options not given) ask for."""
    environ = _environ(args)
    return from_env(name, environ=environ), acl_from_env(environ)


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ops-port``, ``--ops-host`` and ``--grace`` to a subcommand."""
    group = parser.add_argument_group("operations")
    group.add_argument("--ops-port", type=port, default=None, metavar="PORT",
                       help="serve /health and /metrics over HTTP on this port "
                       "(0 picks one; default: off)")
    group.add_argument("--ops-host", default="127.0.0.1", metavar="HOST",
                       help="address for --ops-port (default 127.0.0.1)")
    group.add_argument("--grace", type=seconds_or_zero, default=10.0, metavar="SECONDS",
                       help="on SIGTERM, wait this long for in-flight work (default 10)")


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--tls-client-cert``:
    the settings of every ``tls://`` address the command listens on or connects
    to. Each sets its ``POSA_TLS_*`` variable for this process (and the processes
    it starts), which the tls transport reads when it is first used."""
    group = parser.add_argument_group("tls (for tls:// addresses)")
    for flag, meta, text in (
            ("--tls-ca", "PEM", "CA certificates to verify the other side with "
                                "(env POSA_TLS_CA; default: the system's)"),
            ("--tls-cert", "PEM", "this side's certificate chain; a listener needs it, "
                                  "a client presents it for mutual TLS (env POSA_TLS_CERT)"),
            ("--tls-key", "PEM", "the certificate's private key (env POSA_TLS_KEY; "
                                 "default: in --tls-cert)"),
            ("--tls-client-cert", "required", "listeners accept only clients with a "
                                              "certificate signed by --tls-ca (env "
                                              "POSA_TLS_CLIENT_CERT)")):
        group.add_argument(flag, metavar=meta, action=_SetEnvironment,
                           choices=("required", "optional") if meta == "required" else None,
                           help=text)


class _SetEnvironment(argparse.Action):
    """``--tls-ca X`` sets ``POSA_TLS_CA=X``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if self.metavar == "PEM":       # said now, not as a timeout of every connection
            problem = _pem_problem(str(values), ca=self.dest == "tls_ca")
            if problem:
                parser.error(f"argument {option_string}: {problem}")
        setattr(namespace, self.dest, values)
        os.environ["POSA_" + self.dest.upper()] = str(values)


def _pem_problem(path: str, *, ca: bool) -> str | None:
    """What is wrong with a PEM file given on the command line, or None."""
    if not os.path.isfile(path):
        return f"no file {path!r}; give a PEM file"
    if ca:
        import ssl
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"{path!r} holds no CA certificate ({exc}); give a PEM file of them"
    return None


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connection-hygiene settings of a service's listeners
    (``Options``; docs/security.md)."""
    defaults = Options()
    group = parser.add_argument_group("connections (docs/security.md, connection hygiene)")
    group.add_argument("--max-connections", type=count, default=defaults.max_connections,
                       metavar="N", help="per listener (default %(default)s)")
    group.add_argument("--max-connections-per-source", type=count, metavar="N",
                       default=defaults.max_connections_per_source,
                       help="per listener and source address (default %(default)s)")
    for flag, value in (("first-frame-timeout", defaults.first_frame_timeout),
                        ("frame-timeout", defaults.frame_timeout),
                        ("idle-timeout", defaults.idle_timeout)):
        group.add_argument(f"--{flag}", type=seconds_or_zero, default=value, metavar="SECONDS",
                           help=f"shed a connection past it, 0: never (default {value})")


def connection_options(args: argparse.Namespace) -> Options:
    """The ``Options`` that ``add_connection_arguments``' flags ask for."""
    return Options(max_connections=args.max_connections,
                   max_connections_per_source=args.max_connections_per_source,
                   first_frame_timeout=args.first_frame_timeout or None,
                   frame_timeout=args.frame_timeout or None,
                   idle_timeout=args.idle_timeout or None)


def to_json(value: Any) -> str:
    """``value`` as JSON; bytes as (lossy) UTF-8 text, anything else by ``repr``."""
    return json.dumps(value, default=lambda v: v.decode("utf-8", "replace")
                      if isinstance(v, (bytes, bytearray)) else repr(v), sort_keys=True)


def json_body(text: str) -> Any:
    """A message body given as JSON on the command line; exits with 2 (usage) if not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        usage(f"the message body must be JSON ({exc}); for a string, quote it: "
              "'\"hello\"'")
    except RecursionError:
        usage("the message body nests too deep to read; posa carries bodies nested at "
              "most 64 deep (CodecLimits.max_depth)")


def usage(message: str) -> NoReturn:
    """Say what is wrong with the command line and exit with 2 (bad usage)."""
    print(f"posa: {message}", file=sys.stderr)
    raise SystemExit(2)


def with_authenticator(command: Any) -> Any:
    """``command`` with the authenticator its ``--keys`` ask for made first (one for
    the registry client and the sender: ``args.authenticator``), so a bad key file
    fails before any I/O."""
    def run(args: argparse.Namespace) -> int:
        args.authenticator = authenticator_from_args(args)
        return int(command(args))
    return run


def registry_from_args(args: argparse.Namespace) -> Any:
    """A ``RegistryClient`` of ``--dispatcher`` without a cache (a shell command wants
    what is registered now), sealing with ``args.authenticator``."""
    from posa.naming.client import RegistryClient  # only the commands that ask load it
    return RegistryClient(args.dispatcher, timeout=args.timeout, cache=False,
                          authenticator=getattr(args, "authenticator", None))


def left(args: argparse.Namespace) -> float:
    """Seconds left of the command's ``--timeout`` (its budget, if it has one)."""
    from posa.delivery.budget import bounded
    return bounded(float(args.timeout))
