"""The gateway from outside Python and against its own document: the curl session
of docs/gateway.md run verbatim, a Node program using only its built-in fetch, and
the OpenAPI document compared with the router."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from posa.gateway.app import make_app
from posa.gateway.limits import ConnectionGuard, EdgeLimits
from posa.gateway.openapi import document
from tests.support import ROOT
from tests.test_gateway_support import TOKEN, World, start_world

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(tmp_path_factory.mktemp("gwclients"), channel_name="events/demo")
    try:
        yield world
    finally:
        world.close()


def test_the_curl_session_of_the_docs_runs(world: World, tmp_path: Path) -> None:
    assert shutil.which("curl"), "curl is needed (Debian package curl)"
    text = (ROOT / "docs" / "gateway.md").read_text()
    [session] = re.findall(r"```sh\n(# session\n.*?)```", text, re.S)
    done = subprocess.run(["bash", "-e", "-c", session], cwd=tmp_path, capture_output=True,
                          text=True, timeout=90,
                          env=dict(os.environ, GW=world.url, TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '"ok":true' in out and '"name":"demo/shell"' in out
    assert 'the requester got: "pong"' in out
    assert 'id: 1\nevent: event\ndata: {"seq":1,"topic":"alerts/link"' in out
    assert '"type":"urn:posa:problem:name-not-found"' in out and '"code":2' in out
    assert out.rstrip().endswith("401")


NODE = r"""
const [gw, token] = process.argv.slice(2);
const auth = {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"};
const post = (path, body) => fetch(gw + path, {method: "POST", headers: auth,
                                               body: JSON.stringify(body)});
async function events(path, headers, count) {
  // read `count` Server-Sent Events from a stream with fetch's body reader
  const res = await fetch(gw + path, {headers: {...auth, ...headers}});
  const reader = res.body.getReader();
  const found = [];
  let text = "";
  while (found.length < count) {
    const {value, done} = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    let at;
    while ((at = text.indexOf("\n\n")) >= 0 && found.length < count) {
      const block = text.slice(0, at); text = text.slice(at + 2);
      const ev = {};
      for (const line of block.split("\n")) {
        const i = line.indexOf(": ");
        if (i > 0) ev[line.slice(0, i)] = line.slice(i + 2);
      }
      if (ev.event) found.push({id: ev.id, event: ev.event, data: JSON.parse(ev.data)});
    }
  }
  await reader.cancel();
  return found;
}
const out = {};
out.register = (await post("/v1/names/node/app", {lease: 30})).status;
const asking = post("/v1/request/node/app?timeout=20", {n: 20});
const inbox = await (await fetch(gw + "/v1/inbox/node/app?wait=20", {headers: auth})).json();
const msg = inbox.messages[0];
out.replied = (await post(`/v1/reply/${msg.id}`, msg.body.n + 1)).status;
out.reply = await (await asking).json();
for (const n of [1, 2, 3]) await post("/v1/publish/events/demo", {topic: "node", body: n});
const first = await events("/v1/subscribe/events/demo?topic=node&from=1", {}, 3);
out.bodies = first.map(e => e.data.body);
const resumed = await events("/v1/subscribe/events/demo?topic=node",
                             {"Last-Event-ID": first[0].id}, 2);
out.resumed = resumed.map(e => e.data.body);
const missing = await post("/v1/request/node/nobody", 1);
out.problem = [missing.status, missing.headers.get("content-type"), (await missing.json()).code];
const noToken = await fetch(gw + "/v1/names");
out.noToken = [noToken.status, (await noToken.json()).type];
console.log(JSON.stringify(out));
"""


def test_a_node_program_uses_the_gateway_with_fetch_alone(world: World,
                                                          tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed (Debian package nodejs)"
    script = tmp_path / "client.mjs"
    script.write_text(NODE)
    done = subprocess.run([node, str(script), world.url, TOKEN], capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert out["register"] == 201 and out["replied"] == 204 and out["reply"] == 21
    assert out["bodies"] == [1, 2, 3] and out["resumed"] == [2, 3]
    assert out["problem"] == [404, "application/problem+json; charset=utf-8", 2]
    assert out["noToken"] == [401, "urn:posa:problem:token-refused"]


def _routes(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        found.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    return found


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate
    validate(document("0.1.0"))             # raises on any violation


def test_the_openapi_document_lists_exactly_the_routes() -> None:
    gateway = types.SimpleNamespace(limits=EdgeLimits(), peer=None, registry=None)
    app = make_app(gateway, ConnectionGuard(EdgeLimits()))  # type: ignore[arg-type]
    spec = document("0")
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert _routes(app) == documented
    for ops in spec["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                assert {"name", "in", "schema"} <= set(param)


def test_the_command_is_on_the_parser() -> None:
    from posa.cli import build_parser
    args = build_parser().parse_args(["gateway", "--listen", "http://127.0.0.1:0",
                                      "--max-body", "10", "--sse-buffer", "5"])
    assert (args.max_body, args.sse_buffer, args.listen) == (10, 5, "http://127.0.0.1:0")
