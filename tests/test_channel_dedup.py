"""The de-duplication state of a channel: correct for any arrival order within
its window, and bounded whatever arrives (sans-IO)."""
from __future__ import annotations

import random


def test_each_origin_event_is_new_once_in_any_order_within_the_window() -> None:
    from posa.channel.dedup import OriginSeen
    seen = OriginSeen()
    order = list(range(1, 2001)) * 2            # every event by two paths ...
    random.Random(7).shuffle(order)             # ... in any order
    accepted = []
    for seq in order:
        if seen.is_new("events/a", 1, seq):
            seen.note("events/a", 1, seq)
            accepted.append(seq)
    assert sorted(accepted) == list(range(1, 2001))
    assert seen.is_new("events/a", 2, 5)        # another incarnation is another origin


def test_the_dedup_state_is_bounded() -> None:
    from posa.channel.dedup import MAX_ORIGINS, MAX_PUBLISHERS, WINDOW, OriginSeen, PublisherSeen
    seen = OriginSeen()
    for origin in range(MAX_ORIGINS + 50):
        seen.note(f"events/o{origin}", 1, 1)
    assert len(seen._origins) == MAX_ORIGINS
    for k in range(1, 200):                     # sparse seqs: a filter upstream
        seen.note("events/sparse", 1, k * 1000)
    assert len(seen._origins[("events/sparse", 1)].missing) <= 2 * WINDOW
    assert not seen.is_new("events/sparse", 1, 1000)          # far behind: a duplicate
    assert seen.expired == 1
    publishers = PublisherSeen()
    for pid in range(MAX_PUBLISHERS + 10):
        publishers.note(pid, 1)
    assert len(publishers._last) == MAX_PUBLISHERS
    assert publishers.seen(MAX_PUBLISHERS + 9, 1) and not publishers.seen(0, 1)
