"""Sending by name over HTTP: send, request, call a service, publish.

- ``POST /v1/send/{name}``: the JSON body to a name or to every member of a
  group (``netmgmt/*``); 202 with ``{"recipients": n}`` once written;
- ``POST /v1/request/{name}?timeout=5``: a request; 200 with the reply body;
- ``POST /v1/call/{service}?timeout=5``: a service call, failing over between
  its servers; 200 with the reply body;
- ``POST /v1/publish/{channel}``: ``{"topic": "...", "body": ...}``; 202 once
  the channel acknowledged the event.

Each goes out from the peer of the token's identity (``Gateway.peer_for``).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from posa.errors import Unauthorized
from posa.gateway.http import GATEWAY, json_response, principal, read_json, seconds
from posa.gateway.problems import BadInput
from posa.wire.names import validate_name, validate_pattern

__all__ = ["add_routes"]


def _target(request: web.Request, key: str, pattern: bool = False) -> str:
    name = request.match_info[key]
    validate_pattern(name) if pattern else validate_name(name)
    if not principal(request).may_reach(name):
        raise Unauthorized(f"this token may not reach {name!r}")
    return name


async def send(request: web.Request) -> web.Response:
    name = _target(request, "name", pattern=True)
    body = await read_json(request)
    gateway = request.app[GATEWAY]
    peer = await gateway.peer_for(principal(request))
    count = await peer.send(name, body, timeout=seconds(request, "timeout", 5.0))
    return json_response({"recipients": count}, status=202)


async def request_reply(request: web.Request) -> web.Response:
    name = _target(request, "name")
    body = await read_json(request)
    peer = await request.app[GATEWAY].peer_for(principal(request))
    reply = await peer.request(name, body, timeout=seconds(request, "timeout", 5.0))
    return json_response(reply)


async def call(request: web.Request) -> web.Response:
    service = _target(request, "service")
    body = await read_json(request)
    client = await request.app[GATEWAY].client_for(principal(request))
    reply = await client.call(service, body, timeout=seconds(request, "timeout", 5.0))
    return json_response(reply)


async def publish(request: web.Request) -> web.Response:
    channel = _target(request, "channel")
    event: Any = await read_json(request)
    if not isinstance(event, dict) or not isinstance(event.get("topic"), str) \
            or set(event) - {"topic", "body"}:
        raise BadInput('publish takes {"topic": "a/topic", "body": ...}')
    publisher = request.app[GATEWAY].publisher(channel)
    timeout = seconds(request, "timeout", 5.0)
    await publisher.publish(event["topic"], event.get("body"), timeout=timeout)
    await publisher.flush(timeout)          # 202 once the channel has it
    return json_response({"published": channel}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/send/{name:.+}", send)
    app.router.add_post("/v1/request/{name:.+}", request_reply)
    app.router.add_post("/v1/call/{service:.+}", call)
    app.router.add_post("/v1/publish/{channel:.+}", publish)
