"""The wire format of LAN discovery: one DNS-SD service instance per name. Pure.

    record  field              value
    PTR     _posa._tcp.local.  -> INSTANCE._posa._tcp.local.
    (label) INSTANCE           the name itself if it is lower-case [a-z0-9_/-] and at
                               most 63 bytes; else a readable prefix, '~' and 12 hex
                               digits of its SHA-256 (DNS compares labels without case
                               and splits them at dots, so such names are hashed)
    SRV     target, port       the host and port of the first tcp:// or *+tcp://
                               address (an IP literal is published as the A/AAAA record
                               of posa-HASH.local.); port 0 when there is none
    TXT     txtvers=1          format version; records of another version are ignored
            name=              the posa name
            epoch=             decimal int >= 1
            lease=             seconds (decimal float)
            addr0= addr1= ...  the addresses, preferred first
            meta=              meta as compact JSON, present when meta is not empty
    all     TTL                ceil(lease) seconds, at least 1

A value too long for one TXT string (255 bytes) continues in ``KEY+1``, ``KEY+2``...;
the whole TXT record is at most 1300 bytes (RFC 6763 section 6.2), so meta must be
small: a few fields of routing data, not a payload.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from posa.errors import PosaError, ProtocolError, Rejected
from posa.naming.registration import check_addresses, check_lease
from posa.wire.names import validate_name

__all__ = ["SERVICE_TYPE", "TXT_VERSION", "MAX_TXT_BYTES", "Announcement",
           "instance_label", "encode_txt", "decode_txt", "freeze_meta", "record_ttl"]

SERVICE_TYPE = "_posa._tcp.local."
TXT_VERSION = "1"
MAX_TXT_BYTES = 1300

_PLAIN_LABEL = re.compile(r"[a-z0-9_/-]{1,63}")
_EMPTY_META: Mapping[str, Any] = MappingProxyType({})


def instance_label(name: str) -> str:
    """The DNS-SD instance label of ``name``: at most 63 bytes, one per name."""
    if _PLAIN_LABEL.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.lower().replace(".", "_")[:50] + "~" + digest


class Announcement(NamedTuple):
    """The registration a TXT record carries."""

    name: str
    addresses: tuple[str, ...]
    epoch: int
    lease: float
    meta: Mapping[str, Any]


def encode_txt(a: Announcement) -> bytes:
    """The TXT record of ``a`` (``Rejected`` if it exceeds ``MAX_TXT_BYTES``)."""
    items = [("txtvers", TXT_VERSION), ("name", a.name), ("epoch", str(a.epoch)),
             ("lease", repr(float(a.lease)))]
    items += [(f"addr{i}", address) for i, address in enumerate(a.addresses)]
    if a.meta:
        items.append(("meta", json.dumps(dict(a.meta), separators=(",", ":"),
                                         ensure_ascii=False, allow_nan=False)))
    out = bytearray()
    for key, value in items:
        data = value.encode()
        for part in itertools.count():
            head = (key if part == 0 else f"{key}+{part}").encode() + b"="
            chunk, data = data[:255 - len(head)], data[255 - len(head):]
            out += bytes([len(head) + len(chunk)]) + head + chunk
            if not data:
                break
    if len(out) > MAX_TXT_BYTES:
        raise Rejected(f"the DNS-SD record of {a.name!r} would be {len(out)} bytes (at most "
                       f"{MAX_TXT_BYTES}): use fewer or shorter addresses and a smaller meta")
    return bytes(out)


def decode_txt(data: bytes) -> Announcement:
    """The announcement in a TXT record; ``ProtocolError`` saying what is wrong."""
    strings: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        end = i + 1 + data[i]
        if end > len(data):
            raise ProtocolError("TXT record truncated inside a string")
        key, sep, value = data[i + 1:end].partition(b"=")
        strings.setdefault(key.decode("ascii", "replace").lower(), value if sep else b"")
        i = end

    def text(key: str) -> str:
        if key not in strings:
            raise ProtocolError(f"TXT record lacks {key}=")
        parts = [strings[key]]
        for n in itertools.count(1):
            if f"{key}+{n}" not in strings:
                return b"".join(parts).decode("utf-8", "strict")
            parts.append(strings[f"{key}+{n}"])
        raise AssertionError("unreachable")

    try:
        if text("txtvers") != TXT_VERSION:
            raise ProtocolError(f"TXT record has txtvers={text('txtvers')}, not "
                                f"{TXT_VERSION}: upgrade posa on this host to read it")
        name = validate_name(text("name"))
        epoch_text, lease = text("epoch"), float(text("lease"))
        if not epoch_text.isdigit() or int(epoch_text) < 1:
            raise ProtocolError(f"TXT epoch {epoch_text!r} is not an int >= 1")
        count = next(n for n in itertools.count() if f"addr{n}" not in strings)
        addresses = check_addresses(name, [text(f"addr{n}") for n in range(count)])
        check_lease(name, lease)
        meta = json.loads(text("meta")) if "meta" in strings else {}
        if not isinstance(meta, dict):
            raise ProtocolError("TXT meta is not a JSON object")
    except (ValueError, RecursionError, PosaError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed posa TXT record: {exc}") from None
    return Announcement(name, addresses, int(epoch_text), lease,
                        MappingProxyType(meta) if meta else _EMPTY_META)


def freeze_meta(name: str, meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only deep copy of ``meta`` as it travels in the TXT record: JSON
    data with str keys, else ``Rejected``."""
    if not meta:
        return _EMPTY_META
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise Rejected(f"meta for {name!r} must be a mapping with str keys")
    try:
        return MappingProxyType(json.loads(json.dumps(dict(meta), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise Rejected(f"meta for {name!r} must be JSON data to travel in DNS-SD ({exc}); "
                       "use dicts, lists, str, finite numbers, bools and None") from None


def record_ttl(lease: float) -> int:
    """The TTL of every record of a registration with ``lease``: whole seconds, >= 1."""
    return max(1, math.ceil(lease))
