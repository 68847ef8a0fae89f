"""A channel's deliveries are packed once per pass of its delivery thread
(``Framer.packed``): subscriptions that took the same runs, holes and head share
one ``Packed`` body, the bytes ``bodies`` would be packed to; others get their
own; a delivery that cannot be packed stays a map (its send says why)."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import msgpack

from posa.channel.core import Taken
from posa.channel.framing import Framer
from posa.channel.run import Run
from posa.delivery.quick import Packed
from posa.wire.codec import Codec


def _framer() -> Framer:
    channel: Any = SimpleNamespace(
        name="ch/packed", peer=SimpleNamespace(codec=Codec()), _max_bytes=60_000,
        core=SimpleNamespace(incarnation=4), counters=Counter())
    return Framer(channel)


def _run(first: int, n: int) -> Run:
    return Run(first, ["t"] * n, blob=msgpack.packb([{"seq": i} for i in range(n)]))


def test_alike_takes_share_one_packed_delivery_the_bytes_of_its_map() -> None:
    framer = _framer()
    r1, r2 = _run(1, 3), _run(4, 2)
    takes = [(Taken([r1, r2], [], 0, False, False), 9),
             (Taken([r1, r2], [], 0, False, False), 9),
             (Taken([r1, r2], [[5, 2, "dropped"]], 2, False, False), 9),
             (Taken([r2], [], 0, False, False), 9),
             (Taken([r1, r2], [], 0, False, False), 10)]
    packed = framer.packed(takes)
    for (taken, head), bodies in zip(takes, packed):
        assert all(type(body) is Packed for body in bodies)
        assert bodies == [msgpack.packb(b) for b in framer.bodies(taken, head)]
    assert packed[0][0] is packed[1][0]                     # packed once
    assert len({id(bodies[0]) for bodies in packed}) == 4   # the others: their own
    assert msgpack.unpackb(packed[0][0])["runs"][0][2] == r1.blob


def test_a_delivery_that_cannot_be_packed_stays_a_map() -> None:
    framer = _framer()
    run = _run(1, 1)
    run.traces = [{"tp": {1, 2}}]   # (a set: no msgpack value)
    good = _run(2, 2)
    [[body], [after]] = framer.packed([(Taken([run], [], 0, False, False), 1),
                                       (Taken([good], [], 0, False, False), 3)])
    assert type(body) is dict and body["runs"][0][2] == run.blob
    assert after == msgpack.packb(framer.bodies(Taken([good], [], 0, False, False), 3)[0])
