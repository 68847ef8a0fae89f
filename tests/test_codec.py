"""The envelope codec: round trips, limits, and untrusted bytes."""
from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.errors import ProtocolError
from posa.wire.codec import VERSION, Codec, CodecLimits, Kind, Message
from tests.support import nested

codec = Codec()

names = st.text(min_size=0, max_size=40)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
leaves = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
          | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=30))
bodies = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
messages = st.builds(
    lambda kind, stream, id, sender, recipient, corr, headers, body: Message(
        kind, sender, recipient, body, id=id, stream=stream, correlation=corr, headers=headers),
    st.sampled_from(list(Kind)), u64, u64, names, names, u64,
    st.dictionaries(st.text(max_size=10), leaves, max_size=4), bodies)


@given(messages)
def test_decode_inverts_encode(msg: Message) -> None:
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_message_or_a_protocol_error(data: bytes) -> None:
    try:
        msg = codec.decode(data)
    except ProtocolError:
        return
    assert isinstance(msg, Message)


@given(messages, st.data())
def test_truncated_or_extended_frames_are_refused(msg: Message, data: st.DataObject) -> None:
    frame = codec.encode(msg)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(ProtocolError):
        codec.decode(frame[:cut])
    with pytest.raises(ProtocolError, match="after the envelope"):
        codec.decode(frame + b"\x00")


def envelope(*fields: object) -> bytes:
    return msgpack.packb(list(fields))


GOOD = [VERSION, 1, 0, 0, "a", "b", 0, {}, None]


@pytest.mark.parametrize("frame, reason", [
    (b"", "ends in the middle"),
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({"a": 1}), "array of 9"),
    (envelope(*GOOD[:8]), "array of 9"),
    # nine items that are no array: each unpacks into nine fields, which must refuse it
    (msgpack.packb({str(i): i for i in range(9)}), "array of 9"),
    (msgpack.packb("abcdefghi"), "array of 9"),
    (msgpack.packb(bytes([1, 1, 0, 0, 0, 0, 0, 0, 0])), "array of 9"),
    (msgpack.packb(9), "array of 9"),
    (msgpack.packb(None), "array of 9"),
    (envelope(2, *GOOD[1:]), "unsupported envelope version 2"),
    (envelope(VERSION, 99, *GOOD[2:]), "unknown message kind 99"),
    (envelope(VERSION, True, *GOOD[2:]), "unknown message kind"),
    (envelope(*GOOD[:2], -1, *GOOD[3:]), "unsigned 64-bit"),
    (envelope(*GOOD[:3], "7", *GOOD[4:]), "unsigned 64-bit"),
    (envelope(*GOOD[:4], 5, *GOOD[5:]), "must be strings"),
    (envelope(*GOOD[:4], "x" * 300, *GOOD[5:]), "longer than 255"),
    (envelope(*GOOD[:7], [], None), "headers must be a map"),
    (msgpack.packb([*GOOD[:8], msgpack.ExtType(5, b"x")]) + b"", None),
    (msgpack.packb([*GOOD[:7], {1: 2}, None]), "not valid msgpack"),
])
def test_bad_envelopes_say_what_is_wrong(frame: bytes, reason: str | None) -> None:
    if reason is None:  # extension types are data: they pass through untouched
        assert codec.decode(frame).body == msgpack.ExtType(5, b"x")
        return
    with pytest.raises(ProtocolError, match=reason):
        codec.decode(frame)


def test_nesting_beyond_the_limit_is_refused() -> None:
    small = Codec(CodecLimits(max_depth=8))
    assert small.decode(small.encode(Message(1, "a", "b", nested(6)))).body == nested(6)
    with pytest.raises(ProtocolError, match="deeper than max_depth 8"):
        small.decode(Codec().encode(Message(1, "a", "b", nested(20))))
    with pytest.raises(ProtocolError, match="too deeply"):  # msgpack's own stack bound
        codec.decode(b"\x99\x01\x01\x00\x00\xa0\xa0\x00\x80" + b"\x91" * 5000 + b"\x00")


@pytest.mark.parametrize(("limit", "headers", "body", "passes"), [
    (3, {"ttl": 5}, {"seq": 1, "body": b"x" * 100}, True),    # flat: settled at once
    (3, {}, [1, "two", b"\x91" * 80], True),
    (2, {}, {"seq": 1, "pad": "p" * 100}, True),              # depth 2: itself, the body
    (2, {"ttl": 5}, {"seq": 1, "pad": [1] * 100}, False),     # a list in the body: 3
    (3, {"trace": {"id": [1]}, "pad": "p" * 100}, None, False),   # in the headers: 4
    (3, {}, {"pad": "p" * 100, "deep": {"a": {"b": 1}}}, False),  # in the body: 4
    (4, {}, [b"p" * 100, [[1]]], True),
])
def test_depth_of_flat_and_nested_envelopes(limit: int, headers: dict[str, Any],
                                            body: Any, passes: bool) -> None:
    """The shortcut for flat envelopes and the byte count agree with the walk."""
    small = Codec(CodecLimits(max_depth=limit))
    frame = Codec().encode(Message(1, "a", "b", body, headers=headers))
    if passes:
        assert small.decode(frame).body == body
    else:
        with pytest.raises(ProtocolError, match=f"deeper than max_depth {limit}"):
            small.decode(frame)


def test_nesting_in_large_frames_is_refused_and_bytes_are_no_nesting() -> None:
    """Large frames are walked rather than counted: a deep one is refused, and a
    shallow one whose bin holds many container-like bytes passes."""
    small = Codec(CodecLimits(max_depth=8))
    padding = b"\x91" * 20_000              # array headers, inside a bin: not nesting
    body = {"runs": [[1, "t", padding]], "deep": nested(5)}
    assert small.decode(small.encode(Message(1, "a", "b", body))).body == body
    with pytest.raises(ProtocolError, match="deeper than max_depth 8"):
        small.decode(Codec().encode(Message(1, "a", "b", [padding, nested(20)])))


def test_lengths_beyond_the_limits_are_refused_before_allocation() -> None:
    small = Codec(CodecLimits(max_frame_size=1 << 20, max_str_len=10, max_bin_len=10,
                         max_array_len=10, max_map_len=10))
    with pytest.raises(ProtocolError):
        small.decode(Codec().encode(Message(1, "a", "b", "y" * 100)))
    # a bin header claiming 4 GiB: refused from the header, nothing allocated
    claim = b"\x99\x01\x01\x00\x00\xa0\xa0\x00\x80\xc6\xff\xff\xff\xff"
    with pytest.raises(ProtocolError):
        codec.decode(claim)
    with pytest.raises(ProtocolError, match="exceeds max_frame_size"):
        small.decode(bytes(2 << 20))


def test_encode_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        codec.encode(Message(1, "a", "b", object()))
    with pytest.raises(ProtocolError, match="exceeds max_frame_size"):
        Codec(CodecLimits(max_frame_size=100)).encode(Message(1, "a", "b", b"x" * 200))
    # the codec is still usable after a failed encode
    assert codec.decode(codec.encode(Message(1, "a", "b", 1))).body == 1


def test_kind_numbers_are_fixed_forever() -> None:
    assert {k.name: int(k) for k in Kind} == {
        "SEND": 1, "REQUEST": 2, "REPLY": 3, "ERROR": 4, "ACK": 5, "MOVED": 6,
        "EVENT": 7, "NOTIFY": 8, "BATCH": 9, "PROGRESS": 10}


def test_no_pickle_anywhere() -> None:
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [*root.glob("posa/**/*.py"), *root.glob("posa/transport/**/*.py")]:
        used = re.search(r"^\s*(import|from)\s+(c?pickle|marshal|shelve)\b|pickle\.loads?\(",
                         path.read_text(), re.M)
        assert used is None, f"{path} uses pickle"


@given(st.sampled_from(list(Kind)), st.integers(0, (1 << 64) - 1),
       st.integers(0, (1 << 64) - 1), st.text(max_size=40), st.text(max_size=40),
       st.integers(0, (1 << 64) - 1), st.dictionaries(st.text(max_size=8), leaves, max_size=3),
       bodies)
def test_parts_frame_an_envelope_byte_for_byte_as_pack(
        kind: int, stream: int, id: int, sender: str, recipient: str, correlation: int,
        headers: dict[str, Any], body: Any) -> None:
    """A sender packs only the id and the body of a SEND around the parts it
    packed once: the frame is the very bytes ``pack`` makes."""
    pack, value = codec.packers()
    head, middle = codec.parts(kind, stream, sender, recipient, correlation, headers)
    assert head + value(id) + middle + value(body) == pack(
        kind, stream, id, sender, recipient, correlation, headers, body)


def test_parts_refuse_fields_msgpack_cannot_carry() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        codec.parts(1, 1 << 64, "a", "b", 0, {})


@pytest.mark.parametrize("n", [0x100, 0x101, 0xFFFF, 0x10000, 0x10001, 0xFFFFFFFF])
def test_the_id_encodings_are_msgpacks_own(n: int) -> None:
    from posa.wire.codec import U16, U32
    assert (U16(0xCD, n) if n <= 0xFFFF else U32(0xCE, n)) == msgpack.packb(n)
