"""Scatter/gather: one request to a group or a service's servers; answers until a
quorum or the deadline, partial results with who did not answer; sync, asyncio,
and ``posa gather`` from the shell."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import posa
import posa.aio
from posa.cli import EXIT_TIMEOUT, main
from posa.wire.codec import Message
from posa.work.gather import gather_async

pytestmark = pytest.mark.timeout(120)


class Members:
    """Three peers ``NAME/a``, ``NAME/b`` (answer at once) and ``NAME/slow``
    (holds every request until ``release``)."""

    def __init__(self, prefix: str, registry: posa.Registry) -> None:
        self.held: list[Message] = []
        self.peers = [posa.Peer(f"{prefix}/{n}", registry=registry) for n in ("a", "b")]
        for peer in self.peers:
            peer.serve(lambda msg, name=peer.name: {"from": name, "x2": msg.body * 2})
        self.slow = posa.Peer(f"{prefix}/slow", registry=registry)
        self.slow.serve(self._hold)

    def _hold(self, msg: Message) -> Any:
        self.held.append(msg)
        return posa.DEFERRED

    def close(self) -> None:
        for msg in self.held:
            self.slow.reply(msg, None)
        for peer in [*self.peers, self.slow]:
            peer.close()


@pytest.fixture
def members(registry: posa.LocalRegistry) -> Iterator[Members]:
    group = Members("calc/g", registry)
    yield group
    group.close()


def test_a_quorum_returns_without_waiting_for_the_slow_member(
        registry: posa.LocalRegistry, members: Members) -> None:
    found = posa.gather("calc/g/*", 21, registry=registry, quorum=2, timeout=60)
    assert found.reached and not found.complete
    assert found.answers == {"calc/g/a": {"from": "calc/g/a", "x2": 42},
                             "calc/g/b": {"from": "calc/g/b", "x2": 42}}
    assert found.missing == ["calc/g/slow"]


def test_the_deadline_returns_partial_answers_and_who_did_not_answer(
        registry: posa.LocalRegistry, members: Members) -> None:
    found = posa.gather("calc/g/*", 1, registry=registry, timeout=5.0)
    assert not found.reached and found.quorum == 3
    assert set(found.answers) == {"calc/g/a", "calc/g/b"}     # within 5 s, even loaded
    assert found.missing == ["calc/g/slow"]
    assert isinstance(found.errors["calc/g/slow"], posa.Timeout)
    assert found.as_dict()["missing"] == ["calc/g/slow"]


def test_a_failing_member_is_reported_and_settles_the_gathering(
        registry: posa.LocalRegistry) -> None:
    def broken(msg: Message) -> Any:
        raise ValueError("cannot")

    good = posa.Peer("calc/f/good", registry=registry, handler=lambda m: "ok")
    bad = posa.Peer("calc/f/bad", registry=registry, handler=broken)
    try:
        found = posa.gather("calc/f/*", None, registry=registry, timeout=60)
    finally:
        good.close()
        bad.close()
    assert found.answers == {"calc/f/good": "ok"} and found.missing == ["calc/f/bad"]
    assert isinstance(found.errors["calc/f/bad"], posa.RemoteError)
    with pytest.raises(posa.NameNotFound):
        posa.gather("calc/none/*", None, registry=registry, timeout=5)


def test_a_service_name_gathers_from_every_server(registry: posa.LocalRegistry) -> None:
    servers = [posa.Server("sum", lambda body, i=i: [i, sum(body)], registry=registry)
               for i in range(3)]
    try:
        found = posa.gather("sum", [1, 2, 3], registry=registry, timeout=30)
        with pytest.raises(ValueError, match="quorum=5 with 3 member"):
            posa.gather("sum", None, registry=registry, quorum=5)
    finally:
        for server in servers:
            server.close()
    assert found.complete and sorted(found.answers.values()) == [[0, 6], [1, 6], [2, 6]]


def test_gather_from_asyncio(registry: posa.LocalRegistry, members: Members) -> None:
    async def scenario() -> posa.Gathered:
        async with posa.aio.Peer("calc/asker", registry=registry) as peer:
            return await gather_async(peer, "calc/g/*", 5, registry=registry, quorum=2,
                                      timeout=60)

    found = asyncio.run(scenario())
    assert found.reached and found.missing == ["calc/g/slow"]
    assert {a["x2"] for a in found.answers.values()} == {10}


def test_posa_gather_from_the_shell(dispatcher: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    client = posa.RegistryClient(dispatcher)
    group = Members("shell/g", client)
    try:
        code = main(["gather", "shell/g/*", "4", "--quorum", "2", "--timeout", "60",
                     "--dispatcher", dispatcher, "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["reached"] and out["missing"] == ["shell/g/slow"]
        assert out["answers"]["shell/g/a"] == {"from": "shell/g/a", "x2": 8}
        code = main(["gather", "shell/g/*", "4", "--timeout", "5",
                     "--dispatcher", dispatcher])
        text = capsys.readouterr().out
        assert code == EXIT_TIMEOUT
        assert "shell/g/b: {" in text and "shell/g/slow: no answer" in text
    finally:
        group.close()
        client.close()
