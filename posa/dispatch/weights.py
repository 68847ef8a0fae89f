"""Weighted round robin over a service's servers, by the weights they claim.

A server's weight is its registration's meta (``posa.Server(weight=W)``), written
by whoever registered it: it is read as a whole number from 1 to ``MAX_WEIGHT``
(a float is cut to its whole part; anything else, ``nan``, a string, a list,
counts as 1; more than the most counts as the most), and a pick walks the
weights, never making a slot per unit of weight, so a claimed weight of 10**12
costs what a weight of 1 does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from posa.naming.registration import Registration

__all__ = ["MAX_WEIGHT", "weight", "pick", "check_weight"]

MAX_WEIGHT = 1000
"""The most turns one server gets in a cycle."""


def weight(meta: Any) -> int:
    """The turns per cycle of a server whose registration carries ``meta``."""
    claimed = meta.get("weight", 1) if isinstance(meta, Mapping) else 1
    if isinstance(claimed, float) and math.isfinite(claimed):
        claimed = int(claimed)
    if type(claimed) is not int:
        return 1
    return min(max(claimed, 1), MAX_WEIGHT)


def pick(servers: Sequence[Registration], turn: int) -> Registration:
    """The server whose turn ``turn`` is: a server of weight w gets w turns in a
    cycle, the servers in their order (``servers`` is not empty)."""
    weights = [weight(r.meta) for r in servers]
    left = turn % sum(weights)
    for server, turns in zip(servers, weights):
        if left < turns:
            return server
        left -= turns
    raise AssertionError("unreachable: left < sum(weights)")


def check_weight(claimed: Any) -> int:
    """``claimed`` if it is a weight a server may register with (a whole number
    1-``MAX_WEIGHT``), else ``ValueError`` saying what to pass."""
    if type(claimed) is not int or not 1 <= claimed <= MAX_WEIGHT:
        raise ValueError(f"a server's weight must be a whole number from 1 to {MAX_WEIGHT} "
                         f"(its turns in each cycle of the dispatcher's round robin), "
                         f"not {claimed!r}")
    return claimed
