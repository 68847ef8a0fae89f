"""A SEND whose body is already packed (``Packed``: the msgpack bytes of one value,
as a channel packs a delivery once for all its subscribers) goes on the wire as
the frame its value makes, byte for byte: on the short framing
(``Forwarder.send_locked``'s join), with headers (the whole envelope packed), and
refused alike when too large. The receiver reads the value.

Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import posa
from posa.delivery.forwarder import Forwarder
from posa.delivery.quick import Packed
from posa.errors import ProtocolError
from posa.wire.codec import CodecLimits, Kind

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0
BODIES: list[Any] = [
    None, 7, "s", b"\x00" * 300, [1, "two", b"3"],
    {"ch": "c", "inc": 3, "runs": [[1, "t", b"x" * 5000]], "dropped": 0, "head": 9},
]


@pytest.fixture
def peers() -> Iterator[tuple[posa.Peer, posa.Peer]]:
    reg = posa.LocalRegistry()
    limits = CodecLimits(max_frame_size=64 * 1024)
    with posa.Peer("packed/a", registry=reg, limits=limits) as a, \
         posa.Peer("packed/b", registry=reg, limits=limits) as b:
        yield a, b
    reg.close()


def _frame(fwd: Forwarder, body: Any, headers: dict[str, Any] | None = None) -> bytes:
    """The frame ``send_locked`` makes of ``body`` to packed/b (its last unacked)."""
    with fwd.lock:
        fwd.send_locked("packed/b", body, Kind.SEND, headers, time.monotonic() + WAIT)
        return bytes(fwd._targets["packed/b"].out.unacked[-1])


def _expected(fwd: Forwarder, a: posa.Peer, body: Any, headers: dict[str, Any]) -> bytes:
    target = fwd._targets["packed/b"]
    seq = target.out.next_seq - 1
    return a.codec.pack(Kind.SEND, target.stream, seq, "packed/a", "packed/b", 0,
                        headers, body)


@pytest.mark.parametrize("headers", [None, {"note": "n"}])
def test_a_packed_body_makes_the_frame_its_value_makes(
        peers: tuple[posa.Peer, posa.Peer], headers: dict[str, Any] | None) -> None:
    a, b = peers
    fwd = a.sender.forwarder()
    for body in BODIES:
        plain = _frame(fwd, body, headers)
        assert plain == _expected(fwd, a, body, headers or {})
        packed = _frame(fwd, Packed(msgpack.packb(body)), headers)
        assert packed == _expected(fwd, a, body, headers or {})
        assert packed[-len(plain) // 2:] == plain[-len(plain) // 2:]  # (but the id)
    a.flush(WAIT)
    got = [b.receive(timeout=WAIT).body for _ in range(2 * len(BODIES))]
    assert got == [body for body in BODIES for _ in range(2)]


def test_a_packed_body_too_large_is_refused_and_takes_no_id(
        peers: tuple[posa.Peer, posa.Peer]) -> None:
    a, b = peers
    fwd = a.sender.forwarder()
    _frame(fwd, 1)
    before = fwd._targets["packed/b"].out.next_seq
    with pytest.raises(ProtocolError):
        _frame(fwd, Packed(msgpack.packb(b"x" * (64 * 1024))))
    assert fwd._targets["packed/b"].out.next_seq == before
    _frame(fwd, Packed(msgpack.packb("after")))
    a.flush(WAIT)
    assert [b.receive(timeout=WAIT).body for _ in range(2)] == [1, "after"]
