"""Run the gateway: bind, announce, serve until a signal, close in order.

``serve(config)`` runs inside ``asyncio.run``: it opens the registry client
and the ``Gateway``, builds the application, listens through the
``ConnectionGuard`` (``loop.create_server`` around aiohttp's protocol), prints
``posa gateway at http://HOST:PORT`` once it is ready, and on SIGTERM or
SIGINT stops listening, ends open requests (up to ``grace`` seconds), and
unregisters what it registered.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from posa.errors import PosaError
from posa.gateway.app import View, make_app
from posa.gateway.core import Gateway
from posa.gateway.limits import ConnectionGuard, EdgeLimits
from posa.gateway.tokens import Tokens

__all__ = ["Config", "serve", "parse_listen"]

log = logging.getLogger("posa.gateway")


@dataclass
class Config:
    listen: str = "http://127.0.0.1:8080"
    dispatcher: str = "tcp://127.0.0.1:7000"
    tokens: Tokens | None = None
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    posa_listen: str = "tcp://127.0.0.1:0"
    grace: float = 5.0
    environ: Mapping[str, str] | None = None
    view: View | None = None


def parse_listen(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port); a clear error for anything else."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in (
            "", "/"):
        raise PosaError(f"--listen {url!r}: give http://HOST:PORT, e.g. "
                        "http://127.0.0.1:8080 (port 0 picks one); for https put a TLS "
                        "proxy in front")
    return parts.hostname, port


async def serve(config: Config, ready: Callable[[str], Any] = print) -> None:
    from posa.naming.client import RegistryClient
    host, port = parse_listen(config.listen)
    if config.tokens is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("posa gateway: serving %s without --tokens: anyone who reaches it "
                    "acts as the identity 'gateway'", config.listen)
    loop = asyncio.get_running_loop()
    registry = await loop.run_in_executor(None, lambda: RegistryClient(
        config.dispatcher, authenticator=_client_auth(config)))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(registry, tokens=config.tokens, limits=config.limits,
                      listen=config.posa_listen, environ=config.environ,
                      dispatcher=config.dispatcher)
    guard = ConnectionGuard(config.limits)
    runner = web.AppRunner(make_app(gateway, guard, config.view), access_log=None,
                           keepalive_timeout=config.limits.idle_timeout,
                           handler_cancellation=True)
    await runner.setup()
    server = await loop.create_server(guard.factory(runner.server), host, port,
                                      reuse_address=True, backlog=512)
    try:
        bound = server.sockets[0].getsockname()
        ready(f"posa gateway at http://{bound[0]}:{bound[1]} (peer {gateway.peer.name})")
        await stop.wait()
        server.close()
        await gateway.hosting.close()               # long polls end, names go
        for transport in list(guard.connections):   # event streams end
            transport.close()
        try:
            await asyncio.wait_for(runner.cleanup(), config.grace)
        except asyncio.TimeoutError:
            pass                                    # what is left is cut
    finally:
        server.close()
        await gateway.close()
        await loop.run_in_executor(None, registry.close)


def _client_auth(config: Config) -> Any:
    from posa.security import from_env
    return from_env(None, environ=config.environ)
