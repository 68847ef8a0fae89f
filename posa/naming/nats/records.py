"""How a registration lives in a key-value bucket: keys, records and the rules, sans-IO
(and how NATS servers are written: ``server_list``).

Keys. A name's segments become a key's tokens: ``netmgmt/site-a/agent.3`` is
``n.netmgmt.site-a.agent=2E3`` (the ``n.`` prefix keeps the bucket open to other
uses; a ``.`` inside a segment is written ``=2E``, ``=`` being no name
character). So a group pattern becomes a NATS subject filter exactly: ``*`` is
one token, ``**`` (one or more segments, last only) is ``>``.

Records (msgpack). A live registration is ``{"a": addresses, "e": epoch, "l":
lease, "x": expires_at, "m": meta, "o": owner digest}``; ``expires_at`` is wall
clock (``time.time()``) seconds, since processes on several hosts read it. A
dead one, unregistered or reaped, is a tombstone ``{"e": epoch}``: the key
stays, so an epoch never goes back. A record whose ``expires_at`` has passed is
dead for every reader whether or not it has been reaped.

Rules. ``apply`` runs the operation on a ``RegistryTable`` holding that one
record, the very code ``LocalRegistry`` runs, so a stale epoch or a foreign
credential is refused with the same errors and words; the new record is the
table's state afterwards. The caller writes it with compare-and-set on the
revision it read, and starts again if another writer came first.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import msgpack

from posa.errors import PosaError, ProtocolError
from posa.naming.pages import PAGE_BYTES, wire_size
from posa.naming.registration import Registration
from posa.naming.table import STATE_VERSION, RegistryTable
from posa.wire.names import Pattern

__all__ = ["server_list", "PREFIX", "key_of", "name_of", "filter_of", "pack", "unpack", "is_live",
           "registration", "apply", "page"]

PREFIX = "n."
_T = TypeVar("_T")
Record = dict[str, Any]


def server_list(servers: str | Sequence[str]) -> list[str]:
    """``nats://h:p,h:p`` (or a list of such) as one URL per server."""
    items = [servers] if isinstance(servers, str) else list(servers)
    urls = []
    for item in items:
        scheme, sep, rest = item.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            raise PosaError(f"{item!r} is not a NATS address; write nats://HOST:PORT"
                            "[,HOST:PORT...]")
        urls += [f"{scheme}://{where}" for where in rest.split(",") if where]
    return urls


def key_of(name: str) -> str:
    """The bucket key of a valid name."""
    return PREFIX + ".".join(s.replace(".", "=2E") for s in name.split("/"))


def name_of(key: str) -> str | None:
    """The name a key holds (None for a key that is not a name's)."""
    if not key.startswith(PREFIX):
        return None
    return "/".join(t.replace("=2E", ".") for t in key[len(PREFIX):].split("."))


def filter_of(pattern: str) -> str:
    """The subject filter of a group pattern (``InvalidName`` if malformed)."""
    tokens = [">" if s == "**" else s if s == "*" else s.replace(".", "=2E")
              for s in Pattern(pattern).segments]
    return PREFIX + ".".join(tokens)


def pack(record: Record) -> bytes:
    return msgpack.packb(record)


def unpack(data: bytes | None) -> Record | None:
    """The record in a value (None for an empty value or one that is no record)."""
    if not data:
        return None
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a registry record is not msgpack ({exc}); is the bucket "
                            "shared with something other than posa?") from None
    if not isinstance(record, dict) or not isinstance(record.get("e"), int):
        raise ProtocolError("a registry record has no epoch; is the bucket shared with "
                            "something other than posa?")
    return record


def is_live(record: Record | None, now: float) -> bool:
    return record is not None and "o" in record and record["x"] > now


def registration(name: str, record: Record, now: float) -> Registration:
    """The ``Registration`` of a live record."""
    return Registration(name, tuple(record["a"]), record["e"], record["l"],
                        record["x"] - now, MappingProxyType(record["m"] or {}))


def apply(name: str, record: Record | None, op: Callable[[RegistryTable], _T]
          ) -> tuple[_T, Record | None]:
    """Run ``op`` on a table holding ``record`` (a name's current record, or
    None); return its result and the record to write (None: nothing to write)."""
    now = time.time()
    state: dict[str, Any] = {"version": STATE_VERSION, "entries": [], "epochs": {}}
    if is_live(record, now):
        assert record is not None
        state["entries"].append({"name": name, "addresses": record["a"],
                                 "epoch": record["e"], "lease": record["l"],
                                 "expires_in": record["x"] - now, "meta": record["m"] or {},
                                 "owner": record["o"]})
    elif record is not None:
        state["epochs"][name] = record["e"]
    table = RegistryTable.import_state(state)
    result = op(table)
    return result, _record_of(table, name)


def _record_of(table: RegistryTable, name: str) -> Record | None:
    entry = table.entry_state(name)
    if entry is None:
        epoch = table.export_state()["epochs"].get(name)
        return None if epoch is None else {"e": epoch}
    meta: Mapping[str, Any] = entry["meta"]
    return {"a": entry["addresses"], "e": entry["epoch"], "l": entry["lease"],
            "x": time.time() + entry["expires_in"], "m": dict(meta) or None,
            "o": entry["owner"]}


def page(registrations: list[Registration], after: str | None, limit: int,
         keep: Callable[[Mapping[str, Any]], bool] | None
         ) -> tuple[list[Registration], str | None]:
    """One page of sorted ``registrations``: those named above ``after`` that
    ``keep`` keeps, at most ``limit`` and ``PAGE_BYTES``; and the next cursor."""
    found: list[Registration] = []
    size = 0
    for registration in registrations:
        if (after is not None and registration.name <= after) or (
                keep is not None and not keep(registration.meta)):
            continue
        cost = wire_size(registration.name, registration.addresses,
                         len(pack(dict(registration.meta))))
        if found and (len(found) >= limit or size + cost > PAGE_BYTES):
            return found, found[-1].name
        found.append(registration)
        size += cost
    return found, None
