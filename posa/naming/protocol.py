"""The dispatcher's wire protocol, written once for its server and its clients.

The dispatcher (``posa.dispatch.dispatcher``, the server) and the
``RegistryClient`` (``posa.naming.client``, its client) both speak what this
module declares, so neither can drift from the other nor from
docs/protocol.md (a test compares the document with ``OPS.describe()``):

- ``DISPATCHER``, the name every dispatcher answers to;
- ``OPS``, the operations with their field schema: the server parses and
  dispatches a request by it (a malformed one gets a ``Rejected`` saying what
  to send), the client builds its requests with ``OPS.request``;
- a *registration* on the wire, a map ``{name, addresses, epoch, lease,
  expires_in, meta}`` (``registration_to_wire`` / ``registration_from_wire``);
- a change notice, the body of a NOTIFY after ``watch``:
  ``{name, registration or nil}`` (``notice_to_wire`` / ``notice_from_wire``);
- a page of ``names``: ``{page: [registration], next: cursor or nil}``
  (``page_to_wire`` / ``page_from_wire``; ``posa.naming.pages`` bounds a page).

Pure: no I/O; nothing above the naming layer's registration types.
"""
from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from posa.errors import ProtocolError
from posa.naming.pages import PAGE_BYTES, PAGE_ENTRIES
from posa.naming.registration import DEFAULT_LEASE, Registration
from posa.wire.schema import Field, Op, OpTable

__all__ = ["DISPATCHER", "OPS", "registration_to_wire", "registration_from_wire",
           "registration_parts",
           "notice_to_wire", "notice_from_wire", "page_to_wire", "page_from_wire"]

DISPATCHER = "posa/dispatcher"
"""The name every dispatcher answers to (besides its own ``posa/dispatcher/NODE``)."""


def _strings(value: Sequence[Any]) -> bool:
    return all(isinstance(item, str) for item in value)


_NAME = Field("name", str)
_CREDENTIAL = Field("credential", str)
# federation: the dispatchers a forwarded request passed, and how far it went
_VIA = Field("via", list, (), _strings, "a list of dispatcher nodes (strings)")
_HOPS = Field("hops", int, 0, lambda hops: hops >= 0, "an integer >= 0")

OPS = OpTable("dispatcher", [
    Op("register", (
        _NAME,
        Field("addresses", list, check=_strings,
              must="a list of transport URIs (strings), e.g. ['tcp://127.0.0.1:7000']"),
        _CREDENTIAL,
        Field("epoch", int, None),
        Field("lease", (int, float), DEFAULT_LEASE),
        Field("meta", dict, None)),
       doc="bind `name` to `addresses` (transport URIs, preferred first) for `lease` "
           "seconds (default 10), owned by `credential`; no `epoch` takes the next one "
           "→ registration"),
    Op("renew", (_NAME, _CREDENTIAL),
       doc="restart the lease of `name`'s live registration → registration"),
    Op("unregister", (_NAME, _CREDENTIAL),
       doc="remove `name`'s live registration → nil"),
    Op("lookup", (_NAME, _VIA, _HOPS),
       doc="the live registration of `name`; if none is held here, the federated "
           "dispatchers are asked (`via`: the dispatcher nodes passed, `hops`: how "
           "far; set by dispatchers); Unreachable (code 10) if one could not be asked "
           "and none had it → registration"),
    Op("names", (Field("pattern", str, "**"), Field("after", str, None),
                 Field("limit", int, PAGE_ENTRIES, lambda limit: limit >= 1,
                       "an integer >= 1"), _VIA, _HOPS),
       doc="one page of the live registrations whose name matches `pattern` (default "
           "`**`), here and at the federated dispatchers (`via`, `hops` as for "
           "`lookup`; a dispatcher already in `via` answers an empty last page): those "
           f"named above the cursor `after` (none: from the first), sorted by name, at "
           f"most `limit` (default and most {PAGE_ENTRIES}) and {PAGE_BYTES // 2**20} MiB; "
           "`next` is the cursor of the next page, nil after the last → "
           "`{page: [registration], next}`"),
    Op("pick", (Field("service", str),
                Field("exclude", list, (), _strings, "a list of server names (strings)"),
                _VIA, _HOPS),
       doc="one live server of `service` other than the server names in `exclude`, "
           "round robin by weight; federated like `lookup` → registration"),
    Op("services", (Field("after", str, None),),
       doc="one page of the services with the names of their servers: the servers named "
           "above the cursor `after` (none: from the first), in name order, bounded as a "
           "page of `names`; `next` is the cursor of the next page, nil after the last → "
           "`{services: {service: [name]}, next}`"),
    Op("watch", (),
       doc="send a NOTIFY `{name, registration or nil}` on this connection for every "
           "change → `{instance}`"),
    Op("ping", (),
       doc="liveness; `instance` changes when the dispatcher restarts → "
           "`{instance, node}`"),
])


def registration_to_wire(r: Registration) -> dict[str, Any]:
    """``r`` as the map the protocol carries."""
    return {"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
            "lease": r.lease, "expires_in": r.expires_in, "meta": dict(r.meta)}


RegistrationParts = tuple[Callable[[bytes, float, bytes], bytes], bytes, bytes]


def registration_parts(name: str, addresses: Sequence[str], epoch: int, lease: float,
                       meta: Mapping[str, Any]) -> RegistrationParts:
    """The map of ``registration_to_wire`` packed (msgpack), in parts around the
    value of ``expires_in``: ``(join, head, tail)``, the head what comes before
    that value (ending with the marker of a float64), the tail what follows, and
    ``join(head, expires_in, tail)`` the whole map, the same bytes, without
    building or packing the map (one call of a ``struct`` made for the two
    lengths, shared by the registrations of the same)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    head = b"".join([b"\x86", pack("name"), pack(name), pack("addresses"),
                     pack(list(addresses)), pack("epoch"), pack(epoch), pack("lease"),
                     pack(float(lease)), pack("expires_in"), b"\xcb"])
    tail = pack("meta") + pack(dict(meta))
    return _joiner(len(head), len(tail)), head, tail


@functools.lru_cache(maxsize=256)
def _joiner(head: int, tail: int) -> Callable[[bytes, float, bytes], bytes]:
    """The ``struct`` pack of ``head`` bytes, a float64 and ``tail`` bytes."""
    return struct.Struct(f">{head}sd{tail}s").pack


def registration_from_wire(data: Any) -> Registration:
    """The registration a dispatcher sent; ``ProtocolError`` if it is malformed."""
    try:
        return Registration(data["name"], tuple(data["addresses"]), int(data["epoch"]),
                            float(data["lease"]), float(data["expires_in"]),
                            dict(data["meta"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise ProtocolError(f"malformed registration from the dispatcher: {exc}") from None


def notice_to_wire(name: str, registration: Registration | None) -> dict[str, Any]:
    """The body of the NOTIFY that tells a watcher ``name`` changed (None: gone)."""
    return {"name": name, "registration": None if registration is None
            else registration_to_wire(registration)}


def notice_from_wire(body: Any) -> tuple[str, Registration | None] | None:
    """``(name, registration or None)`` from a NOTIFY body, or None if the body
    names nothing. ``ProtocolError`` if the registration is malformed (the body's
    ``name`` is a str then)."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return None
    data = body.get("registration")
    return body["name"], None if data is None else registration_from_wire(data)


def page_to_wire(page: list[dict[str, Any]], cursor: str | None) -> dict[str, Any]:
    """The reply to ``names``: registrations (as ``registration_to_wire`` made them)
    and the cursor of the next page (None after the last)."""
    return {"page": page, "next": cursor}


def page_from_wire(body: Any) -> tuple[list[Registration], str | None]:
    """``(registrations, next cursor or None)`` from a ``names`` reply;
    ``ProtocolError`` if it is malformed."""
    if (not isinstance(body, dict) or not isinstance(body.get("page"), list)
            or not isinstance(body.get("next"), (str, type(None)))):
        raise ProtocolError("malformed page of names from the dispatcher: expected "
                            f"{{page: [registration], next}}, got {type(body).__name__}")
    return [registration_from_wire(r) for r in body["page"]], body["next"]
