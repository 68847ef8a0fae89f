"""What is there: ``GET /v1/names``, ``/v1/services``, ``/v1/health``, ``/metrics``.

``/v1/health`` and ``/metrics`` need no token (like ``posa dispatcher
--ops-port``'s): health is 200 while the gateway's own peer is registered at its
address (503 otherwise), metrics are the Prometheus text of the gateway's peer
(``posa.ops.Monitor``) and the gateway's own counters (``posa_gateway_*``).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from posa.gateway.core import Gateway
from posa.gateway.http import GATEWAY, GUARD, json_response, principal
from posa.naming.registration import Registration
from posa.ops import Monitor
from posa.wire.names import validate_pattern

__all__ = ["add_routes"]


def _entry(r: Registration) -> dict[str, Any]:
    return {"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
            "lease": r.lease, "expires_in": round(r.expires_in, 3), "meta": dict(r.meta)}


async def names(request: web.Request) -> web.Response:
    pattern = validate_pattern(request.query.get("pattern", "**"))
    gateway = request.app[GATEWAY]
    who = principal(request)
    found = await gateway.blocking(
        lambda: [r for page in gateway.registry.pages(pattern) for r in page])  # type: ignore[attr-defined]
    return json_response([_entry(r) for r in found if who.may_reach(r.name)])


async def services(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    found: dict[str, list[str]] = await gateway.blocking(gateway.registry.services)  # type: ignore[attr-defined]
    who = principal(request)
    return json_response({s: sorted(servers) for s, servers in sorted(found.items())
                          if who.may_reach(s)})


async def health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    report: dict[str, Any] = await gateway.blocking(Monitor(gateway.peer.sync).health)
    report["hosted"] = len(gateway.hosting.names)
    return json_response(report, status=200 if report["ok"] else 503)


def _counters(gateway: Gateway, connections: int, refused: dict[str, int]) -> str:
    c = gateway.counters
    lines = ["# HELP posa_gateway_responses_total HTTP responses by status",
             "# TYPE posa_gateway_responses_total counter"]
    lines += [f'posa_gateway_responses_total{{status="{k[7:]}"}} {v}'
              for k, v in sorted(c.items()) if k.startswith("status_")]
    for key, kind, text in (
            ("sse_streams", "counter", "event streams opened"),
            ("sse_events", "counter", "events written to event streams"),
            ("sse_slow_consumers", "counter", "event streams ended for falling behind"),
            ("hosted_registered", "counter", "names registered for HTTP programs"),
            ("hosted_expired", "counter", "hosted names whose program vanished (lease)"),
            ("inbox_dropped", "counter", "one-way messages dropped by a full hosted inbox")):
        lines += [f"# HELP posa_gateway_{key}_total {text}",
                  f"# TYPE posa_gateway_{key}_total {kind}",
                  f"posa_gateway_{key}_total {c[key]}"]
    lines += ["# HELP posa_gateway_hosted_names names served for HTTP programs now",
              "# TYPE posa_gateway_hosted_names gauge",
              f"posa_gateway_hosted_names {len(gateway.hosting.names)}",
              "# HELP posa_gateway_connections HTTP connections open now",
              "# TYPE posa_gateway_connections gauge",
              f"posa_gateway_connections {connections}",
              "# HELP posa_gateway_refused_total connections refused or cut, by cause",
              "# TYPE posa_gateway_refused_total counter"]
    lines += [f'posa_gateway_refused_total{{cause="{k}"}} {v}' for k, v in sorted(refused.items())]
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    gateway, guard = request.app[GATEWAY], request.app[GUARD]
    text = Monitor(gateway.peer.sync).metrics() + _counters(
        gateway, len(guard.connections), dict(guard.refused))
    return web.Response(text=text, content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/names", names)
    app.router.add_get("/v1/services", services)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
