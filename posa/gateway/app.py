"""The gateway's aiohttp application: ``make_app(gateway, guard, view=None)``.

The routes come from one module per concern (``messaging``, ``streams``,
``receiving``, ``listing``) plus ``/v1/openapi.json``; the ``errors``
middleware (``posa.gateway.http``) is the only one.  ``view`` is the hook for
the live web view: a callable ``add_routes(app, peer=..., registry=...)`` that
adds its own routes (``posa.gateway.view`` when it is there).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

import posa
from posa.gateway import listing, messaging, receiving, streams
from posa.gateway.core import Gateway
from posa.gateway.http import GATEWAY, GUARD, errors, json_response
from posa.gateway.limits import ConnectionGuard
from posa.gateway.openapi import document

__all__ = ["make_app", "View"]

View = Callable[..., Any]


def make_app(gateway: Gateway, guard: ConnectionGuard, view: View | None = None
             ) -> web.Application:
    """The application: every route of docs/gateway.md, and the view's if given."""
    app = web.Application(middlewares=[errors], client_max_size=gateway.limits.max_body)
    app[GATEWAY] = gateway
    app[GUARD] = guard
    for module in (messaging, streams, receiving, listing):
        module.add_routes(app)
    spec = document(posa.__version__)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/v1/openapi.json", openapi)
    if view is not None:
        view(app, peer=gateway.peer, registry=gateway.registry)
    return app
