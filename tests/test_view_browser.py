"""The web view, and the netagents demo's graph, in a real headless Chromium.

Chromium is driven over the DevTools protocol (a WebSocket, from aiohttp's
client): the tests load the page, wait on conditions in the page's DOM with
deadlines, collect every console error and uncaught exception, and save a
screenshot under the test's temporary folder. Debian's ``chromium`` package:
``.ci/run`` installs it (as root) when it is missing.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import posa
from posa.gateway.view import serve
from tests.support import Proc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium, as root; "
    ".ci/run installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1366,800", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


class Page:
    """One tab over the DevTools protocol: commands, console errors, waiting."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._next = 0
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame.data)
            if "id" in message:
                future = self._answers.pop(message["id"])
                if "error" in message:
                    future.set_exception(AssertionError(f"DevTools: {message['error']}"))
                else:
                    future.set_result(message.get("result", {}))
            else:
                self._event(message["method"], message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(json.dumps(params["args"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    async def send(self, method: str, **params: Any) -> Any:
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[self._next] = future
        await self.ws.send_str(json.dumps({"id": self._next, "method": method,
                                           "params": params}))
        return await asyncio.wait_for(future, 30)

    async def open(self, url: str) -> None:
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """The value of ``expression`` once it is truthy (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        guarded = (f"(() => {{ try {{ const v = {expression}; return v instanceof Node || v; }}"
                   " catch (e) { return null; } })()")
        while True:
            value = await self.evaluate(guarded)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page did not show {what} within " \
                f"{timeout} s; errors: {self.errors}"
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


class Chromium:
    """A headless Chromium process with the DevTools protocol on a free port."""

    def __init__(self, folder: Path) -> None:
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={folder / 'profile'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.endpoint = self._endpoint()

    def _endpoint(self) -> str:
        """The ``host:port`` Chromium prints on stderr once DevTools listens."""
        assert self.process.stderr is not None
        deadline, seen = time.monotonic() + 60, b""
        while b"DevTools listening on ws://" not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and self.process.poll() is None, f"chromium: {seen[-2000:]!r}"
            ready, _, _ = select.select([self.process.stderr], [], [], left)
            if ready:
                seen += os.read(self.process.stderr.fileno(), 65536)
        line = seen.split(b"DevTools listening on ws://", 1)[1].split(b"\n", 1)[0]
        return line.split(b"/", 1)[0].decode()

    async def page(self, session: aiohttp.ClientSession) -> Page:
        async with session.get(f"http://{self.endpoint}/json/list") as answer:
            targets = await answer.json()
        target = next(t for t in targets if t["type"] == "page")
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(ws)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(30)


@pytest.fixture
def chromium(tmp_path: Path) -> Any:
    browser = Chromium(tmp_path)
    try:
        yield browser
    finally:
        browser.close()


NAME_ROW = 'document.querySelector(\'#names tr[data-name="{}"]\')'


def test_the_view_shows_names_migrations_and_drops_live(chromium: Chromium,
                                                        tmp_path: Path) -> None:
    registry = posa.LocalRegistry()
    channel = posa.EventChannel("events/orders", registry=registry)
    mover = posa.Peer("orders/api", registry=registry, listen="tcp://127.0.0.1:0")
    late: list[Any] = []
    try:
        with serve(registry=registry, port=0, sources=[channel], interval=0.2) as server:
            asyncio.run(_watch_the_view(chromium, server.url, registry, mover, late,
                                        tmp_path))
    finally:
        for closeable in [*late, mover, channel]:
            closeable.close()


async def _watch_the_view(chromium: Chromium, url: str, registry: posa.LocalRegistry,
                          mover: posa.Peer, late: list[Any], tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        page = await chromium.page(session)
        await page.open(url + "/view/")
        await page.wait_for("document.getElementById('status').textContent === 'live'",
                            "the live feed connected")
        await page.wait_for(NAME_ROW.format("orders/api"), "a name there before it loaded")
        late.append(posa.Peer("billing/late", registry=registry,
                              listen="inproc://billing-late"))
        transport = await page.wait_for(
            NAME_ROW.format("billing/late") + "?.dataset.transport",
            "a name registered after the page loaded")
        assert transport == "inproc"
        mover.migrate("zmq+tcp://127.0.0.1:0", grace=0.1)
        await page.wait_for(
            "document.querySelector('#log li[data-kind=\"migrated\"][data-name=\"orders/api\"]')"
            " && " + NAME_ROW.format("orders/api") + ".dataset.transport === 'zmq+tcp'",
            "the migration, in the log and in the names")
        late.append(posa.Subscriber("events/orders", registry=registry, buffer=10, inbox=1))
        late.append(posa.Publisher("events/orders", registry=registry))
        for i in range(300):
            late[-1].publish("orders/new", {"i": i})
        dropped = await page.wait_for(
            "+document.querySelector('#channels tr[data-channel=\"events/orders\"]')"
            "?.dataset.dropped", "the channel's drops")
        assert dropped > 0
        await page.wait_for("document.querySelector('#log li[data-kind=\"drops\"]')",
                            "the drops in the log")
        await page.screenshot(tmp_path / "view.png")
        assert page.errors == [], page.errors
        await page.ws.close()


def test_netagents_web_draws_the_network_and_follows_it(chromium: Chromium,
                                                        tmp_path: Path) -> None:
    demo = Proc([sys.executable, "-m", "examples.netagents", "--web", "--port", "0",
                 "--pace", "0.5"])
    try:
        url = ""
        for _ in range(100):        # the address comes within the first lines
            line = demo.line(60)
            if "web view at " in line:
                url = line.split("web view at ")[1].split()[0].rstrip("/")
                break
        assert url, "the demo did not say where its page is"
        asyncio.run(_watch_the_demo(chromium, url, tmp_path))
        demo.popen.send_signal(signal.SIGTERM)
        out, err = demo.popen.communicate(timeout=60)
    finally:
        if demo.popen.poll() is None:
            demo.popen.kill()
            demo.popen.wait(30)
    result = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
    assert result and json.loads(result[-1][7:])["ok"], (out + err).decode()[-3000:]


async def _watch_the_demo(chromium: Chromium, url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        page = await chromium.page(session)
        await page.open(url)
        routers = await page.wait_for(
            "[...document.querySelectorAll('#graph [data-router]')]"
            ".map(n => n.dataset.router).sort()", "the demo's routers")
        assert routers == [f"site-{s}/r{i}" for s in "ab" for i in range(1, 5)]
        assert await page.evaluate(
            "document.querySelectorAll('#graph .link.down').length") == 0
        down = await page.wait_for(
            "[...document.querySelectorAll('#graph .link.down')].map(l => l.dataset.link)",
            "a link going down")
        assert len(down) >= 1
        await page.wait_for("document.querySelector('#graph [data-router].migrated')",
                            "the agent that migrated", timeout=60)
        await page.wait_for("document.querySelector('#alerts li[data-topic=\"route/changed\"]')",
                            "routes changing")
        await page.screenshot(tmp_path / "netagents.png")
        await page.wait_for("document.body.dataset.finished === 'ok'", "the end of the run", 60)
        await page.screenshot(tmp_path / "netagents-end.png")
        assert page.errors == [], page.errors
        await page.ws.close()

