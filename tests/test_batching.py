"""BATCH frames: many envelopes of one stream in one frame, taken whole or not at all."""
from __future__ import annotations

import os
import threading
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa import Kind
from posa.admission.gatekeeper import KEY_HEADER, Gatekeeper, Rejection
from posa.admission.quotas import Rate, RateLimiter
from posa.errors import ProtocolError
from posa.security import HmacAuthenticator, Keyring
from posa.wire.codec import VERSION, Codec, CodecLimits, Message
from tests.support import nested

codec = Codec()
STREAM = 4242

leaves = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
          | st.text(max_size=20) | st.binary(max_size=20))
bodies = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
items = st.tuples(st.sampled_from([Kind.SEND, Kind.REQUEST]),
                  st.dictionaries(st.text(max_size=8), leaves, max_size=3), bodies)


def batch_of(entries: list[tuple[int, dict[str, Any], Any]], *, sender: str = "a",
             recipient: str = "b", stream: int = STREAM) -> bytes:
    envelopes = [codec.pack(kind, stream, seq, sender, recipient, 0, headers, body)
                 for seq, (kind, headers, body) in enumerate(entries, start=1)]
    return codec.pack_batch(stream, sender, recipient, envelopes)


@given(st.lists(items, min_size=1, max_size=20))
def test_a_batch_opens_into_exactly_the_messages_it_joined(
        entries: list[tuple[int, dict[str, Any], Any]]) -> None:
    batch = codec.decode(batch_of(entries))
    assert (batch.kind, batch.stream, batch.sender, batch.recipient) == (
        Kind.BATCH, STREAM, "a", "b")
    assert codec.unbatch(batch) == [
        Message(kind, "a", "b", body, id=seq, stream=STREAM, headers=headers)
        for seq, (kind, headers, body) in enumerate(entries, start=1)]


def raw_batch(*inner: object, stream: int = STREAM) -> bytes:
    return msgpack.packb([VERSION, Kind.BATCH, stream, 0, "a", "b", 0, {}, list(inner)])


GOOD = [VERSION, Kind.SEND, STREAM, 1, "a", "b", 0, {}, "x"]


def but(index: int, value: object) -> list[object]:
    fields = list(GOOD)
    fields[index] = value
    return fields


@pytest.mark.parametrize("frame, reason", [
    (raw_batch(), "non-empty array"),
    (raw_batch(GOOD, stream=0), "non-empty array"),
    (msgpack.packb([VERSION, Kind.BATCH, STREAM, 0, "a", "b", 0, {}, "not a list"]),
     "non-empty array"),
    (raw_batch(GOOD, "garbage"), "array of 9 items"),
    (raw_batch(GOOD[:8]), "array of 9 items"),
    (raw_batch(but(1, Kind.ACK)), "SEND or REQUEST"),
    (raw_batch(but(1, Kind.BATCH)), "SEND or REQUEST"),
    (raw_batch(but(2, STREAM + 1)), "the batch's stream"),
    (raw_batch(but(3, 0)), "sequence numbers"),
    (raw_batch(GOOD, but(3, 3)), "consecutive sequence numbers"),
    (raw_batch(GOOD, GOOD), "consecutive sequence numbers"),
    (raw_batch(but(4, "mallory")), "sender and recipient"),
    (raw_batch(but(5, "c")), "sender and recipient"),
    (raw_batch(but(7, [])), "headers"),
    (raw_batch(but(0, 2)), "SEND or REQUEST"),
])
def test_a_bad_envelope_anywhere_refuses_the_whole_batch(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        codec.unbatch(codec.decode(frame))


def envelope(seq: int, headers: dict[str, Any] | None = None) -> list[object]:
    fields = but(3, seq)
    fields[7] = headers if headers is not None else {}
    return fields


@pytest.mark.parametrize("bad, reason", [
    (lambda e: e[:8], "array of 9 items"),
    (lambda e: [*e[:4], "mallory", *e[5:]], "sender and recipient"),
    (lambda e: [*e[:5], "c", *e[6:]], "sender and recipient"),
    (lambda e: [*e[:3], e[3] + 1, *e[4:]], "consecutive sequence numbers"),
    (lambda e: [*e[:1], True, *e[2:]], "SEND or REQUEST"),
    (lambda e: [*e[:8], nested(80)], "deeper than max_depth"),
])
def test_an_envelope_bad_in_the_middle_of_a_batch_refuses_it_whole(
        bad: Any, reason: str) -> None:
    """Envelopes before it carry headers (one the gatekeeper removes): none is admitted."""
    keeper = Gatekeeper(Codec())
    inner = [envelope(1, {KEY_HEADER: "root"}), envelope(2, {"trace": "t"}), envelope(3),
             bad(envelope(4)), envelope(5)]
    with pytest.raises(Rejection) as refused:
        keeper.unbatch(keeper.admit(raw_batch(*inner)))
    assert refused.value.reason == "malformed"
    assert reason in str(refused.value.error)


def test_the_depth_limit_applies_to_each_envelope_not_to_the_batch() -> None:
    small = Codec(CodecLimits(max_depth=8))
    flat = batch_of([(Kind.SEND, {}, {"seq": i, "tags": [1, 2]}) for i in range(200)])
    assert len(small.unbatch(small.decode(flat))) == 200   # 600 containers, none deep
    for body in (nested(20), {"flat": 1, "deep": nested(20)}):
        deep = batch_of([(Kind.SEND, {}, 1), (Kind.SEND, {}, body)])
        with pytest.raises(ProtocolError, match="deeper than max_depth 8"):
            small.unbatch(small.decode(deep))
    deep_headers = batch_of([(Kind.SEND, {"trace": nested(20)}, 1)])
    with pytest.raises(ProtocolError, match="deeper than max_depth 8"):
        small.unbatch(small.decode(deep_headers))


@settings(max_examples=200, deadline=None)
@given(st.lists(items, min_size=1, max_size=6), st.data())
def test_a_corrupted_batch_opens_or_is_refused_never_crashes(
        entries: list[tuple[int, dict[str, Any], Any]], data: st.DataObject) -> None:
    frame = bytearray(batch_of(entries))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = codec.decode(bytes(frame))
        if msg.kind == Kind.BATCH:
            opened = codec.unbatch(msg)
            assert all(m.stream == msg.stream and m.sender == msg.sender for m in opened)
    except ProtocolError:
        pass


# ------------------------------------------------------------- the gatekeeper
def test_the_gatekeeper_removes_a_key_header_claimed_inside_a_batch() -> None:
    keeper = Gatekeeper(Codec())
    frame = batch_of([(Kind.SEND, {KEY_HEADER: "root"}, 1)])
    inner = keeper.unbatch(keeper.admit(frame))
    assert [m.headers for m in inner] == [{}]


class _Everyone:
    def check(self, msg: Message) -> None:
        """Every sender may send to every recipient."""


@pytest.mark.parametrize("authorizer", [None, _Everyone()], ids=["plain", "authorizer"])
def test_a_key_header_is_removed_from_each_message_of_a_batch_that_claims_one(
        authorizer: Any) -> None:
    keeper = Gatekeeper(Codec(), authorizer=authorizer)
    claims = [{}, {KEY_HEADER: "root", "trace": "t1"}, {"trace": "t2"}, {KEY_HEADER: "x"}, {}]
    inner = keeper.unbatch(keeper.admit(batch_of([(Kind.SEND, h, i)
                                                  for i, h in enumerate(claims)])))
    assert [(m.body, m.headers) for m in inner] == [
        (0, {}), (1, {"trace": "t1"}), (2, {"trace": "t2"}), (3, {}), (4, {})]


def test_unbatch_drops_only_the_header_it_is_given() -> None:
    frame = batch_of([(Kind.SEND, {"a": 1, "b": 2}, 0), (Kind.REQUEST, {"b": 3}, 1)])
    assert [m.headers for m in codec.unbatch(codec.decode(frame), "a")] == [{"b": 2}, {"b": 3}]
    assert [m.headers for m in codec.unbatch(codec.decode(frame))] == [
        {"a": 1, "b": 2}, {"b": 3}]


def test_a_sealed_batch_is_checked_once_and_every_message_carries_the_key() -> None:
    keys = Keyring({"net": os.urandom(32)})
    sealing = HmacAuthenticator(keys, key_id="net")
    keeper = Gatekeeper(Codec(), authenticator=HmacAuthenticator(keys))
    frame = sealing.seal(batch_of([(Kind.SEND, {KEY_HEADER: "root"}, i) for i in range(5)],
                                  sender="net/a"))
    inner = keeper.unbatch(keeper.admit(frame))
    assert [(m.body, m.headers[KEY_HEADER]) for m in inner] == [(i, "net") for i in range(5)]
    with pytest.raises(Rejection) as refused:      # a byte changed: the MAC fails
        keeper.admit(frame[:40] + bytes([frame[40] ^ 1]) + frame[41:])
    assert refused.value.reason == "unauthenticated"


def test_a_rate_limit_admits_a_batch_up_to_its_first_refused_message() -> None:
    keeper = Gatekeeper(Codec(), limiter=RateLimiter(per_source=None, per_sender=Rate(1, 3),
                                                     clock=lambda: 0.0))
    inner = keeper.unbatch(keeper.admit(batch_of([(Kind.SEND, {}, i) for i in range(10)])),
                           "source")
    assert [m.body for m in inner] == [0, 1, 2]
    assert keeper.rejections["rate-limited"] == 1


# ------------------------------------------------------ forwarders and peers
class CountingConnections:
    """Wraps every connection a forwarder opens and counts its writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import posa.delivery.links as links_module
        self.writes = 0
        self.lock = threading.Lock()
        connect = links_module.transport.connect

        def counting(address: str, options: Any) -> Any:
            conn = connect(address, options)
            send = conn.send

            def counted(frame: bytes) -> None:
                with self.lock:
                    self.writes += 1
                send(frame)
            conn.send = counted
            return conn
        monkeypatch.setattr(links_module.transport, "connect", counting)


@pytest.mark.parametrize("transport", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"])
def test_a_burst_travels_in_batches_and_arrives_whole_in_order(
        transport: str, registry: posa.LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingConnections(monkeypatch)
    with posa.Peer("net/a", registry=registry, listen=transport) as a, \
         posa.Peer("net/b", registry=registry, listen=transport) as b:
        for i in range(3000):
            a.send("net/b", i)
        got = [b.receive(timeout=5).body for _ in range(3000)]
        a.flush(5)
    assert got == list(range(3000))
    assert counting.writes < 3000 // 4


def test_the_tail_of_a_burst_goes_out_without_another_call(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry, listen="tcp://127.0.0.1:0") as a, \
         posa.Peer("net/b", registry=registry, listen="tcp://127.0.0.1:0") as b:
        for i in range(5):          # the first goes alone, the others open a batch
            a.send("net/b", i)
        assert [b.receive(timeout=5).body for _ in range(5)] == list(range(5))


def test_a_request_after_a_burst_is_handled_after_every_message_before_it(
        registry: posa.LocalRegistry) -> None:
    seen: list[Any] = []

    def handler(msg: posa.Message) -> Any:
        seen.append(msg.body)
        return len(seen) if msg.kind == Kind.REQUEST else None

    with posa.Peer("net/a", registry=registry, listen="zmq+tcp://127.0.0.1:0") as a, \
         posa.Peer("net/b", registry=registry, listen="tcp://127.0.0.1:0", handler=handler):
        for i in range(100):
            a.send("net/b", i)
        assert a.request("net/b", "count", timeout=5) == 101
    assert seen == [*range(100), "count"]


def test_every_message_of_a_batch_comes_the_way_the_batch_came() -> None:
    batch = codec.decode(batch_of([(Kind.SEND, {}, 1), (Kind.SEND, {}, 2)]))
    batch.route = ("endpoint", b"route")
    assert [msg.route for msg in codec.unbatch(batch)] == [("endpoint", b"route")] * 2


@pytest.mark.parametrize("transport", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"])
def test_a_handler_gets_every_message_of_a_burst_in_order_though_one_raises(
        transport: str, registry: posa.LocalRegistry) -> None:
    """The messages of a batch go to the handler straight (those without headers)
    or through the full delivery (with headers): all of them, in order, counted,
    and one the handler raises on stops none after it."""
    seen: list[Any] = []
    done = threading.Event()

    def handler(msg: posa.Message) -> None:
        seen.append((msg.body, msg.headers.get("x")))
        if len(seen) == 2000:
            done.set()
        if msg.body == 7:
            raise RuntimeError("the handler fails on 7")

    with posa.Peer("net/a", registry=registry, listen=transport) as a, \
         posa.Peer("net/b", registry=registry, listen=transport, handler=handler) as b:
        for i in range(2000):
            a.send("net/b", i, headers={"x": i} if i % 100 == 50 else None)
        a.flush(5)
        assert done.wait(5)
        assert b.stats["received"] == 2000
    assert seen == [(i, i if i % 100 == 50 else None) for i in range(2000)]
