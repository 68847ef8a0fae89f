"""The web view on an aiohttp application: the page, its live feed, and what feeds it.

``add_routes(app, registry=...)`` mounts, under ``prefix`` (``/view``):

    GET /view/             the page (plain HTML, JS and CSS shipped in the package)
    GET /view/static/...   its script and style sheet
    GET /view/events       the live feed (Server-Sent Events, ``feed.Feed``)
    GET /view/state.json   the whole state now, for programs and scripts

and, while the application runs, watches the registry (``watch()``: each change
reaches the page at once), reads the registry's whole list every ``interval``
seconds (leases left, anything a watch missed), and reads the numbers of the
channels and queues it is given: local objects (``sources``: an
``EventChannel`` has ``stats()``, a ``WorkQueue`` ``metrics()``) or names
asked over posa with ``peer`` (``channels``, ``queues``: the ``stats`` and
``metrics`` requests of their protocols).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from posa.channel.protocol import CHANNEL
from posa.errors import PosaError
from posa.gateway.view.feed import Feed
from posa.gateway.view.state import ViewState
from posa.naming.registration import Registration, Registry
from posa.peer import Peer
from posa.work.protocol import QUEUE

__all__ = ["add_routes", "Board", "page_file"]

log = logging.getLogger("posa.gateway.view")

STATIC = ("index.html", "view.js", "view.css")
_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}


def page_file(name: str) -> bytes:
    """A file of the page, from the package data (``posa/gateway/view/static``)."""
    if name not in STATIC:
        raise web.HTTPNotFound(text=f"no file {name!r} here; the page has {', '.join(STATIC)}")
    return resources.files("posa.gateway.view").joinpath("static").joinpath(name).read_bytes()


def static_response(name: str) -> web.Response:
    """``name`` of the page as an HTTP answer, never cached (the page is small)."""
    kind = _TYPES[name.rpartition(".")[2]]
    return web.Response(body=page_file(name), content_type=kind, charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


@dataclass
class Board:
    """The state of one system, the feed to its browsers, and its clock."""

    clock: Callable[[], float] = time.monotonic
    state: ViewState = field(default_factory=ViewState)
    feed: Feed = field(init=False)

    def __post_init__(self) -> None:
        self.feed = Feed(lambda: self.state.snapshot(self.clock()))

    def changed(self, name: str, registration: Registration | None) -> None:
        """A registry watch callback (any thread)."""
        self.feed.apply(lambda: self.state.changed(name, registration, self.clock()))

    def resync(self, registrations: list[Registration]) -> None:
        """The registry's whole list (``registry.names("**")``)."""
        self.feed.apply(lambda: self.state.resync(registrations, self.clock()))

    def channel(self, name: str, stats: Mapping[str, Any]) -> None:
        """A channel's numbers (``EventChannel.stats()``)."""
        self.feed.apply(lambda: self.state.channel(name, stats, self.clock()))

    def queue(self, name: str, metrics: Mapping[str, Any]) -> None:
        """A work queue's numbers (``WorkQueue.metrics()``)."""
        self.feed.apply(lambda: self.state.queue(name, metrics, self.clock()))


@dataclass
class _Sampler:
    board: Board
    registry: Registry
    sources: Sequence[Any]
    channels: Sequence[str]
    queues: Sequence[str]
    peer: Peer | None
    timeout: float

    def sample(self) -> None:
        """One round (blocking: run it in an executor)."""
        try:
            self.board.resync(self.registry.names("**"))
        except PosaError as exc:
            log.info("web view: the registry did not answer: %s", exc)
        for source in self.sources:
            self._local(source)
        for channel in self.channels:
            stats = self._ask(channel, CHANNEL.request("stats"))
            if stats is not None:
                self.board.channel(channel, stats)
        for queue in self.queues:
            metrics = self._ask(queue, QUEUE.request("metrics"))
            if metrics is not None:
                self.board.queue(queue, metrics)

    def _local(self, source: Any) -> None:
        name = str(getattr(source, "name", "?"))
        stats = getattr(source, "stats", None)
        if callable(stats):
            numbers = stats()
            if isinstance(numbers, Mapping) and "published" in numbers:
                self.board.channel(name, numbers)
                return
        metrics = getattr(source, "metrics", None)
        if callable(metrics):
            numbers = metrics()
            if isinstance(numbers, Mapping) and "pending" in numbers:
                self.board.queue(name, numbers)

    def _ask(self, name: str, body: dict[str, Any]) -> Mapping[str, Any] | None:
        if self.peer is None:
            return None
        try:
            answer = self.peer.request(name, body, timeout=self.timeout)
        except PosaError as exc:
            log.info("web view: %s did not answer: %s", name, exc)
            return None
        return answer if isinstance(answer, Mapping) else None


def add_routes(app: web.Application, *, registry: Registry, prefix: str = "/view",
               sources: Sequence[Any] = (), channels: Sequence[str] = (),
               queues: Sequence[str] = (), peer: Peer | None = None,
               interval: float = 1.0, board: Board | None = None) -> Board:
    """Mount the web view on ``app`` (see the module docstring); return its ``Board``.

    ``channels`` and ``queues`` are names asked over ``peer`` (required with them)."""
    if (channels or queues) and peer is None:
        raise ValueError("channels= and queues= are asked over posa: pass peer=, a "
                         "posa.Peer of this process, with them")
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"prefix must start with '/' and not end with one, e.g. '/view'; "
                         f"got {prefix!r}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    board = board if board is not None else Board()
    sampler = _Sampler(board, registry, tuple(sources), tuple(channels), tuple(queues),
                       peer, timeout=max(0.5, interval))

    async def page(request: web.Request) -> web.Response:
        return static_response("index.html")

    async def static(request: web.Request) -> web.Response:
        return static_response(request.match_info["file"])

    async def state(request: web.Request) -> web.Response:
        return web.json_response(board.feed.snapshot(), dumps=_dumps)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(prefix + "/")

    app.router.add_get(prefix, redirect)
    app.router.add_get(prefix + "/", page)
    app.router.add_get(prefix + "/static/{file}", static)
    app.router.add_get(prefix + "/events", board.feed.handle)
    app.router.add_get(prefix + "/state.json", state)
    app.cleanup_ctx.append(lambda app: _watching(board, registry, sampler, interval))
    return board


async def _watching(board: Board, registry: Registry, sampler: _Sampler,
                    interval: float) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    unsubscribe = await loop.run_in_executor(None, registry.watch, board.changed)
    await _sample(sampler)      # before the app serves: state.json is never empty at start
    task = asyncio.create_task(_sample_forever(sampler, interval))
    try:
        yield
    finally:
        unsubscribe()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def _sample(sampler: _Sampler) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(None, sampler.sample)
    except Exception:       # a source that fails must not stop the view
        log.exception("web view: sampling failed")


async def _sample_forever(sampler: _Sampler, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await _sample(sampler)


def _dumps(value: Any) -> str:
    import json
    return json.dumps(value, default=str)
