"""Tokens map to posa identities and keys: a receiver's access rules decide what
each token may do through the gateway, as for a Python peer with that key."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa.security import Acl, Gatekeeper, HmacAuthenticator, Keyring
from tests.test_gateway_support import LIMITED, TOKEN, World, start_world

pytestmark = pytest.mark.timeout(120)

KEY_IDS = ("posa/dispatcher", "gateway", "tester", "limited", "app", "events")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gwkeys") / "keys"
    path.write_text("".join(f"{k} {Keyring.new_secret()}\n" for k in KEY_IDS))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def world(keys: Path) -> Iterator[World]:
    world = start_world(keys.parent, "--key-id", "gateway", keys=keys)
    try:
        yield world
    finally:
        world.close()


def test_the_access_rules_of_the_receiver_judge_each_token(world: World, keys: Path) -> None:
    keyring = Keyring.from_file(keys)
    auth = HmacAuthenticator(keyring, key_id="app")
    acl = Acl(send=[("tester/**", "app/**")])           # tester may, limited may not
    registry = posa.RegistryClient(world.dispatcher, authenticator=auth)
    peer = posa.Peer("app/secure", registry=registry, listen="tcp://127.0.0.1:0",
                     authenticator=auth, handler=lambda m: {"to": m.sender},
                     gatekeeper=Gatekeeper(authenticator=auth, authorizer=acl))
    try:
        allowed = world.call("POST", "/v1/request/app/secure?timeout=10", 1, token=TOKEN)
        assert allowed.status == 200 and allowed.body["to"].startswith("tester/gw-")
        refused = world.call("POST", "/v1/request/app/secure?timeout=10", 1, token=LIMITED)
        assert refused.status == 403 and refused.body["code"] == 3, refused.body
        assert refused.body["type"] == "urn:posa:problem:unauthorized"
    finally:
        peer.close()
        registry.close()


def test_a_hosted_name_is_registered_under_its_own_key(world: World) -> None:
    served = world.call("POST", "/v1/names/app/http-keyed", {"lease": 30}, token=LIMITED)
    assert served.status == 201
    names = world.call("GET", "/v1/names?pattern=app/**", token=LIMITED).body
    assert "app/http-keyed" in {n["name"] for n in names}
    assert world.call("DELETE", "/v1/names/app/http-keyed", token=LIMITED).status == 204
