"""The live web view of a posa system (docs/web.md).

Names and where they live (transport, address, epoch, lease left), services
and their servers, channels with rates and drops, queues with depth and age,
and a running log of migrations and failovers, in a browser, live.

``add_routes(app, registry=...)``   mount it on an aiohttp application at
                                    ``/view/`` (``posa gateway`` does)
``serve(registry=..., port=...)``   a server of its own, on its own thread
                                    (``posa view``, ``python -m posa.gateway.view``)
``ViewState``                       what the page shows, as a sans-IO model
``Feed``                            a snapshot, then live updates, to browsers
                                    over Server-Sent Events (thread-safe)

Modules: ``state`` (sans-IO), ``feed``, ``app`` (routes, sampling), ``server``,
``static/`` (the page: plain HTML, JS and CSS, no build step, nothing fetched
from elsewhere). Needs the ``gateway`` extra (aiohttp).
"""
from __future__ import annotations

from posa.gateway.view.app import Board, add_routes
from posa.gateway.view.feed import Feed
from posa.gateway.view.server import ViewServer, serve
from posa.gateway.view.state import ViewState

__all__ = ["add_routes", "serve", "ViewServer", "Board", "Feed", "ViewState"]
