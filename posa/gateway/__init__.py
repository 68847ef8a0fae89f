"""posa over HTTP: the gateway (``posa gateway``; docs/gateway.md).

An HTTP/JSON API that maps onto posa by name, served by a posa peer on one
asyncio loop (aiohttp): send, request, call, publish; a channel's events as
Server-Sent Events; names served for HTTP programs (long poll, WebSocket);
names, services, health, metrics; its OpenAPI document.  Modules:

- ``tokens``: bearer tokens -> identities and the names they may reach (sans-IO);
- ``problems``: errors as problem+json (sans-IO);
- ``limits``: the edge (connection caps, header deadlines);
- ``core``: the ``Gateway`` (its peers, clients, publishers, counters);
- ``hosting``: names served for HTTP programs, their inboxes and leases;
- ``http``: shared JSON and parameter helpers, the error middleware;
- ``messaging``, ``streams``, ``receiving``, ``listing``: the routes;
- ``openapi``: the document; ``app``: ``make_app``; ``server``: ``serve``;
- ``view/``: the live web view of names, services, channels and queues (docs/web.md).

aiohttp is an optional dependency: ``pip install 'posa[gateway]'``.
"""
