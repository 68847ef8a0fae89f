"""``--web``: the demo in a browser, as it runs.

    python -m examples.netagents --web [--port 8081]

``WebView`` is the demo's ``View`` (one line per event on the terminal, as
without ``--web``) that also draws the network in a page: the routers of both
sites and the links between them (a link that goes down turns red and dashed,
a weight that changes is relabelled), where each agent lives (its transport
and epoch, from the registry's ``watch``), the routes of the router you click
(from the ``route/changed`` alerts: its shortest-path tree is drawn on the
graph, and its table listed), the alerts as they come, and the agent that
migrates. The page is plain HTML, JS and CSS beside this module
(``webpage/``); it is served, with posa's own live view of every name at
``/view/``, by ``posa.gateway.view`` (needs the ``gateway`` extra: aiohttp).

The scenario starts once a browser has the page open (or after ``wait``
seconds), so nothing happens before someone watches; at the end, the page
stays up with the outcome until Ctrl-C.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from posa import Registration, Registry
from posa.gateway.view import Feed, serve

from .network import Network, router_of
from .scenario import View, describe

__all__ = ["NetBoard", "WebView"]

PAGE = Path(__file__).with_name("webpage")
FILES = {"index.html": "text/html", "graph.js": "text/javascript", "graph.css": "text/css"}
ALERTS_KEPT = 300


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class NetBoard:
    """The network as the page draws it; every method returns the updates to send.
    No I/O and no lock: ``WebView`` calls it under its feed's lock."""

    def __init__(self, network: Network) -> None:
        self.routers = list(network.routers)
        self.links = {f"{a}|{b}": {"a": a, "b": b, "weight": link.weight, "up": link.up}
                      for (a, b), link in network.links.items()}
        self.agents: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.outcome: dict[str, Any] | None = None

    def agent(self, name: str, registration: Registration | None) -> list[dict[str, Any]]:
        """A change of an agent's name in the registry."""
        router = router_of(name)
        if router not in self.routers or name.count("/") != 2:
            return []
        old = self.agents.get(router)
        if registration is None:
            if old is None:
                return []
            entry = {**old, "live": False}
        else:
            address = registration.addresses[0]
            moved = old is not None and registration.epoch > old["epoch"] \
                and address != old["address"]     # in this process, or handed over
            entry = {"router": router, "address": address, "live": True,
                     "transport": address.partition("://")[0], "epoch": registration.epoch,
                     "migrated": moved or bool(old and old.get("migrated"))}
        self.agents[router] = entry
        return [{"type": "agent", **entry}]

    def alert(self, topic: str, body: dict[str, Any], at: float) -> list[dict[str, Any]]:
        """An alert from ``events/netmgmt``."""
        updates: list[dict[str, Any]] = []
        router = str(body.get("router", ""))
        if topic.startswith("link/"):
            key = "|".join(sorted([router, str(body.get("neighbor", ""))]))
            link = self.links.get(key)
            if link is not None:
                link.update(up=topic != "link/down",
                            weight=body.get("weight", link["weight"]))
                updates.append({"type": "link", "key": key, **link})
        elif topic == "agent/migrated" and router in self.agents:
            self.agents[router]["migrated"] = True
            updates.append({"type": "agent", **self.agents[router]})
        elif topic == "route/changed":
            table = self.routes.setdefault(router, {})
            for dest, _old, new in body.get("changes") or []:
                if new is None:
                    table.pop(dest, None)
                else:
                    table[dest] = new
            updates.append({"type": "routes", "router": router, "routes": table})
        alert = {"at": round(at, 2), "topic": topic, "router": router,
                 "text": describe(topic, body)}
        self.alerts = (self.alerts + [alert])[-ALERTS_KEPT:]
        return updates + [{"type": "alert", **alert}]

    def say(self, text: str, at: float) -> list[dict[str, Any]]:
        """A line of the driver (a step, a convergence)."""
        self.lines = (self.lines + [text])[-ALERTS_KEPT:]
        return [{"type": "say", "at": round(at, 2), "text": text}]

    def done(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        self.outcome = {"ok": bool(result.get("ok")), "messages": result.get("messages"),
                        "migration": result.get("migration")}
        return [{"type": "finished", **self.outcome}]

    def snapshot(self) -> dict[str, Any]:
        return {"type": "snapshot", "routers": self.routers, "links": list(self.links.values()),
                "agents": list(self.agents.values()), "routes": self.routes,
                "alerts": self.alerts, "lines": self.lines[-20:], "outcome": self.outcome}


class WebView(View):
    """The terminal view, and the page (see the module docstring)."""

    def __init__(self, network: Network, *, port: int = 8081, host: str = "127.0.0.1",
                 wait: float = 30.0, out: TextIO = sys.stdout) -> None:
        super().__init__(out)
        self.board = NetBoard(network)
        self.feed = Feed(self.board.snapshot)
        self.host, self.port, self.wait = host, port, wait
        self.server: Any = None
        self._unwatch: Any = None

    def _mount(self, app: web.Application) -> None:
        async def page(request: web.Request) -> web.Response:
            name = request.match_info.get("file") or "index.html"
            if name not in FILES:
                raise web.HTTPNotFound(text=f"no {name!r}; the page has {', '.join(FILES)}")
            return web.Response(body=(PAGE / name).read_bytes(), content_type=FILES[name],
                                charset="utf-8", headers={"Cache-Control": "no-cache"})
        app.router.add_get("/", page)
        app.router.add_get("/netagents/events", self.feed.handle)
        app.router.add_get("/netagents/{file}", page)

    def attach(self, registry: Registry) -> None:
        """Serve the page, follow the agents' names, and wait for a browser."""
        self.server = serve(registry=registry, host=self.host, port=self.port,
                            setup=self._mount, interval=1.0)
        with self.feed.lock:
            for registration in registry.names("netmgmt/**"):
                self.feed.publish(self.board.agent(registration.name, registration))
            self._unwatch = registry.watch(
                lambda name, r: self.feed.apply(lambda: self.board.agent(name, r)))
        self.say(f"web view at {self.server.url}/ (every name: {self.server.url}/view/)")
        deadline = time.monotonic() + self.wait
        while self.feed.viewers == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.say("a browser is watching: the scenario starts" if self.feed.viewers else
                 f"no browser within {self.wait:g} s: the scenario starts anyway")

    def say(self, text: str) -> None:
        super().say(text)
        if not text.startswith("  alert "):         # an alert is published as itself
            self.feed.apply(lambda: self.board.say(text, time.monotonic() - self.start))

    def alert(self, topic: str, body: dict[str, Any]) -> None:
        super().alert(topic, body)
        self.feed.apply(lambda: self.board.alert(topic, body, time.monotonic() - self.start))

    def done(self, result: dict[str, Any]) -> None:
        """Show the outcome, and keep the page up until Ctrl-C or SIGTERM."""
        self.feed.apply(lambda: self.board.done(result))
        if self.server is None:
            return
        self.say(f"the web view stays at {self.server.url}/ until Ctrl-C")
        for sig in (signal.SIGINT, signal.SIGTERM):     # the run may have ignored them
            signal.signal(sig, _interrupt)
        forever = threading.Event()
        try:
            while not forever.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.server is not None:
            self.server.close()
            self.server = None
