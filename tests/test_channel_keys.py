"""Keyed event channels: with keys on, the publisher, the channel, a chained
channel and the subscriber seal every frame, and a side without the key is
refused (docs/security.md). Real peers on loopback tcp."""
from __future__ import annotations

import secrets

import pytest

import posa
from posa.security import HmacAuthenticator, Keyring
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)
TCP = "tcp://127.0.0.1:0"


def test_a_keyed_chain_delivers_sealed_events_and_refuses_unsealed_ones() -> None:
    ring = Keyring({"lab": secrets.token_bytes(32), "ops": secrets.token_bytes(32)})
    lab = HmacAuthenticator(ring, key_id="lab")
    ops = HmacAuthenticator(ring, key_id="ops")
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("lab/up", registry=registry, listen=TCP,
                              authenticator=lab) as up, \
            posa.EventChannel("lab/down", registry=registry, listen=TCP, authenticator=lab,
                              upstream=["lab/up"]), \
            posa.Subscriber("lab/down", registry=registry, listen=TCP,
                            authenticator=ops) as subscriber, \
            posa.Publisher("lab/up", registry=registry, authenticator=ops) as publisher:
        assert subscriber.name.startswith("ops/sub/lab/down/")   # a name its key speaks for
        wait_until(lambda: up.stats()["subscriptions"], what="lab/down subscribed upstream")
        publisher.publish("link/down", {"port": 3})
        publisher.flush(10)
        event = subscriber.receive(timeout=20)
        assert (event.topic, event.body, event.via) == ("link/down", {"port": 3}, ("lab/up",))

        with posa.Publisher("lab/up", registry=registry, timeout=5) as unsealed:
            unsealed.publish("link/up", {})
            with pytest.raises(posa.Unauthorized):
                unsealed.flush(5)
