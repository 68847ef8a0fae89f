"""Receiving by name over HTTP (``posa.gateway.hosting`` keeps the names).

- ``POST /v1/names/{name}`` ``{"lease": 30, "credential": null}``: serve
  ``name`` (201, with its credential and lease);
- ``DELETE /v1/names/{name}``: unregister it (204);
- ``GET /v1/inbox/{name}?wait=25&max=100``: take messages, waiting up to
  ``wait`` seconds for the first (200, ``{"messages": [...]}``, maybe empty);
- ``GET /v1/ws/{name}``: a WebSocket; the gateway sends each message as a JSON
  text frame, the program answers ``{"reply": ID, "body": ...}`` (or
  ``{"reply": ID, "error": "..."}``);
- ``POST /v1/reply/{id}``: answer request ``id`` with the JSON body
  (``?error=TEXT``: with ``Rejected(TEXT)``) (204).

A message is ``{"id", "kind": "send"|"request", "sender", "body",
"expires_in"}``; ``id`` is null for a one-way message.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from posa.errors import PosaError, Unauthorized
from posa.gateway.hosting import Hosted
from posa.gateway.http import GATEWAY, json_response, principal, read_json, seconds
from posa.gateway.problems import BadInput
from posa.wire.names import validate_name

__all__ = ["add_routes"]


def _owner(request: web.Request) -> str:
    return principal(request).label


async def register(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    if not principal(request).may_reach(name):
        raise Unauthorized(f"this token may not serve {name!r}")
    options: Any = await read_json(request) or {}
    if not isinstance(options, dict) or set(options) - {"lease", "credential"}:
        raise BadInput('register takes {"lease": SECONDS, "credential": TEXT}, both optional')
    lease = options.get("lease", 30.0)
    credential = options.get("credential")
    if not isinstance(lease, (int, float)) or not isinstance(credential, (str, type(None))):
        raise BadInput("lease is a number of seconds, credential a string")
    hosted = await request.app[GATEWAY].hosting.register(name, _owner(request), credential,
                                                         float(lease))
    address = hosted.peer.address if hosted.peer is not None else None
    return json_response({"name": name, "credential": hosted.credential,
                          "lease": hosted.lease, "address": address}, status=201)


async def unregister(request: web.Request) -> web.Response:
    await request.app[GATEWAY].hosting.unregister(request.match_info["name"], _owner(request))
    return web.Response(status=204)


async def inbox(request: web.Request) -> web.Response:
    hosted = request.app[GATEWAY].hosting.find(request.match_info["name"], _owner(request))
    try:
        most = int(request.query.get("max", "100"))
    except ValueError:
        most = 0
    if not 1 <= most <= 1000:
        raise BadInput("?max= must be 1 to 1000")
    messages = await hosted.take(seconds(request, "wait", 0.0), most)
    return json_response({"messages": messages})


async def reply(request: web.Request) -> web.Response:
    body = await read_json(request)
    request.app[GATEWAY].hosting.answer(request.match_info["id"], _owner(request), body,
                                        request.query.get("error"))
    return web.Response(status=204)


async def websocket(request: web.Request) -> web.StreamResponse:
    hosted = request.app[GATEWAY].hosting.find(request.match_info["name"], _owner(request))
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=request.app[GATEWAY].limits.max_body)
    await ws.prepare(request)
    hosted.takers += 1          # an open socket holds the lease
    try:
        await _serve_socket(request, ws, hosted)
    finally:
        hosted.takers -= 1
        hosted.touch()
    return ws


async def _serve_socket(request: web.Request, ws: web.WebSocketResponse,
                        hosted: Hosted) -> None:
    hosting, owner = request.app[GATEWAY].hosting, _owner(request)

    async def push() -> None:
        while hosted.peer is not None and not ws.closed:
            for message in await hosted.take(30.0, 100):
                await ws.send_str(json.dumps(message, default=repr))
        await ws.close()

    pusher = asyncio.ensure_future(push())
    try:
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            try:
                answer = json.loads(frame.data)
                if not isinstance(answer, dict) or not isinstance(answer.get("reply"), str):
                    raise BadInput('answer with {"reply": ID, "body": ...}')
                hosting.answer(answer["reply"], owner, answer.get("body"),
                               answer.get("error"))
            except (ValueError, PosaError) as exc:
                await ws.send_str(json.dumps({"error": str(exc)}))
            except RecursionError:      # an answer nested too deep to read
                await ws.send_str(json.dumps({"error": "the answer nests too deep to read"}))
    finally:
        pusher.cancel()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/names/{name:.+}", register)
    app.router.add_delete("/v1/names/{name:.+}", unregister)
    app.router.add_get("/v1/inbox/{name:.+}", inbox)
    app.router.add_post("/v1/reply/{id}", reply)
    app.router.add_get("/v1/ws/{name:.+}", websocket)
