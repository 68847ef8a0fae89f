"""How deep a decoded envelope nests, bounded cheaply (sans-IO; ``posa.wire.codec``).

``CodecLimits.max_depth`` bounds the nesting of every envelope decoded from
untrusted bytes. The walk over the decoded objects (``depth_of``) costs a step
per container, so the codec first settles what it can more cheaply: an
envelope whose headers and body hold no container (``shallow``), or a frame
whose container bytes are too few to reach the limit (``CONTAINER_BYTES``).
"""
from __future__ import annotations

from typing import Any

from posa.errors import ProtocolError

__all__ = ["CONTAINER_BYTES", "WALK_ABOVE", "depth_of", "shallow", "within", "too_deep"]

# Bytes that can start a msgpack map or array: a frame's depth is at most their count
# (the size less what deleting them leaves), so the walk runs only if the count could
# exceed the limit; above ``WALK_ABOVE`` bytes the walk alone, cheaper than the count.
CONTAINER_BYTES = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"
WALK_ABOVE = 8192
_CONTAINERS = frozenset((dict, list))   # what msgpack decodes a map and an array to


def depth_of(obj: Any) -> int:
    """Nesting depth of containers in ``obj`` (iterative: no recursion)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if type(item) is dict:
            children = item.values()
        elif type(item) is list:
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children
                     if type(child) is dict or type(child) is list)
    return deepest


def shallow(headers: dict[str, Any], body: Any) -> bool:
    """True if no value of ``headers`` and no item of ``body`` is a container: the
    envelope then nests at most three deep (itself, the headers or the body, an
    item), which settles the depth bound of most envelopes without the byte
    count (a translate of the whole frame: ~3.5k instructions at 150 bytes)."""
    for value in headers.values():
        if type(value) in _CONTAINERS:
            return False
    kind = type(body)
    if kind is dict:
        items: Any = body.values()
    elif kind is list:
        items = body
    else:
        return True
    for item in items:  # noqa: SIM110 (all() of a generator: a frame per item)
        if type(item) in _CONTAINERS:
            return False
    return True


def within(obj: Any, budget: int) -> bool:
    """True if ``obj`` nests at most ``budget`` containers deep; flat containers
    (the common case) are settled without the full walk."""
    if type(obj) is dict:
        children: Any = obj.values()
    elif type(obj) is list:
        children = obj
    else:
        return True
    for child in children:
        if type(child) is dict or type(child) is list:
            return depth_of(obj) <= budget
    return budget >= 1


def too_deep(max_depth: int) -> ProtocolError:
    """The error for a message that nests deeper than ``max_depth``."""
    return ProtocolError(f"message nests deeper than max_depth {max_depth}")
