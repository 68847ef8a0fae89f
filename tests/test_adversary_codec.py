"""The adversary of the codec's cheap depth bound (``posa.wire.nesting``: flat
envelopes settled without a walk, small frames by their count of container
bytes, large ones walked; batches checked envelope by envelope): untrusted
frames of random nesting near the limit, padded below and above the sizes where
the codec changes its way, containers hidden in headers, bodies and strings of
container bytes, alone and in batches. A frame is taken exactly when every
message in it nests at most ``max_depth`` deep, as the plain walk says."""
from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.errors import ProtocolError
from posa.wire.codec import VERSION, Codec, CodecLimits, Kind
from posa.wire.nesting import WALK_ABOVE, depth_of

# text full of the bytes that start a msgpack container (0x80-0x9f as raw bytes
# inside a str/bin), to fool a count of them one way or the other
_TRICKY = st.binary(max_size=40).map(lambda b: bytes(x | 0x80 for x in b))
_LEAF = st.one_of(st.integers(-3, 300), st.text(max_size=8), _TRICKY, st.none())
_VALUE = st.recursive(_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=12)


def _deepen(value: Any, extra: int) -> Any:
    for n in range(extra):
        value = [value] if n % 2 else {"d": value}
    return value


@st.composite
def _message(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    headers = draw(st.dictionaries(st.sampled_from(["a", "key", "trace"]),
                                   _VALUE, max_size=2))
    body = _deepen(draw(_VALUE), draw(st.integers(0, 10)))
    pad = draw(st.sampled_from([0, 10, WALK_ABOVE - 200, WALK_ABOVE + 50]))
    if pad:
        headers["pad"] = "p" * pad
    return headers, body


def _fields(kind: int, headers: dict[str, Any], body: Any, id: int = 1) -> list[Any]:
    return [VERSION, kind, 7, id, "adv/a", "adv/b", 0, headers, body]


def _taken(codec: Codec, data: bytes) -> bool:
    try:
        msg = codec.decode(data)
        if msg.kind == Kind.BATCH:
            codec.unbatch(msg)
    except ProtocolError as exc:
        assert "deeper than max_depth" in str(exc) or "too deeply" in str(exc), exc
        return False
    return True


@settings(max_examples=150)
@given(limit=st.integers(3, 12), message=_message(), kind=st.sampled_from(
    [Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.NOTIFY]))
def test_a_frame_is_taken_exactly_when_it_nests_within_the_limit(
        limit: int, message: tuple[dict[str, Any], Any], kind: int) -> None:
    headers, body = message
    fields = _fields(kind, headers, body)
    data = msgpack.packb(fields, use_bin_type=True)
    assert _taken(Codec(CodecLimits(max_depth=limit)), data) == (depth_of(fields) <= limit)


@settings(max_examples=100)
@given(limit=st.integers(3, 12), messages=st.lists(_message(), min_size=1, max_size=4),
       batch_headers=st.dictionaries(st.just("b"), _VALUE, max_size=1))
def test_a_batch_is_taken_exactly_when_each_of_its_messages_nests_within_the_limit(
        limit: int, messages: list[tuple[dict[str, Any], Any]],
        batch_headers: dict[str, Any]) -> None:
    inner = [_fields(Kind.SEND, headers, body, id=n + 1)
             for n, (headers, body) in enumerate(messages)]
    fields = _fields(Kind.BATCH, batch_headers, inner, id=0)
    data = msgpack.packb(fields, use_bin_type=True)
    alone = depth_of(_fields(Kind.BATCH, batch_headers, None, id=0)) <= limit and all(
        depth_of(each) <= limit for each in inner)
    assert _taken(Codec(CodecLimits(max_depth=limit)), data) == alone
