"""``posa gateway``: every endpoint over plain HTTP against real processes
(a dispatcher, a channel, the gateway), each response checked against the
gateway's OpenAPI document (docs/gateway.md)."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import posa
from tests.support import wait_until
from tests.test_gateway_support import TOKEN, World, open_stream, sse_events, start_world

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(tmp_path_factory.mktemp("gw"), "--body-timeout", "2")
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def peers(world: World) -> Iterator[dict[str, Any]]:
    """Python peers behind the gateway: an echo, a silent one, a refusing one, a service."""
    registry = posa.RegistryClient(world.dispatcher)
    got: list[Any] = []

    def echo(msg: posa.Message) -> Any:
        got.append(msg.body)
        return {"echo": msg.body, "from": msg.sender}

    def refuse(msg: posa.Message) -> Any:
        raise posa.Rejected("not today")

    made = [posa.Peer("app/echo", registry=registry, listen="tcp://127.0.0.1:0", handler=echo),
            posa.Peer("app/silent", registry=registry, listen="tcp://127.0.0.1:0",
                      handler=lambda m: posa.DEFERRED),
            posa.Peer("app/refuse", registry=registry, listen="tcp://127.0.0.1:0",
                      handler=refuse)]
    server = posa.Server("svc/double", lambda body: body * 2, registry=registry)
    try:
        yield {"got": got}
    finally:
        server.close()
        for peer in made:
            peer.close()
        registry.close()


def test_request_send_and_call_by_name(world: World, peers: dict[str, Any]) -> None:
    reply = world.call("POST", "/v1/request/app/echo?timeout=10", {"q": 1})
    assert reply.status == 200 and reply.body["echo"] == {"q": 1}
    assert reply.body["from"].startswith("tester/gw-")      # the token's identity
    sent = world.call("POST", "/v1/send/app/echo", "one way")
    assert sent.status == 202 and sent.body == {"recipients": 1}
    wait_until(lambda: "one way" in peers["got"], what="the one-way message")
    group = world.call("POST", "/v1/send/app/*", "to the group")
    assert group.status == 202 and group.body["recipients"] >= 3
    wait_until(lambda: "to the group" in peers["got"], what="the group message")
    called = world.call("POST", "/v1/call/svc/double?timeout=10", 21)
    assert called.status == 200 and called.body == 42


@pytest.mark.parametrize(("path", "body", "status", "slug", "code"), [
    ("/v1/request/app/nobody", 1, 404, "name-not-found", 2),
    ("/v1/request/app/silent?timeout=0.5", 1, 504, "timeout", 6),
    ("/v1/request/app/refuse", 1, 503, "rejected", 5),
    ("/v1/call/svc/none", 1, 404, "name-not-found", 2),
    ("/v1/request/app//x", 1, 400, "invalid-name", 9),
    ("/v1/request/app/echo?timeout=x", 1, 400, "bad-input", None),
    ("/v1/send/app/echo?timeout=99999", 1, 400, "bad-input", None),
])
def test_posa_errors_are_problems(world: World, peers: dict[str, Any], path: str, body: Any,
                                  status: int, slug: str, code: int | None) -> None:
    reply = world.call("POST", path, body)
    assert (reply.status, reply.type) == (status, "application/problem+json"), reply.body
    assert reply.body["type"] == f"urn:posa:problem:{slug}"
    assert reply.body.get("code") == code and reply.body["detail"]


def test_a_body_that_is_not_json_is_bad_input(world: World, peers: dict[str, Any]) -> None:
    reply = world.call("POST", "/v1/request/app/echo", raw=b"{not json")
    assert reply.status == 400 and "must be JSON" in reply.body["detail"]
    assert world.call("POST", "/v1/publish/events/gw", {"body": 1}).status == 400
    assert world.call("GET", "/v1/subscribe/events/gw?filter=%7B%7D").status == 400


def test_publish_subscribe_and_resume_with_last_event_id(world: World) -> None:
    seqs = []
    for n in range(5):
        reply = world.call("POST", "/v1/publish/events/gw", {"topic": f"t/{n % 2}",
                                                             "body": {"n": n}})
        assert reply.status == 202
    sock = open_stream(world, "/v1/subscribe/events/gw?from=1&topic=t/")
    try:
        for event in sse_events(sock, time.monotonic() + 20):
            assert event["event"] == "event" and int(event["id"]) == event["data"]["seq"]
            seqs.append(event["data"]["seq"])
            if len(seqs) == 5:
                break
    finally:
        sock.close()
    assert seqs == sorted(seqs) and len(seqs) == 5
    # resume after the third: the last two again, and only those matching the filter
    flt = json.dumps({"field": "n", "op": ">=", "value": 4})
    sock = open_stream(world, f"/v1/subscribe/events/gw?filter={flt.replace(' ', '')}",
                       headers={"Last-Event-ID": str(seqs[2])})
    try:
        first = next(sse_events(sock, time.monotonic() + 20))
    finally:
        sock.close()
    assert first["data"]["body"] == {"n": 4} and first["id"] == str(seqs[4])


def test_names_services_health_metrics(world: World, peers: dict[str, Any]) -> None:
    names = world.call("GET", "/v1/names?pattern=app/**").body
    assert {"app/echo", "app/silent"} <= {n["name"] for n in names}
    assert world.call("GET", "/v1/services").body["svc/double"]
    health = world.call("GET", "/v1/health", token=None)
    assert health.status == 200 and health.body["ok"] is True
    metrics = world.call("GET", "/metrics", token=None).body
    assert "posa_gateway_responses_total{status=\"200\"}" in metrics


def test_receive_by_name_long_poll_and_reply(world: World) -> None:
    reg = world.call("POST", "/v1/names/app/http-a", {"lease": 30})
    assert reg.status == 201 and reg.body["credential"]
    again = world.call("POST", "/v1/names/app/http-a", {"lease": 30})
    assert again.status == 409                      # served already: the credential, please
    taken = world.call("POST", "/v1/names/app/http-a",
                       {"lease": 30, "credential": reg.body["credential"]})
    assert taken.status == 201

    async def ask() -> Any:
        return await asyncio.to_thread(
            world.call, "POST", "/v1/request/app/http-a?timeout=20", {"q": "hi"})

    async def scenario() -> Any:
        asking = asyncio.ensure_future(ask())
        polled = await asyncio.to_thread(world.call, "GET", "/v1/inbox/app/http-a?wait=20")
        [message] = polled.body["messages"]
        assert message["kind"] == "request" and message["body"] == {"q": "hi"}
        answered = await asyncio.to_thread(world.call, "POST",
                                           f"/v1/reply/{message['id']}", {"a": 1})
        assert answered.status == 204
        return await asking

    reply = asyncio.run(scenario())
    assert reply.status == 200 and reply.body == {"a": 1}
    assert world.call("POST", "/v1/reply/no-such-request", 1).status == 404
    assert world.call("GET", "/v1/inbox/app/http-a?wait=0").body == {"messages": []}
    assert world.call("DELETE", "/v1/names/app/http-a").status == 204
    assert world.call("POST", "/v1/request/app/http-a?timeout=1", 1).status in (404, 504)


def test_a_request_that_expired_in_the_inbox_is_not_handed_out(world: World) -> None:
    assert world.call("POST", "/v1/names/app/http-late").status == 201
    late = world.call("POST", "/v1/request/app/http-late?timeout=0.5", "late")
    assert late.status == 504                       # its deadline passed, untaken
    assert world.call("POST", "/v1/send/app/http-late", "kept").status == 202
    polled = world.call("GET", "/v1/inbox/app/http-late?wait=20").body["messages"]
    assert [m["body"] for m in polled] == ["kept"]
    assert world.call("DELETE", "/v1/names/app/http-late").status == 204


def test_receive_by_name_over_a_websocket(world: World) -> None:
    assert world.call("POST", "/v1/names/app/http-ws").status == 201

    async def scenario() -> tuple[Any, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session, \
                session.ws_connect(f"{world.url}/v1/ws/app/http-ws") as ws:
            asking = asyncio.ensure_future(session.post(
                f"{world.url}/v1/request/app/http-ws?timeout=20", json=[1, 2]))
            message = json.loads((await ws.receive(timeout=20)).data)
            await ws.send_str(json.dumps({"reply": message["id"], "body": sum(message["body"])}))
            response = await asking
            refusing = asyncio.ensure_future(session.post(
                f"{world.url}/v1/request/app/http-ws?timeout=20", json="x"))
            message = json.loads((await ws.receive(timeout=20)).data)
            await ws.send_str(json.dumps({"reply": message["id"], "error": "no"}))
            return await response.json(), await (await refusing).json()

    answer, refused = asyncio.run(scenario())
    assert world.call("DELETE", "/v1/names/app/http-ws").status == 204
    assert answer == 3
    assert refused["type"] == "urn:posa:problem:rejected" and "no" in refused["detail"]


def test_an_answer_nested_too_deep_on_a_websocket_is_said_and_the_socket_goes_on(
        world: World) -> None:
    """json.loads raised RecursionError out of the receiving loop: the socket closed."""
    assert world.call("POST", "/v1/names/app/http-deep").status == 201

    async def scenario() -> tuple[Any, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session, \
                session.ws_connect(f"{world.url}/v1/ws/app/http-deep") as ws:
            asking = asyncio.ensure_future(session.post(
                f"{world.url}/v1/request/app/http-deep?timeout=20", json=1))
            message = json.loads((await ws.receive(timeout=20)).data)
            await ws.send_str("[" * 20000 + "]" * 20000)
            said = json.loads((await ws.receive(timeout=20)).data)
            await ws.send_str(json.dumps({"reply": message["id"], "body": "fine"}))
            return said, await (await asking).json()

    said, answer = asyncio.run(scenario())
    assert world.call("DELETE", "/v1/names/app/http-deep").status == 204
    assert said == {"error": "the answer nests too deep to read"}
    assert answer == "fine"


def test_a_vanished_http_program_loses_its_name_after_its_lease(world: World) -> None:
    assert world.call("POST", "/v1/names/app/http-gone", {"lease": 1}).status == 201
    assert world.call("POST", "/v1/send/app/http-gone", 1).status == 202
    wait_until(lambda: world.call("POST", "/v1/request/app/http-gone?timeout=1", 1).status
               == 404, timeout=30, what="the hosted name unregistered")
    metrics = world.call("GET", "/metrics").body
    assert "posa_gateway_hosted_expired_total 0" not in metrics


def test_every_documented_route_is_served(world: World, tmp_path: Path) -> None:
    """Each path of the document answers something other than 404/405 for each of
    its methods (the routes the tests above checked in detail)."""
    for template, ops in world.spec["paths"].items():
        path = template.replace("{name}", "app/x").replace("{service}", "svc/x") \
            .replace("{channel}", "events/gw").replace("{id}", "x")
        for method in ops:
            if template in ("/v1/subscribe/{channel}", "/v1/ws/{name}"):
                continue        # streams: their own tests
            reply = world.call(method.upper(), path + "?timeout=0.5", None)
            assert reply.status != 405, (method, template)
            assert reply.status != 404 or reply.type == "application/problem+json"
