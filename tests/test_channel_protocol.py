"""The event channel's wire protocol (pure): one table for the channel and its
clients, uniform refusals, the publish and delivery bodies, and the doc."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from posa.channel.core import ChannelCore
from posa.channel.events import SubscriberState
from posa.channel.protocol import (
    CHANNEL,
    FRAME_MARGIN,
    Publication,
    delivery_body,
    encode_chunks,
    parse_delivery,
    parse_publish,
    publish_body,
    tail_blob,
)
from posa.errors import ProtocolError, Rejected
from tests.support import ROOT

KNOWN = "publish, renew, stats, subscribe, unsubscribe"

BAD_REQUESTS = [       # (body, what the refusal says)
    ("subscribe", f"a channel request is a map with an 'op' field, one of {KNOWN}"),
    ({"topics": ["a"]}, "a map with an 'op' field"),
    ({"op": 3}, "a map with an 'op' field"),
    ({"op": "drop-tables"}, f"unknown channel operation 'drop-tables'; known: {KNOWN}"),
    ({"op": "publish", "bodies": b"\x90"},
     "channel operation 'publish' needs the field 'topics' (a list or a string)"),
    ({"op": "publish", "topics": "t"}, "needs the field 'bodies' (bytes)"),
    ({"op": "publish", "topics": "t", "bodies": [1]},
     "field 'bodies' of channel operation 'publish' must be bytes, got list"),
    ({"op": "publish", "topics": 3, "bodies": b"\x91\x01"}, "must be a list or a string"),
    ({"op": "publish", "topics": "t", "bodies": b"\x91\x01", "vias": "x"},
     "field 'vias' of channel operation 'publish' must be a list, got str"),
    ({"op": "subscribe", "topics": "link/"},
     "field 'topics' of channel operation 'subscribe' must be a list, got str"),
    ({"op": "subscribe", "filter": [1]}, "field 'filter' of channel operation "
                                         "'subscribe' must be a map, got list"),
    ({"op": "subscribe", "buffer": True}, "field 'buffer' of channel operation "
                                          "'subscribe' must be an integer, got bool"),
    ({"op": "subscribe", "policy": 1}, "must be a string, got int"),
    ({"op": "subscribe", "lease": 0.1}, "field 'lease' of channel operation "
                                        "'subscribe' must be 0.5 to 3600 seconds"),
    ({"op": "subscribe", "lease": "6"}, "must be a number, got str"),
    ({"op": "subscribe", "from_seq": 1.5}, "must be an integer, got float"),
    ({"op": "subscribe", "skip_via": "events/a"}, "must be a list, got str"),
]


@pytest.mark.parametrize(("body", "says"), BAD_REQUESTS)
def test_the_table_refuses_malformed_requests_saying_what_to_send(body: Any,
                                                                  says: str) -> None:
    with pytest.raises(Rejected) as refused:
        CHANNEL.parse(body)
    assert says in str(refused.value)


def test_absent_or_nil_fields_take_their_defaults() -> None:
    op, fields = CHANNEL.parse({"op": "subscribe", "filter": None, "from_seq": None})
    assert (op.name, op.oneway) == ("subscribe", False)
    assert fields == {"topics": ("",), "filter": None, "policy": "drop-oldest",
                      "buffer": 1000, "lease": 6.0, "from_seq": None, "inc": None,
                      "skip_via": ()}
    assert CHANNEL.parse({"op": "publish", "topics": "t", "bodies": b"\x90"})[0].oneway
    # the defaults are what the core takes
    ChannelCore("events/t", 1).subscribe("s", **{
        {"buffer": "limit", "inc": "incarnation"}.get(k, k): v for k, v in fields.items()
        if k != "lease"})


def test_clients_build_requests_from_the_table() -> None:
    assert CHANNEL.request("subscribe", topics=["link/"], filter=None, from_seq=3) == {
        "op": "subscribe", "topics": ["link/"], "from_seq": 3}
    assert CHANNEL.request("renew") == {"op": "renew"}
    with pytest.raises(TypeError, match="no field"):
        CHANNEL.request("subscribe", topic=["link/"])
    # and the service binds a handler to every operation
    assert set(CHANNEL.ops) == {"publish", "subscribe", "renew", "unsubscribe", "stats"}


def test_a_publish_body_parses_back_to_its_publication() -> None:
    blob = msgpack.packb([{"port": 3}, None])
    for topics in ("link/down", ["link/down", "link/up"]):
        wire = msgpack.unpackb(msgpack.packb(publish_body(topics, blob)))
        publication = parse_publish(wire)
        assert (publication.topics, publication.blob, publication.vias) == (topics, blob,
                                                                            None)
    with pytest.raises(Rejected, match="expected a channel 'publish'"):
        parse_publish({"op": "stats"})


def test_a_delivery_body_parses_back_and_becomes_events() -> None:
    core = ChannelCore("events/t", 9)
    core.subscribe("s")
    chunks, bad = encode_chunks(lambda s, e: ["a", "b", "c"][s:e], 3, 1 << 20)
    assert bad == [] and len(chunks) == 1
    core.publish(parse_publish(publish_body("t", chunks[0][2])))
    taken = core.take("s", 10)
    assert taken is not None
    body = delivery_body(core.name, core.incarnation, [r.wire(r.blob or b"") for r in
                                                       taken.runs], [], 0, core.seq)
    assert "gaps" not in body
    parts = parse_delivery(msgpack.unpackb(msgpack.packb(body)))
    events = SubscriberState("events/t").accept(*parts)
    assert [(e.seq, e.topic, e.body) for e in events] == [(1, "t", "a"), (2, "t", "b"),
                                                          (3, "t", "c")]


def test_encode_chunks_splits_to_fit_and_names_what_cannot_be_encoded() -> None:
    items: list[Any] = ["x" * 100] * 10 + [{1, 2}] + ["y" * 5000]
    chunks, bad = encode_chunks(lambda s, e: items[s:e], len(items), 1000)
    assert bad == [10, 11]
    assert all(len(blob) <= 1000 for _, _, blob in chunks)
    decoded = [v for _, _, blob in chunks for v in msgpack.unpackb(blob)]
    assert decoded == items[:10]
    assert FRAME_MARGIN > 0


def test_the_protocol_doc_shows_the_table() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## The event channel's requests"):]
    assert CHANNEL.describe() in section, "regenerate it: print(CHANNEL.describe())"


_SCALARS = st.none() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.text(max_size=5) \
    | st.binary(max_size=5)
_BODIES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                       max_leaves=8)


@given(st.lists(_BODIES, max_size=40), st.data())
def test_a_publications_tail_keeps_its_bodies_encoded_and_exact(bodies: list[Any],
                                                                 data: st.DataObject) -> None:
    """A publication cut where a channel took part of it keeps the rest as an
    encoded blob (never decoded) holding exactly the bodies after the cut."""
    start = data.draw(st.integers(0, len(bodies)))
    pub = Publication([f"t{i}" for i in range(len(bodies))], blob=msgpack.packb(bodies))
    rest = pub.tail(start)
    assert rest.bodies is None and rest.blob is not None and not rest.whole
    assert msgpack.unpackb(rest.blob) == bodies[start:]
    assert rest.topics == [f"t{i}" for i in range(start, len(bodies))]


def test_a_tail_of_a_long_array_and_of_what_is_not_msgpack() -> None:
    assert tail_blob(msgpack.packb(list(range(70_000))), 3) == msgpack.packb(
        list(range(3, 70_000)))
    with pytest.raises(ProtocolError):
        tail_blob(b"\x93\x01", 2)
