"""The web view on a server of its own: an aiohttp application on its own thread.

``serve(registry=..., port=8080)`` returns a running ``ViewServer`` (``url``,
``close()``, a context manager); ``setup(app)`` may add routes of its own to
the same application before it starts (``examples/netagents`` adds its graph
so). ``posa gateway`` mounts the view on its application with
``add_routes`` instead.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from posa.errors import PosaError
from posa.gateway.view.app import Board, add_routes
from posa.naming.registration import Registry

__all__ = ["ViewServer", "serve"]


class ViewServer:
    """A running web view; ``close()`` stops it (idempotent)."""

    def __init__(self, app: web.Application, board: Board | None, host: str,
                 port: int) -> None:
        self.app = app
        self.board = board
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="posa-web-view", daemon=True)
        self._thread.start()
        self._started.wait(30.0)
        if isinstance(self._error, OSError):
            raise PosaError(f"the web view cannot listen on {host}:{port}: "
                            f"{self._error}; choose another port") from self._error
        if self._error is not None:
            raise PosaError(f"the web view did not start: {self._error}") from self._error
        if not self._started.is_set():
            raise PosaError("the web view did not start within 30 s")

    @property
    def url(self) -> str:
        """Where a browser finds the server: ``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:        # reported to the constructor
            self._error = exc
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break

    async def _stop(self) -> None:
        """Stop listening, then end what is left (open event streams) before the loop
        closes."""
        await self._runner.cleanup()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def close(self) -> None:
        if self._thread.is_alive() and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)

    def __enter__(self) -> ViewServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(*, registry: Registry | None = None, host: str = "127.0.0.1", port: int = 8080,
          setup: Callable[[web.Application], None] | None = None,
          **view: Any) -> ViewServer:
    """Start a server with the web view of ``registry`` at ``/view/`` (``view``:
    the options of ``add_routes``) and whatever ``setup(app)`` adds; port 0
    takes a free port (see ``url``). Without a registry, only ``setup``'s routes."""
    app = web.Application()
    board = add_routes(app, registry=registry, **view) if registry is not None else None
    if setup is not None:
        setup(app)
    if board is not None and not any(r.resource is not None and r.resource.canonical == "/"
                                      for r in app.router.routes()):
        async def root(request: web.Request) -> web.Response:
            raise web.HTTPFound("/view/")
        app.router.add_get("/", root)
    return ViewServer(app, board, host, port)
