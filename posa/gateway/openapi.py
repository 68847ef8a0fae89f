"""The OpenAPI 3.1 document of the gateway (``GET /v1/openapi.json``).

Written as data beside the routes; ``tests/test_gateway_openapi.py`` walks the
router and checks that each route is documented and each documented route
exists, and validates every response the tests see against the document's
schema for its path, method and status.
"""
from __future__ import annotations

from typing import Any

__all__ = ["document"]

ANY: dict[str, Any] = {"description": "any JSON value (bytes as {\"$base64\": ...})"}
PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _json(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    texts = {400: "bad input: a malformed name, body or parameter",
             401: "no token, or a token the gateway does not know",
             403: "the token, or posa's access rules, refuse it",
             404: "no such name (or no server, or no open request)",
             408: "the body did not arrive in time",
             409: "the name is served already (give its credential)",
             413: "the body is larger than --max-body",
             502: "posa failed behind the gateway",
             503: "refused: busy, draining, or an inbox full",
             504: "no answer by the deadline"}
    return {str(s): {"description": texts[s],
                     "content": {"application/problem+json": {"schema": PROBLEM}}}
            for s in statuses}


def _param(name: str, where: str, text: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": text, "schema": schema or {"type": "string"}}


NUMBER = {"type": "number", "minimum": 0}
TIMEOUT = _param("timeout", "query", "seconds to wait (default 5)", NUMBER)
SENDING = (400, 401, 403, 404, 408, 413, 502, 503, 504)


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, open_: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": body}}}
    if open_:
        op["security"] = []
    return op


NAME = _param("name", "path", "a posa name (slashes allowed)")


def _paths() -> dict[str, Any]:
    return {**_sending(), **_receiving(), **_listing()}


def _sending() -> dict[str, Any]:
    name = NAME
    return {
        "/v1/send/{name}": {"post": _op(
            "send the body one way to a name or a group pattern",
            {"202": _json({"type": "object", "required": ["recipients"], "properties": {
                "recipients": {"type": "integer"}}}, "written to every recipient"),
             **_problems(*SENDING)}, params=[
                _param("name", "path", "a name or a group pattern"), TIMEOUT], body=ANY)},
        "/v1/request/{name}": {"post": _op(
            "send a request; the reply body back",
            {"200": _json(ANY, "the reply body"), **_problems(*SENDING)},
            params=[name, TIMEOUT], body=ANY)},
        "/v1/call/{service}": {"post": _op(
            "call a service (failover between its servers)",
            {"200": _json(ANY, "the reply body"), **_problems(*SENDING)},
            params=[_param("service", "path", "a service name"), TIMEOUT], body=ANY)},
        "/v1/publish/{channel}": {"post": _op(
            "publish an event to a channel",
            {"202": _json({"type": "object", "required": ["published"], "properties": {
                "published": {"type": "string"}}}, "the channel acknowledged it"),
             **_problems(*SENDING)},
            params=[_param("channel", "path", "the channel's name"), TIMEOUT],
            body={"$ref": "#/components/schemas/Publish"})},
        "/v1/subscribe/{channel}": {"get": _op(
            "a channel's events as Server-Sent Events (id: the channel seq)",
            {"200": {"description": "event: event (data: Event) and event: gap (data: Gap)",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             **_problems(400, 401, 403, 404, 502, 503, 504)},
            params=[_param("channel", "path", "the channel's name"),
                    _param("topic", "query", "topic prefix (repeatable)"),
                    _param("filter", "query", "a content filter as JSON"),
                    _param("from", "query", "replay from this seq", {"type": "integer"}),
                    _param("Last-Event-ID", "header", "resume after this seq")])},
    }


def _receiving() -> dict[str, Any]:
    name = NAME
    return {
        "/v1/names/{name}": {
            "post": _op("serve a name for this HTTP program",
                        {"201": _json({"$ref": "#/components/schemas/Hosted"}, "served"),
                         **_problems(400, 401, 403, 408, 409, 413, 502, 503)},
                        params=[name], body={"$ref": "#/components/schemas/HostOptions"}),
            "delete": _op("stop serving a name", {"204": {"description": "unregistered"},
                                                  **_problems(400, 401, 403, 404)},
                          params=[name])},
        "/v1/inbox/{name}": {"get": _op(
            "take the messages of a served name (long poll)",
            {"200": _json({"type": "object", "required": ["messages"], "properties": {
                "messages": {"type": "array",
                             "items": {"$ref": "#/components/schemas/Message"}}}},
                          "the messages, maybe none"), **_problems(400, 401, 403, 404)},
            params=[name, _param("wait", "query", "seconds to wait for one", NUMBER),
                    _param("max", "query", "at most this many (1 to 1000)",
                           {"type": "integer"})])},
        "/v1/ws/{name}": {"get": _op(
            "a WebSocket: Message frames out, {reply, body|error} frames in",
            {"101": {"description": "switching to the WebSocket protocol"},
             **_problems(400, 401, 403, 404)}, params=[name])},
        "/v1/reply/{id}": {"post": _op(
            "answer a request taken from an inbox",
            {"204": {"description": "answered"}, **_problems(400, 401, 404, 408, 413)},
            params=[_param("id", "path", "the message's id"),
                    _param("error", "query", "answer with this error instead")],
            body=ANY)},
    }


def _listing() -> dict[str, Any]:
    return {
        "/v1/names": {"get": _op(
            "names and where they live",
            {"200": _json({"type": "array",
                           "items": {"$ref": "#/components/schemas/Registration"}}, "names"),
             **_problems(400, 401, 502)},
            params=[_param("pattern", "query", "a group pattern (default **)")])},
        "/v1/services": {"get": _op(
            "services and their servers",
            {"200": _json({"type": "object", "additionalProperties": {
                "type": "array", "items": {"type": "string"}}}, "service: servers"),
             **_problems(401, 502)})},
        "/v1/health": {"get": _op(
            "is the gateway registered and serving",
            {"200": _json({"$ref": "#/components/schemas/Health"}, "healthy"),
             "503": _json({"$ref": "#/components/schemas/Health"}, "not healthy")},
            open_=True)},
        "/metrics": {"get": _op(
            "Prometheus metrics", {"200": {"description": "text format 0.0.4", "content": {
                "text/plain": {"schema": {"type": "string"}}}}}, open_=True)},
        "/v1/openapi.json": {"get": _op(
            "this document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, open_=True)},
    }


def _schemas() -> dict[str, Any]:
    string, integer, number = {"type": "string"}, {"type": "integer"}, {"type": "number"}
    return {
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": {"type": string, "title": string, "status": integer,
                                   "detail": string, "code": integer}},
        "Publish": {"type": "object", "required": ["topic"], "additionalProperties": False,
                    "properties": {"topic": string, "body": ANY}},
        "HostOptions": {"type": ["object", "null"], "additionalProperties": False,
                        "properties": {"lease": number, "credential": string}},
        "Hosted": {"type": "object", "required": ["name", "credential", "lease"],
                   "properties": {"name": string, "credential": string, "lease": number,
                                  "address": {"type": ["string", "null"]}}},
        "Message": {"type": "object", "required": ["id", "kind", "sender", "body"],
                    "properties": {"id": {"type": ["string", "null"]},
                                   "kind": {"enum": ["send", "request"]}, "sender": string,
                                   "body": ANY,
                                   "expires_in": {"type": ["number", "null"]}}},
        "Registration": {"type": "object",
                         "required": ["name", "addresses", "epoch", "expires_in"],
                         "properties": {"name": string, "epoch": integer, "lease": number,
                                        "addresses": {"type": "array", "items": string},
                                        "expires_in": number, "meta": {"type": "object"}}},
        "Health": {"type": "object", "required": ["ok"],
                   "properties": {"ok": {"type": "boolean"}, "hosted": integer}},
        "Event": {"type": "object", "required": ["seq", "topic", "body"],
                  "properties": {"seq": integer, "topic": string, "body": ANY,
                                 "channel": string}},
        "Gap": {"type": "object", "required": ["reason", "after"],
                "properties": {"reason": {"enum": ["dropped", "history", "restart",
                                                   "slow-consumer"]},
                               "after": integer, "count": {"type": ["integer", "null"]}}},
    }


def _with_refusals(paths: dict[str, Any]) -> dict[str, Any]:
    """Any route may meet the connection cap: 503 problem+json on every operation."""
    refused = _problems(503)["503"]["content"]
    for ops in paths.values():
        for op in ops.values():
            answer = op["responses"].setdefault("503", {
                "description": "refused: too many connections, or busy", "content": {}})
            answer.setdefault("content", {}).update(refused)
    return paths


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of this gateway."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "posa gateway", "version": version,
                 "description": "posa by name over HTTP/JSON (docs/gateway.md)"},
        "paths": _with_refusals(_paths()),
        "components": {"schemas": _schemas(), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
