"""A service's servers are picked by their weight, whatever weight a registration claims.

The weight is the registration's meta, which any client that may register under
the service's name writes. The dispatcher made a list of *weight* slots per server
on every pick: a weight that is not a number (``"heavy"``, ``nan``) made every pick
of the service fail with ``RemoteError`` for every client; a weight of 10**12
would have had the dispatcher build a list of a trillion entries. Now a weight is
a whole number from 1 to ``MAX_WEIGHT`` (anything else counts as 1, more as the
most), and a pick walks the weights without making slots. (Run against the old
code, leave the two huge weights out: they would eat the machine's memory.)
Real dispatcher, servers and client over tcp.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest

import posa
from posa.dispatch.weights import MAX_WEIGHT
from posa.naming.client import RegistryClient
from tests.support import start_dispatcher

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def dispatcher() -> Iterator[str]:
    proc, address = start_dispatcher()
    try:
        yield address
    finally:
        proc.close()


@pytest.mark.parametrize("weight", ["heavy", math.nan, -5, 0, None, [3], 2.5,
                                    10 ** 12, 2 ** 64 - 1])
def test_a_claimed_weight_of_any_kind_leaves_the_service_answered(
        dispatcher: str, weight: object) -> None:
    registry = RegistryClient(dispatcher, timeout=5.0, cache=False)
    with posa.Server("weights/svc", lambda body: ("real", body), dispatcher=dispatcher), \
            posa.Client(dispatcher=dispatcher, timeout=10.0, attempt_timeout=0.5) as client:
        # a registration under the service with no server behind it and a bad weight
        registry.register("weights/svc/claimed", ["tcp://127.0.0.1:9"], credential="c",
                          lease=30.0, meta={"service": "weights/svc", "weight": weight})
        for i in range(4):
            assert client.call("weights/svc", i) == ["real", i]
        registry.unregister("weights/svc/claimed", credential="c")


def test_picks_follow_the_weights(dispatcher: str) -> None:
    with posa.Server("weights/rr", lambda body: "one", dispatcher=dispatcher, weight=1,
                     name="weights/rr/one"), \
            posa.Server("weights/rr", lambda body: "three", dispatcher=dispatcher, weight=3,
                        name="weights/rr/three"):
        registry = RegistryClient(dispatcher, timeout=5.0, cache=False)
        picks = Counter(registry.pick("weights/rr").name for _ in range(8))
        assert picks == {"weights/rr/one": 2, "weights/rr/three": 6}


def test_the_most_a_weight_counts_for_is_bounded() -> None:
    assert 1 <= MAX_WEIGHT <= 10_000
