"""CURVE client allowlists (ZAP): a zmq+tcp listener with ``Curve(clients=...)``
accepts only the client keys on its list and counts the others it refuses.

Real libzmq handshakes on loopback. A refused client's frames never arrive; the
listener's ``rejections["curve-client"]`` is waited on with a deadline.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

zmq = pytest.importorskip("zmq")

from posa.errors import Timeout, TransportError  # noqa: E402
from posa.transport.base import Options  # noqa: E402
from posa.transport.zmq import Curve, ZmqTransport  # noqa: E402
from tests.support import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(60)
OPTIONS = Options(send_timeout=0.5)


def keypair() -> tuple[bytes, bytes]:
    public, secret = zmq.curve_keypair()
    return public, secret


@pytest.fixture
def server() -> Iterator[tuple[bytes, bytes]]:
    yield keypair()


def connect(server_public: bytes, address: str, client: tuple[bytes, bytes] | None) -> Any:
    curve = (Curve(server_public) if client is None else
             Curve(server_public, client_public=client[0], client_secret=client[1]))
    return ZmqTransport(curve).connect(address, OPTIONS)


def test_an_allowed_client_key_gets_through_and_an_unknown_one_is_refused_and_counted(
        server: tuple[bytes, bytes]) -> None:
    allowed, stranger = keypair(), keypair()
    listener = ZmqTransport(Curve(*server, clients=[allowed[0]])).listen(
        "zmq+tcp://127.0.0.1:0", OPTIONS)
    good = connect(server[0], listener.address, allowed)
    bad = connect(server[0], listener.address, stranger)
    fresh = connect(server[0], listener.address, None)   # a key pair of its own: unknown
    try:
        good.send(b"from an allowed key")
        assert listener.recv(timeout=10)[1] == b"from an allowed key"
        for conn in (bad, fresh):
            try:
                conn.send(b"from an unknown key")
            except Timeout:
                pass        # queued until the handshake completes, which it never does
        assert wait_until(lambda: listener.rejections["curve-client"] >= 2), \
            listener.rejections
        good.send(b"still served")
        assert listener.recv(timeout=10)[1] == b"still served"  # nothing of the others
    finally:
        for conn in (good, bad, fresh):
            conn.close()
        listener.close()


def test_a_curve_listener_without_an_allowlist_still_takes_any_client(
        server: tuple[bytes, bytes]) -> None:
    allowed = keypair()
    guarded = ZmqTransport(Curve(*server, clients=[allowed[0]])).listen(
        "zmq+tcp://127.0.0.1:0", OPTIONS)          # the process now runs a ZAP handler
    open_listener = ZmqTransport(Curve(*server)).listen("zmq+tcp://127.0.0.1:0", OPTIONS)
    anyone = connect(server[0], open_listener.address, None)
    try:
        anyone.send(b"any key")
        assert open_listener.recv(timeout=10)[1] == b"any key"
        assert open_listener.rejections["curve-client"] == 0
    finally:
        anyone.close()
        open_listener.close()
        guarded.close()


def test_a_client_key_pair_must_be_whole() -> None:
    public, _ = keypair()
    with pytest.raises(TransportError, match="both client_public and client_secret"):
        Curve(public, client_public=public)


@pytest.mark.parametrize("high_water_mark", [1, 1000])
def test_a_plain_listener_still_takes_any_client_beside_a_zap_handler(
        server: tuple[bytes, bytes], high_water_mark: int) -> None:
    """Plain (NULL) listeners name a ZAP domain of their own to refuse ZMTP 1.0
    peers; once the process runs a ZAP handler for an allowlist, that handler is
    asked about them too and must let them through, whatever their queue size
    (at RCVHWM 1 libzmq never delivered the first frame)."""
    guarded = ZmqTransport(Curve(*server, clients=[keypair()[0]])).listen(
        "zmq+tcp://127.0.0.1:0", OPTIONS)          # the process now runs a ZAP handler
    plain = ZmqTransport().listen("zmq+tcp://127.0.0.1:0",
                                  Options(send_timeout=0.5, high_water_mark=high_water_mark))
    other = zmq.Context()                          # a client of another process, in effect
    client = other.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(plain.address.removeprefix("zmq+"))
    try:
        client.send(b"no keys at all")
        assert plain.recv(timeout=10)[1] == b"no keys at all"
        assert sum(plain.rejections.values()) == 0, dict(plain.rejections)
    finally:
        other.destroy(linger=0)
        plain.close()
        guarded.close()
