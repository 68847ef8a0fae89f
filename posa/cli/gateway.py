"""``posa gateway``: posa by name over HTTP/JSON (docs/gateway.md).

    posa gateway --listen http://127.0.0.1:8080 --dispatcher tcp://127.0.0.1:7000 \\
                 [--tokens FILE] [--keys FILE]

Prints ``posa gateway at http://HOST:PORT`` once it serves, and runs until
SIGTERM or SIGINT.  Needs aiohttp (``pip install 'posa[gateway]'``).
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import os
from typing import Any

from posa.cli.options import (
    _environ,
    add_dispatcher_argument,
    add_security_arguments,
    add_tls_arguments,
)
from posa.cli.values import count, seconds, seconds_or_zero

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add the ``gateway`` sub-command."""
    p = subparsers.add_parser("gateway", help="serve posa over HTTP/JSON",
                              description="An HTTP/JSON gateway to posa (docs/gateway.md).")
    p.add_argument("--listen", default="http://127.0.0.1:8080", metavar="URL",
                   help="where to serve HTTP (default http://127.0.0.1:8080; port 0 picks one)")
    add_dispatcher_argument(p)      # flag, $POSA_DISPATCHER, context, default
    p.add_argument("--tokens", metavar="FILE", default=None,
                   help="bearer tokens (`TOKEN IDENTITY [NAMES...]` lines, mode 600); "
                        "without it every HTTP client is served (loopback use only)")
    p.add_argument("--posa-listen", default="tcp://127.0.0.1:0", metavar="ADDRESS",
                   help="where the gateway's peers receive (default tcp://127.0.0.1:0)")
    p.add_argument("--grace", type=seconds_or_zero, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, wait this long for open requests (default 5)")
    edge = p.add_argument_group("edge limits (docs/gateway.md)")
    from posa.gateway.limits import EdgeLimits
    defaults = EdgeLimits()
    for flag, kind, text in (
            ("max-body", count, "bytes of a request body; larger: 413"),
            ("header-timeout", seconds, "seconds for a request head"),
            ("body-timeout", seconds, "seconds for a request body; then 408"),
            ("idle-timeout", seconds, "seconds between requests on a connection"),
            ("max-connections", count, "HTTP connections in all"),
            ("max-connections-per-source", count, "HTTP connections from one address"),
            ("sse-buffer", count, "events an event stream may fall behind before it ends"),
            ("max-wait", seconds, "the longest ?timeout= or ?wait= in seconds")):
        default = getattr(defaults, flag.replace("-", "_"))
        edge.add_argument(f"--{flag}", type=kind, default=default,
                          help=f"{text} (default {default})")
    add_security_arguments(p, acl=False)
    add_tls_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        from posa.gateway.server import Config, serve
    except ImportError as exc:
        raise SystemExit(f"posa gateway needs aiohttp ({exc}): pip install 'posa[gateway]'"
                         ) from None
    from posa.gateway.limits import EdgeLimits
    from posa.gateway.tokens import Tokens
    limits = EdgeLimits(**{key: getattr(args, key) for key in (
        "max_body", "header_timeout", "body_timeout", "idle_timeout", "max_connections",
        "max_connections_per_source", "sse_buffer", "max_wait")})
    config = Config(listen=args.listen, dispatcher=args.dispatcher,
                    tokens=Tokens.from_file(args.tokens) if args.tokens else None,
                    limits=limits, posa_listen=args.posa_listen, grace=args.grace,
                    environ=_environ(args), view=_view())
    try:
        asyncio.run(serve(config, ready=lambda line: print(line, flush=True)))
    except OSError as exc:      # the listen address: in use, not ours, not here
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise SystemExit(f"posa gateway: cannot listen on {args.listen} "
                         f"({os.strerror(exc.errno)}); choose another --listen port, "
                         "or port 0 for a free one") from None
    return 0


def _view() -> Any:
    """The live web view's ``add_routes``, when that package is installed."""
    import importlib
    try:
        view = importlib.import_module("posa.gateway.view")
    except ImportError:
        return None
    return getattr(view, "add_routes", None)
