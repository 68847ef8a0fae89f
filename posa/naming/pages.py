"""Pages of names: what bounds one page, and walking every page of a pattern.

A registry may hold more registrations than one reply can carry (the frame limit
is 16 MiB), so ``names`` is answered a page at a time: the live registrations
named above a *cursor*, sorted by name, at most ``PAGE_ENTRIES`` of them and
``PAGE_BYTES`` bytes on the wire, with the cursor of the next page (None after
the last). A cursor is a name, the last one the page looked at.

What a walk promises while names come and go: names come sorted, each at most
once (every page starts above the previous cursor); every name that is live for
the whole walk is listed (the pages cover the names in order without a gap); a
name registered or gone during the walk may be listed or not.

``merge(pages, limit)`` makes one page of the pages several registries gave
to the same request (a dispatcher and those it federates with).

``walk(page)`` turns a ``page(after) -> (registrations, cursor)`` function into an
iterator over pages, bounded: a cursor that does not move ends it with a
``ProtocolError``. ``registrations(registry, pattern)`` lists a pattern through
any ``Registry``: page by page where the registry has ``pages``, else its
``names``. Pure: no I/O of its own.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from posa.errors import ProtocolError
from posa.naming.registration import Registration, Registry

__all__ = ["PAGE_ENTRIES", "PAGE_BYTES", "MAX_SCAN", "wire_size", "walk", "registrations",
           "merge"]

PAGE_ENTRIES = 1000         # registrations per page at most (a request may ask fewer)
PAGE_BYTES = 1024 * 1024    # bytes of registrations per page at most (one at least)
MAX_SCAN = 50_000           # names a page looks at, at most (a sparse pattern's page
                            # may come back short, or empty, with a cursor)

# a registration map's msgpack bytes besides its name, addresses and meta: the map
# header, the six keys (43 bytes), the headers of name and addresses, epoch, lease and
# expires_in (9 bytes each at most), rounded up
_FIXED = 96


def wire_size(name: str, addresses: tuple[str, ...], meta_size: int) -> int:
    """An upper bound of the bytes a registration takes in a reply, from its name,
    its addresses and the packed size of its meta."""
    return (_FIXED + len(name.encode("utf-8", "surrogatepass")) + meta_size
            + sum(5 + len(a.encode("utf-8", "surrogatepass")) for a in addresses))


Page = Callable[[str | None], tuple[list[Registration], str | None]]
"""``page(after) -> (registrations, cursor of the next page or None)``."""


def walk(page: Page) -> Iterator[list[Registration]]:
    """Every page, first to last, asking ``page`` with each page's cursor."""
    cursor: str | None = None
    while True:
        found, after = page(cursor)
        yield found
        if after is None:
            return
        if cursor is not None and after <= cursor:
            raise ProtocolError(f"a page cursor went from {cursor!r} back to {after!r}; "
                                "the registry must return a cursor above the last one")
        cursor = after


def registrations(registry: Registry, pattern: str = "**") -> Iterator[Registration]:
    """Every live registration matching ``pattern``, sorted by name, read page by
    page where ``registry`` has pages (``LocalRegistry``, ``RegistryClient``)."""
    pages = getattr(registry, "pages", None)
    if pages is None:
        yield from registry.names(pattern)
        return
    for found in pages(pattern):
        yield from found


WirePage = tuple[list[dict[str, Any]], "str | None"]


def merge(pages: list[WirePage], limit: int, max_bytes: int = PAGE_BYTES) -> WirePage:
    """One page of wire registrations from the pages several registries answered
    to the same request, first page's registration of a name winning. Only names
    up to the lowest cursor are certain (a registry that stopped there may hold a
    smaller name than another one's next), so the page ends there; then at
    ``limit`` entries or ``max_bytes``."""
    cursors = [cursor for _, cursor in pages if cursor is not None]
    bound = min(cursors) if cursors else None
    found: dict[str, dict[str, Any]] = {}
    for page, _ in pages:
        for registration in page:
            name = registration.get("name") if isinstance(registration, dict) else None
            if isinstance(name, str) and (bound is None or name <= bound):
                found.setdefault(name, registration)
    merged: list[dict[str, Any]] = []
    size = 0
    for name in sorted(found):
        cost = len(msgpack.packb(found[name]))
        if merged and (len(merged) >= limit or size + cost > max_bytes):
            return merged, merged[-1]["name"]
        merged.append(found[name])
        size += cost
    return merged, bound
