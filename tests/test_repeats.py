"""Stream-less requests decoded once (``posa.wire.repeats``): a repeat is the
message ``Codec.decode`` makes of its bytes, its own copy, admitted as any other
(rules, limits), and a dispatcher answering repeats answers the table of now."""
from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import posa
from posa.admission.gatekeeper import Gatekeeper, Rejection
from posa.admission.quotas import Rate, RateLimiter
from posa.errors import NameNotFound, ProtocolError
from posa.security import Acl
from posa.wire.codec import Codec, Kind
from posa.wire.repeats import MAX_HELD, Repeats

pytestmark = pytest.mark.timeout(60)

CODEC = Codec()
PACK = CODEC.packer()
FIRST_ID = 0x10000          # from here to 2**32 an id is packed in four bytes (0xce)

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20))
FLAT = st.dictionaries(st.text(max_size=8), SCALARS, max_size=4)
NESTED = st.dictionaries(st.text(max_size=8), st.lists(SCALARS, max_size=2), min_size=1,
                         max_size=2).filter(lambda d: any(d.values()))


def lookup(id: int, name: str = "svc/a", *, headers: dict[str, Any] | None = None,
           body: Any = None, kind: int = Kind.REQUEST, stream: int = 0) -> bytes:
    return PACK(kind, stream, id, "", "posa/dispatcher", 0,
                {"ttl": 5000} if headers is None else headers,
                {"op": "lookup", "name": name} if body is None else body)


def same(a: posa.Message, b: posa.Message) -> bool:
    return a == b and (a.route, a.deadline) == (b.route, b.deadline)


@given(headers=FLAT, body=FLAT, ids=st.lists(st.integers(FIRST_ID, 2**32 - 1), min_size=2,
                                             max_size=4))
def test_a_repeat_is_what_the_codec_decodes_of_its_bytes(
        headers: dict[str, Any], body: dict[str, Any], ids: list[int]) -> None:
    repeats = Repeats(CODEC.decode)
    for id in ids:
        frame = lookup(id, headers=headers, body=body)
        msg = repeats.decode(frame)
        assert same(msg, CODEC.decode(frame)) and msg.id == id
        assert type(msg.kind) is type(CODEC.decode(frame).kind)


@given(nested=NESTED, what=st.sampled_from(["body", "headers", "stream", "kind", "id"]))
def test_what_may_not_repeat_is_decoded_whole_each_time(nested: dict[str, Any],
                                                        what: str) -> None:
    """Containers inside, another stream or kind, an id not of four bytes: each
    frame decoded whole (as the codec does), nothing kept."""
    made = {"body": lambda id: lookup(id, body=nested),
            "headers": lambda id: lookup(id, headers=nested),
            "stream": lambda id: lookup(id, stream=7),
            "kind": lambda id: lookup(id, kind=Kind.SEND),
            "id": lambda id: lookup(id - FIRST_ID + 1)}[what]
    repeats = Repeats(CODEC.decode)
    for id in (FIRST_ID, FIRST_ID + 1):
        assert same(repeats.decode(made(id)), CODEC.decode(made(id)))
    assert not repeats._held


def test_each_repeat_has_its_own_headers_and_body() -> None:
    repeats = Repeats(CODEC.decode)
    first = repeats.decode(lookup(FIRST_ID))
    first.headers["posa.key"] = "forged"
    first.body["name"] = "svc/changed"
    second = repeats.decode(lookup(FIRST_ID + 1))
    second.headers.clear()
    third = repeats.decode(lookup(FIRST_ID + 2))
    assert (third.headers, third.body) == ({"ttl": 5000}, {"op": "lookup", "name": "svc/a"})


def test_a_frame_unlike_a_kept_one_is_refused_as_the_codec_refuses_it() -> None:
    repeats = Repeats(CODEC.decode)
    kept = lookup(FIRST_ID)
    repeats.decode(kept)
    for bad in (kept[:-1], kept + b"\x00", kept[:-3] + b"\xc1" + kept[-2:],
                kept.replace(b"posa/dispatcher", b"posa/dispatcheR"[:-1] + b"\xff")):
        with pytest.raises(ProtocolError) as codec_says:
            CODEC.decode(bad)
        with pytest.raises(ProtocolError) as repeats_say:
            repeats.decode(bad)
        assert str(repeats_say.value) == str(codec_says.value)
    assert same(repeats.decode(bytearray(kept)), CODEC.decode(kept))     # not bytes: whole


def test_what_is_kept_stays_bounded() -> None:
    repeats = Repeats(CODEC.decode)
    for n in range(MAX_HELD + 10):
        frame = lookup(FIRST_ID + n, f"svc/n{n}")
        assert repeats.decode(frame).body["name"] == f"svc/n{n}"
        assert len(repeats._held) <= MAX_HELD
    assert repeats.decode(lookup(FIRST_ID, "svc/n0")).body["name"] == "svc/n0"


def test_rules_and_limits_apply_to_every_repeat() -> None:
    """A repeat passes the gatekeeper's access rules and rate limits like the
    first: refused each time it is refused, counted each time it passes."""
    keeper = Gatekeeper(Codec(), authorizer=Acl([("(anonymous)", "posa/dispatcher")]),
                        limiter=RateLimiter(per_source=None, per_sender=Rate(1, 3),
                                            clock=lambda: 0.0))
    for id in range(FIRST_ID, FIRST_ID + 3):
        assert keeper.admit(lookup(id), "conn").id == id
    with pytest.raises(Rejection) as limited:
        keeper.admit(lookup(FIRST_ID + 3), "conn")
    assert limited.value.reason == "rate-limited"
    for id in range(FIRST_ID, FIRST_ID + 3):
        with pytest.raises(Rejection) as forbidden:
            keeper.admit(PACK(Kind.REQUEST, 0, id, "", "svc/other", 0, {},
                              {"op": "lookup", "name": "svc/a"}), "conn")
        assert forbidden.value.reason == "forbidden"
    assert keeper.rejections["forbidden"] == 3


def test_a_dispatcher_answers_each_repeated_lookup_from_the_table_of_now() -> None:
    """The same lookup, byte for byte but its id, after every kind of change:
    each answer is the registration as it is then, or none."""
    with posa.Dispatcher("tcp://127.0.0.1:0", sweep_interval=0.05) as dispatcher, \
            posa.RegistryClient(dispatcher.address, cache=False) as reg:
        def now() -> tuple[Any, ...] | None:
            try:
                r = reg.lookup("svc/moving")
            except NameNotFound:
                return None
            return (r.epoch, r.addresses, dict(r.meta), r.lease)

        assert now() is None
        first = reg.register("svc/moving", ["tcp://127.0.0.1:9001"], credential="a", lease=30)
        assert now() == (first.epoch, ("tcp://127.0.0.1:9001",), {}, 30.0)
        moved = reg.register("svc/moving", ["tcp://127.0.0.1:9002"], credential="a",
                             lease=30, meta={"v": 2})      # a migration: the next epoch
        assert now() == (moved.epoch, ("tcp://127.0.0.1:9002",), {"v": 2}, 30.0)
        assert moved.epoch > first.epoch
        time.sleep(0.2)
        left = reg.lookup("svc/moving").expires_in
        reg.renew("svc/moving", credential="a")
        assert reg.lookup("svc/moving").expires_in > left
        reg.unregister("svc/moving", credential="a")
        assert now() is None
        other = reg.register("svc/moving", ["tcp://127.0.0.1:9003"], credential="b",
                             lease=0.3)
        assert now() == (other.epoch, ("tcp://127.0.0.1:9003",), {}, 0.3)
        time.sleep(0.4)                                     # its lease ran out
        assert now() is None
        assert dispatcher.stats["requests"] >= 8
