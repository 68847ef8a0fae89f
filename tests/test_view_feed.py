"""The web view over plain HTTP (no browser): the routes, the SSE feed's snapshot and
updates, a viewer too slow to keep up, the viewer cap, what a bad argument is told,
and the netagents page's model."""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import posa
from posa.gateway.view import Feed, add_routes, serve
from tests.support import wait_until
from tests.test_gateway_support import start_world


async def _lines(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` updates of an event stream (with a deadline)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        line = await asyncio.wait_for(response.content.readline(), 20)
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            found.append(json.loads(line[6:]))
    return found


def _with_feed(feed: Feed, body: Callable[[str], Awaitable[None]]) -> None:
    def setup(app: web.Application) -> None:
        app.router.add_get("/events", feed.handle)
    with serve(port=0, setup=setup) as server:
        asyncio.run(body(server.url))


def test_a_viewer_gets_the_snapshot_then_every_update_from_any_thread() -> None:
    state = {"n": 0}
    feed = Feed(lambda: {"type": "snapshot", "n": state["n"]})

    def bump() -> list[dict[str, Any]]:
        state["n"] += 1
        return [{"type": "n", "n": state["n"]}]

    async def body(url: str) -> None:
        async with aiohttp.ClientSession() as session, \
                session.get(url + "/events") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            first = await _lines(response, 1)
            assert first == [{"type": "snapshot", "n": state["n"]}]
            threads = [threading.Thread(target=lambda: [feed.apply(bump) for _ in range(50)])
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            got = await _lines(response, 200)
            for thread in threads:
                thread.join()
            start = first[0]["n"] + 1
            assert [u["n"] for u in got] == list(range(start, start + 200))
    feed.apply(bump)
    _with_feed(feed, body)


def test_a_viewer_that_falls_behind_is_reset_not_waited_for() -> None:
    feed = Feed(lambda: {"type": "snapshot"}, backlog=10)

    async def body(url: str) -> None:
        async with aiohttp.ClientSession() as session, \
                session.get(url + "/events") as response:
            await _lines(response, 1)
            with feed.lock:                   # 11 updates before the viewer can take one
                for i in range(11):
                    feed.publish([{"type": "n", "n": i}])
            assert await _lines(response, 1) == [{"type": "reset"}]
            assert (await asyncio.wait_for(response.content.read(), 20)).strip() == b""
        wait_until(lambda: feed.viewers == 0, what="the viewer dropped")
    _with_feed(feed, body)


def test_viewers_beyond_the_cap_are_refused_with_503() -> None:
    feed = Feed(lambda: {"type": "snapshot"}, max_viewers=1)

    async def body(url: str) -> None:
        async with aiohttp.ClientSession() as session, \
                session.get(url + "/events") as first:
            await _lines(first, 1)
            async with session.get(url + "/events") as second:
                assert second.status == 503
                assert "viewers are connected" in await second.text()
    _with_feed(feed, body)


def test_the_routes_serve_the_page_and_the_state() -> None:
    registry = posa.LocalRegistry()
    registry.register("a/one", ["tcp://h:1"], credential="c")

    async def body(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/view/") as page:
                text = await page.text()
                assert page.status == 200 and "static/view.js" in text
            async with session.get(url + "/view/static/view.js") as script:
                assert script.content_type == "text/javascript"
            async with session.get(url + "/view/static/nothing.js") as missing:
                assert missing.status == 404
            async with session.get(url + "/view/events") as events:
                snapshot = (await _lines(events, 1))[0]
            assert [n["name"] for n in snapshot["names"]] == ["a/one"]
            async with session.get(url + "/view/state.json") as state:
                assert (await state.json())["names"][0]["address"] == "tcp://h:1"
    with serve(registry=registry, port=0, interval=0.1) as server:
        asyncio.run(body(server.url))


def test_the_first_state_is_read_before_the_view_serves() -> None:
    """A program that reads state.json the moment the view is up gets the
    registry's names, not an empty state while the first read is on its way:
    while that read is held, the view does not start serving."""
    entered, gate = threading.Event(), threading.Event()

    class Held(posa.LocalRegistry):
        def names(self, pattern: str = "**") -> list[posa.Registration]:
            entered.set()
            gate.wait(30)
            return super().names(pattern)

    registry = Held()
    registry.register("a/one", ["tcp://h:1"], credential="c")
    served: list[Any] = []
    up = threading.Event()

    def run() -> None:
        with serve(registry=registry, port=0, interval=60) as server:
            served.append(server)
            up.set()
            gate.wait(30)
            with urllib.request.urlopen(server.url + "/view/state.json", timeout=10) as r:
                served.append([n["name"] for n in json.load(r)["names"]])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(30)
    assert not up.wait(1.0), "the view served before its first read of the registry"
    gate.set()
    thread.join(30)
    assert served[1:] == [["a/one"]]


def test_bad_arguments_say_what_to_pass() -> None:
    app, registry = web.Application(), posa.LocalRegistry()
    with pytest.raises(ValueError, match="pass peer="):
        add_routes(app, registry=registry, channels=["events/x"])
    with pytest.raises(ValueError, match="prefix must start"):
        add_routes(app, registry=registry, prefix="view/")
    with pytest.raises(ValueError, match="interval"):
        add_routes(app, registry=registry, interval=0)


def test_the_netagents_board_follows_links_routes_and_the_migration() -> None:
    from examples.netagents.network import build, peer_name
    from examples.netagents.web import NetBoard
    network = build(1)
    board = NetBoard(network)
    (a, b), _ = next(iter(network.links.items()))
    updates = board.alert("link/down", {"router": a, "neighbor": b}, at=1.0)
    assert updates[0] == {"type": "link", "key": f"{a}|{b}", "a": a, "b": b,
                          "weight": network.links[(a, b)].weight, "up": False}
    board.alert("route/changed", {"router": a, "changes": [[b, None, [b, 3]]]}, at=2.0)
    assert board.routes[a] == {b: [b, 3]}
    name = peer_name(a)
    board.agent(name, posa.Registration(name, ("tcp://h:1",), 1, 10.0, 10.0, {}))
    moved = board.agent(name, posa.Registration(name, ("zmq+tcp://h:2",), 2, 10.0, 10.0, {}))
    assert moved[0]["migrated"] and moved[0]["transport"] == "zmq+tcp"
    assert board.agent("netmgmt/handover/x/state", None) == []
    json.dumps(board.snapshot())


def test_channels_and_queues_named_are_asked_over_posa() -> None:
    registry = posa.LocalRegistry()
    channel = posa.EventChannel("events/remote", registry=registry,
                                listen="tcp://127.0.0.1:0")
    queue = posa.WorkQueue("jobs/remote", registry=registry, listen="tcp://127.0.0.1:0")
    queue.put({"a": 1, "b": 2})
    asker = posa.Peer("view/asker", registry=registry)
    try:
        with serve(registry=registry, port=0, peer=asker, channels=["events/remote"],
                   queues=["jobs/remote"], interval=0.1) as server:
            assert server.board is not None
            board = server.board
            wait_until(lambda: "events/remote" in board.state.channels
                       and "jobs/remote" in board.state.queues, what="both asked")
            assert board.state.queues["jobs/remote"]["depth"] == 2
    finally:
        for closeable in (asker, queue, channel):
            closeable.close()


def test_posa_gateway_serves_the_view_behind_its_tokens(tmp_path: Path) -> None:
    world = start_world(tmp_path)
    try:
        world.spec = {}         # the view's routes are not the API's: not in its document
        state = world.call("GET", "/view/state.json")
        assert state.status == 200, state.body
        assert {"events/gw", "posa/dispatcher"} <= {n["name"] for n in state.body["names"]}
        page = world.call("GET", "/view/")
        assert page.status == 200 and "static/view.js" in page.body
        assert world.call("GET", "/view/state.json", token=None).status == 401
        # a browser sends no bearer header: /view/?token= keeps it in a cookie
        from tests.test_gateway_support import TOKEN
        assert world.call("GET", "/view/?token=wrong-token", token=None).status == 401
        login = world.call("GET", f"/view/?token={TOKEN}", token=None)
        assert login.status == 303 and login.headers["location"] == "/view/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Path=/view/" in cookie, cookie
        pair = cookie.split(";", 1)[0]
        assert world.call("GET", "/view/state.json", token=None,
                          headers={"Cookie": pair}).status == 200
        assert world.call("GET", "/v1/names", token=None,           # the view's paths only
                          headers={"Cookie": pair}).status == 401
    finally:
        world.close()
