"""What every route shares: JSON in and out, parameters, errors as problems.

Bodies are JSON both ways (an empty request body is ``null``); bytes in a
posa body come out as ``{"$base64": "..."}``.  ``errors`` is the middleware
that turns every error into ``application/problem+json``
(``posa.gateway.problems``), checks the bearer token of every route but the
open ones (health, metrics, the OpenAPI document) and tells the connection
guard when a request starts and ends.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from posa.errors import PosaError
from posa.gateway.core import Gateway
from posa.gateway.limits import BodyTimeout, ConnectionGuard
from posa.gateway.problems import CONTENT_TYPE, BadInput, problem, problem_of
from posa.gateway.tokens import Principal, TokenRefused

__all__ = ["GATEWAY", "GUARD", "OPEN", "errors", "read_json", "to_json", "json_response",
           "principal", "seconds", "problem_response"]

log = logging.getLogger("posa.gateway")

GATEWAY = web.AppKey("gateway", Gateway)
GUARD = web.AppKey("guard", ConnectionGuard)
OPEN = frozenset({"/v1/health", "/metrics", "/v1/openapi.json"})
VIEW = "/view/"                 # the web view: a browser cannot send a bearer header,
VIEW_COOKIE = "posa_view"       # so /view/?token=T sets this cookie (its paths only)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def to_json(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=to_json(value), status=status, content_type="application/json")


def problem_response(body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(text=to_json(body), status=int(body["status"]),
                        content_type=CONTENT_TYPE, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (``null`` if empty), within the body deadline."""
    gateway = request.app[GATEWAY]
    try:
        raw = await asyncio.wait_for(request.read(), gateway.limits.body_timeout)
    except asyncio.TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {gateway.limits.body_timeout} s"
                          ) from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"the body must be JSON ({exc}); for a string, quote it: "
                       "'\"hello\"'") from None
    except RecursionError:
        raise BadInput("the body nests too deep to read; posa carries bodies nested at "
                       "most 64 deep") from None


def seconds(request: web.Request, key: str, default: float) -> float:
    """A query parameter in seconds, within (0, the gateway's max_wait]."""
    text = request.query.get(key)
    if text is None:
        return default
    limit = request.app[GATEWAY].limits.max_wait
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= limit:
        raise BadInput(f"?{key}= must be a number of seconds from 0 to {limit}")
    return value


def principal(request: web.Request) -> Principal:
    found: Principal = request["principal"]
    return found


def _http_problem(exc: web.HTTPException) -> dict[str, Any]:
    slug = exc.reason.lower().replace(" ", "-")
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        detail = ("the body is larger than this gateway takes; send less, or raise "
                  "posa gateway --max-body")
    return problem(exc.status, slug, exc.reason, detail)


def _authorization(request: web.Request) -> str | None:
    """The bearer token: the header, else on the view's paths its cookie, else
    (to log in to the view) ``/view/?token=``."""
    header = request.headers.get("Authorization")
    if header is not None or not request.path.startswith(VIEW):
        return header
    token = request.query.get("token") if request.path == VIEW else None
    token = token or request.cookies.get(VIEW_COOKIE)
    return None if token is None else f"Bearer {token}"


def _view_login(request: web.Request) -> web.Response:
    """``/view/?token=T`` with a good token: keep it in an HttpOnly cookie for the
    view's paths and drop it from the address bar (303 to ``/view/``)."""
    response = web.Response(status=303, headers={"Location": VIEW})
    response.set_cookie(VIEW_COOKIE, request.query["token"], path=VIEW, httponly=True,
                        samesite="Strict", secure=request.secure)
    return response


async def _closing(request: web.Request, response: web.Response) -> web.Response:
    """``response`` written, then its connection closed at once: not kept open
    (and counted against its source's cap) by aiohttp's lingering, 10 s spent
    reading the rest of a body that stalled. aiohttp's own writing of it later
    finds it written."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    gateway, guard = request.app[GATEWAY], request.app[GUARD]
    guard.started(request.transport)
    try:
        if request.path not in OPEN:
            request["principal"] = gateway.principal(_authorization(request))
        response = _view_login(request) if request.path == VIEW and "token" in \
            request.query else await handler(request)
        gateway.counters[f"status_{response.status}"] += 1
        return response
    except TokenRefused as exc:
        gateway.counters["status_401"] += 1
        return problem_response(problem(401, "token-refused", "Unauthorized", str(exc)),
                                **{"WWW-Authenticate": 'Bearer realm="posa"'})
    except BodyTimeout as exc:
        gateway.counters["status_408"] += 1
        return await _closing(request, problem_response(
            problem(408, "body-timeout", "Request Timeout", str(exc)), Connection="close"))
    except PosaError as exc:
        body = problem_of(exc)
        gateway.counters[f"status_{body['status']}"] += 1
        return problem_response(body)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        gateway.counters[f"status_{exc.status}"] += 1
        return problem_response(_http_problem(exc), **{
            k: v for k, v in exc.headers.items() if k in ("Allow",)})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("gateway: %s %s failed", request.method, request.path)
        gateway.counters["status_500"] += 1
        return problem_response(problem_of(RuntimeError()))
    finally:
        guard.finished(request.transport)
