"""The admin service ``netmgmt/admin``: administrators' requests, routed to the agents.

Client-Dispatcher-Server: every process that hosts agents may run one server
of ``netmgmt/admin``; an administrator's ``posa.Client`` asks the dispatcher
for one, and fails over to another if it goes away.  A server handles a
request by asking the agents concerned *by name* (it does not care where they
live), so any server can answer any request.

    {"op": "routes", "router": R}                 R's routing table and links
    {"op": "link", "link": [A, B], "up": bool}    take a link down / bring it up
    {"op": "link", "link": [A, B], "weight": W}   change a link's weight
    {"op": "migrate", "router": R, "listen": ADDRESS}   move R's agent (in its process)
    {"op": "quiet" | "stats", "router": R}        R's message counters

From a shell:  posa request netmgmt/admin/srv-XXXX '{"op": "routes", "router": "site-a/r1"}'
(``posa services`` lists the servers).
"""
from __future__ import annotations

import time
from typing import Any

import posa
from posa import Registry

from .network import peer_name

__all__ = ["SERVICE", "AdminService", "AdminClient"]

SERVICE = "netmgmt/admin"
ATTEMPT = 3.0       # seconds to wait for an agent's answer before asking again


class AdminService:
    """One server of ``netmgmt/admin`` (its handler runs on worker threads, since
    it waits for the agents' answers)."""

    def __init__(self, registry: Registry, *, listen: str, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.server = posa.Server(SERVICE, self.handle, registry=registry, listen=listen,
                                  workers=2)

    def handle(self, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            raise posa.Rejected('an admin request is a map with "op", e.g. '
                                '{"op": "routes", "router": "site-a/r1"}')
        op = body["op"]
        try:
            if op == "link":
                a, b = body["link"]
                change = {k: body[k] for k in ("up", "weight") if k in body}
                return {a: self._ask(a, {"op": "set-link", "neighbor": b, **change}),
                        b: self._ask(b, {"op": "set-link", "neighbor": a, **change})}
            if op in ("routes", "quiet", "stats", "migrate"):
                return self._ask(body["router"],
                                 {k: v for k, v in body.items() if k != "router"})
        except (KeyError, TypeError, ValueError) as exc:
            raise posa.Rejected(f"admin op {op!r} is missing or has a malformed field "
                                f"({exc!r}); see the fields in examples/netagents/admin.py"
                                ) from None
        raise posa.Rejected(f"unknown admin op {op!r}; use routes, link, migrate, quiet "
                            "or stats")

    def _ask(self, router: str, request: dict[str, Any]) -> Any:
        """Ask ``router``'s agent. Every request but ``migrate`` sets or reads a
        state, so asking twice does no harm: one that gets no answer within
        ``ATTEMPT`` seconds is asked again (a reply can miss its requester while
        the agent has just moved; see docs/netagents.md), until ``timeout``."""
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            attempt = remaining if request["op"] == "migrate" else min(ATTEMPT, remaining)
            try:
                return self.server.peer.request(peer_name(router), request,
                                                timeout=max(attempt, 0.01))
            except posa.Timeout:
                if attempt >= remaining:
                    raise

    def close(self) -> None:
        self.server.close()


class AdminClient:
    """What an administrator uses: calls ``netmgmt/admin`` wherever it is served.

    It fails over to another server when one goes away (its process exits), but
    does not send a request again after a timeout: a request that timed out
    may have been carried out, and the server waits longer for the agents than
    this client waits for the server."""

    def __init__(self, registry: Registry, *, timeout: float = 15.0) -> None:
        self.client = posa.Client(registry=registry, timeout=timeout, attempt_timeout=timeout)

    def call(self, op: str, **fields: Any) -> Any:
        return self.client.call(SERVICE, {"op": op, **fields})

    def routes(self, router: str) -> dict[str, Any]:
        return self.call("routes", router=router)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.client.close()
