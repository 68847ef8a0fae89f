"""The one-way SEND's short framing (``Forwarder.send_locked``: the target's
``head``/``middle`` around the id and the body) against a real peer: across the
ids where msgpack changes the id's width (uint8/16, 16/32, 32/64), with a window
far under ``ACK_EVERY`` (the window-full wait alone reads the acknowledgements),
and with unencodable or oversized bodies refused with ``ProtocolError`` in between,
every message arrives once, in order, and a refused one takes no sequence number.

Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

import posa
from posa.errors import ProtocolError
from posa.wire.codec import CodecLimits

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0


@pytest.fixture
def registry() -> Iterator[posa.LocalRegistry]:
    reg = posa.LocalRegistry()
    yield reg
    reg.close()


@pytest.mark.parametrize("window", [3, 1024])
@pytest.mark.parametrize("start", [0xFF - 40, 0xFFFF - 40, 0xFFFFFFFF - 40])
def test_sends_across_the_id_widths_arrive_in_order_and_refusals_take_no_id(
        registry: posa.LocalRegistry, start: int, window: int) -> None:
    limits = CodecLimits(max_frame_size=64 * 1024)
    with posa.Peer("review/a", registry=registry, window=window, limits=limits) as a, \
         posa.Peer("review/b", registry=registry, limits=limits) as b:
        fwd = a.sender.forwarder()
        fwd._seq_floor = start      # the stream's first id: just under a width's end
        sent = []
        for n in range(100):
            if n % 17 == 5:
                with pytest.raises(ProtocolError):
                    a.send("review/b", [n, object()], timeout=WAIT)
                with pytest.raises(ProtocolError):
                    a.send("review/b", b"x" * (64 * 1024), timeout=WAIT)
            a.send("review/b", {"n": n}, timeout=WAIT)
            sent.append({"n": n})
        a.flush(WAIT)
        got = [b.receive(timeout=WAIT) for _ in sent]
        assert [m.body for m in got] == sent
        assert [m.id for m in got] == list(range(start, start + len(sent)))
        assert all(m.headers == {} and m.sender == "review/a" for m in got)
