"""LAN discovery: a ``Registry`` on multicast DNS / DNS-SD (python-zeroconf).

Every name this process registers is announced as a DNS-SD service of type
``_posa._tcp.local.``, which standard browsers list (``avahi-browse -r _posa._tcp``,
``dns-sd -B _posa._tcp``). Every posa service announced on the LAN is kept in a
local table, so ``lookup()`` and ``names()`` answer without a network round trip.

Wire format: one service instance per name.

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

Strategy. Leases are DNS TTLs: the TXT record of a name lives ``lease`` seconds in
every cache. ``register`` announces, ``renew`` announces again (which refreshes
every cache), ``unregister``, ``close`` and a lapsed local lease send goodbyes
(TTL 0). A peer that dies silently stops answering: as RFC 6762 section 5.2 asks,
this table queries a record at 80, 85, 90 and 95% of its TTL unless it was
refreshed, so a live announcer keeps its name alive even between renewals, and a
dead one's name goes away one TTL after its last answer. The table trusts its own
clock, never the cache's cleanup (which runs every 10 s), and reads only TXT
records: they carry the whole registration, and their TTL is kept as sent (caches
stretch a PTR's to at least 1125 s). ``DiscoveryTable`` is that state as a
pure class (no I/O, the clock passed in); ``ZeroconfRegistry`` feeds it records on
python-zeroconf's event-loop thread and runs its operations there, one at a time.

Ownership. Without the security layer a name cannot be protected on the LAN: any
host can announce any name. This registry enforces what it can locally: its own
registrations need their credential (kept as a SHA-256 digest); from the wire, a
higher epoch wins (a registration of this process that is outbid is withdrawn
silently and reported as the other host's), a lower epoch is ignored, and an equal
epoch with other data replaces another host's entry (its owner re-registered) but
not one of this process (two hosts claim the name: each keeps its own and logs a
warning). Here, a name that another host announces can be taken over only with an
explicit higher epoch (a deliberate migration). Any host can still announce any name
with any epoch: proving ownership across hosts needs signed TXT records.

Threads. python-zeroconf runs one asyncio loop thread (unless a running Zeroconf is
passed in, which then stays the caller's to close); watch callbacks run on one
thread of this registry, never on the loop, receive the latest state of each
changed name in the order the names changed, and may call any method.
``close`` sends the goodbyes and joins both threads.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Coroutine, Mapping, NamedTuple, Sequence, TypeVar
from urllib.parse import urlsplit

from zeroconf import (InterfaceChoice, IPVersion, RecordUpdate, RecordUpdateListener,
                      ServiceInfo, ServiceStateChange, Zeroconf)
from zeroconf import DNSOutgoing, DNSQuestion, DNSText  # type: ignore[attr-defined]
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_TXT

from posa.errors import (Closed, NameNotFound, PosaError, ProtocolError, Rejected,
                         StaleEpoch, Timeout, TransportError, Unauthorized)
from posa.names import Pattern, validate_name
from posa.registry import (DEFAULT_LEASE, Change, Registration, _check_addresses,
                           _check_lease, _digest)

__all__ = ["ZeroconfRegistry", "DiscoveryTable", "SERVICE_TYPE", "instance_label",
           "encode_txt", "decode_txt", "Announcement"]

SERVICE_TYPE = "_posa._tcp.local."
TXT_VERSION = "1"
MAX_TXT_BYTES = 1300
REFRESH_POINTS = (0.80, 0.85, 0.90, 0.95)   # of a record's TTL, RFC 6762 section 5.2
CALL_TIMEOUT = 10.0                         # s to wait for the event loop
MAX_REMEMBERED_EPOCHS = 100_000
GRAVE_TIME = 1.0    # s a withdrawn record's late copies (echoes, reordering) are ignored

_log = logging.getLogger(__name__)
_SUFFIX = "." + SERVICE_TYPE
_PLAIN_LABEL = re.compile(r"[a-z0-9_/-]{1,63}")
_EMPTY_META: Mapping[str, Any] = MappingProxyType({})
_T = TypeVar("_T")


# -- the wire format (pure) ----------------------------------------------------------

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
        addresses = _check_addresses(name, [text(f"addr{n}") for n in range(count)])
        _check_lease(name, lease)
        meta = json.loads(text("meta")) if "meta" in strings else {}
        if not isinstance(meta, dict):
            raise ProtocolError("TXT meta is not a JSON object")
    except (ValueError, RecursionError, PosaError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed posa TXT record: {exc}") from None
    return Announcement(name, addresses, int(epoch_text), lease,
                        MappingProxyType(meta) if meta else _EMPTY_META)


def _freeze_meta(name: str, meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not meta:
        return _EMPTY_META
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise Rejected(f"meta for {name!r} must be a mapping with str keys")
    try:
        return MappingProxyType(json.loads(json.dumps(dict(meta), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise Rejected(f"meta for {name!r} must be JSON data to travel in DNS-SD ({exc}); "
                       "use dicts, lists, str, finite numbers, bools and None") from None


def _ttl(lease: float) -> int:
    return max(1, math.ceil(lease))


# -- the table (pure) ----------------------------------------------------------------

@dataclass(eq=False)
class _Entry:
    announcement: Announcement
    txt: bytes
    expires_at: float
    owner: bytes | None                     # the credential's digest; None: another host
    refresh: list[float] = field(default_factory=list)
    sent: set[bytes] = field(default_factory=set)    # our TXT variants at this epoch
    version: int = 0
    warned: bool = False


class Tick(NamedTuple):
    """What came due: changes to report, our names whose lease lapsed (send goodbyes)
    and names to query (a record near its end, or gone and maybe announced anew)."""

    changes: list[Change]
    lapsed: list[str]
    queries: list[str]


class DiscoveryTable:
    """Names seen on the LAN plus this process's own, sans-IO: not thread-safe.

    Every method takes ``now`` (monotonic seconds) and returns what it changed;
    the caller talks to the network. Rules: see the module docstring.
    """

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []     # (when, version, name)
        self._seq = itertools.count(1)
        self._graves: dict[str, tuple[bytes, float]] = {}   # name -> (txt, until)
        self._epochs: dict[str, int] = {}                   # last epoch seen, oldest first
        self._rng = rng or random.Random()

    # -- queries
    def lookup(self, name: str, now: float) -> Registration:
        entry = self._live(name, now)
        if entry is None:
            validate_name(name)
            raise NameNotFound(f"no live registration for {name!r} on the LAN; is its peer "
                               "running and announcing with mDNS on this network?")
        return self._snapshot(entry, now)

    def names(self, pattern: str, now: float) -> list[Registration]:
        match = Pattern(pattern).match
        return sorted((self._snapshot(e, now) for n, e in self._entries.items()
                       if e.expires_at > now and match(n)), key=lambda r: r.name)

    def knows(self, label: str, now: float) -> bool:
        """True if a live entry has the instance ``label`` (case-blind)."""
        label = label.lower()
        return any(instance_label(n).lower() == label and e.expires_at > now
                   for n, e in self._entries.items())

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    # -- this process's registrations
    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None, lease: float, meta: Mapping[str, Any] | None,
                 now: float) -> tuple[Registration, list[Change]]:
        validate_name(name)
        addrs, lease = _check_addresses(name, addresses), _check_lease(name, lease)
        frozen, owner = _freeze_meta(name, meta), _digest(credential)
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                                  or epoch < 1):
            raise Rejected(f"epoch for {name!r} must be an int >= 1 or None, got {epoch!r}")
        live = self._live(name, now)
        if live is not None and live.owner is not None:
            if not hmac.compare_digest(live.owner, owner):
                raise Unauthorized(f"{name!r} is registered here with another credential; "
                                   "use the credential that registered it, or another name")
            if epoch is not None and epoch < live.announcement.epoch:
                raise StaleEpoch(f"cannot register {name!r} with epoch {epoch}: epoch "
                                 f"{live.announcement.epoch} is in force; omit epoch to "
                                 "take the next one")
            new_epoch = live.announcement.epoch + 1 if epoch is None else epoch
        elif live is not None:
            held = live.announcement.epoch
            if epoch is None:
                raise Unauthorized(
                    f"{name!r} is announced by another host on the LAN (epoch {held}, for "
                    f"{live.expires_at - now:.1f}s more unless renewed); unregister it "
                    f"there, or move it here on purpose with epoch > {held}")
            if epoch <= held:
                raise StaleEpoch(f"cannot register {name!r} with epoch {epoch}: another "
                                 f"host announces epoch {held}; pass epoch > {held}")
            new_epoch = epoch
        else:
            new_epoch = self._epochs.get(name, 0) + 1 if epoch is None else epoch
        announcement = Announcement(name, addrs, new_epoch, lease, frozen)
        txt = encode_txt(announcement)
        sent = {txt}                        # echoes of earlier data at this epoch are ours
        if (live is not None and live.owner is not None and len(live.sent) < 16
                and new_epoch == live.announcement.epoch):
            sent |= live.sent
        entry = _Entry(announcement, txt, now + lease, owner, sent=sent)
        self._put(entry)
        registration = self._snapshot(entry, now)
        if live is not None and live.owner is not None and live.txt == txt:
            return registration, []         # the owner's refresh: nothing changed
        return registration, [Change(name, registration)]

    def renew(self, name: str, *, credential: str, now: float) -> Registration:
        owner = _digest(credential)
        entry = self._own(name, owner, now, "renew")
        entry.expires_at = now + entry.announcement.lease
        self._push(entry)
        return self._snapshot(entry, now)

    def unregister(self, name: str, *, credential: str, now: float) -> list[Change]:
        owner = _digest(credential)
        if self._live(name, now) is None:
            validate_name(name)
            return []
        entry = self._own(name, owner, now, "unregister")
        self._drop(entry, now)
        return [Change(name, None)]

    def txt(self, name: str) -> bytes:
        """The TXT record of the entry of ``name`` (``KeyError`` if there is none)."""
        return self._entries[name].txt

    # -- the wire
    def receive(self, label: str, txt: bytes, ttl: int, now: float
                ) -> tuple[list[Change], list[str]]:
        """A TXT record (``ttl`` 0: a goodbye) arrived under instance ``label``.
        Returns the changes and our names that a higher epoch outbid."""
        try:
            a = decode_txt(txt)
            if instance_label(a.name).lower() != label.lower():
                raise ProtocolError(f"name {a.name!r} does not belong to instance {label!r}")
        except ProtocolError as exc:
            _log.warning("ignoring a _posa._tcp record for %r: %s", label, exc)
            return [], []
        live = self._live(a.name, now)
        if ttl == 0:
            if live is not None and live.owner is None and live.txt == txt:
                self._drop(live, now)
                return [Change(a.name, None)], []
            return [], []
        grave = self._graves.get(a.name)
        if grave is not None and grave[0] == txt and grave[1] > now:
            return [], []                   # an echo of what just said goodbye
        outbid = []
        if live is not None:
            held = live.announcement.epoch
            if live.owner is not None:
                if a.epoch < held or txt in live.sent:
                    return [], []
                if a.epoch == held:
                    if not live.warned:
                        live.warned = True
                        _log.warning("%r is also announced by another host with epoch %d "
                                     "and other data; this host keeps it until one side "
                                     "registers a higher epoch", a.name, held)
                    return [], []
                outbid.append(a.name)
                _log.warning("%r was taken over by another host with epoch %d (ours: %d)",
                             a.name, a.epoch, held)
            elif a.epoch < held:
                return [], []
        refresh = [now + ttl * (p + self._rng.uniform(0, 0.02)) for p in REFRESH_POINTS]
        entry = _Entry(a, txt, now + ttl, None, refresh=refresh)
        self._put(entry)
        if live is not None and live.txt == txt and not outbid:
            return [], []
        return [Change(a.name, self._snapshot(entry, now))], outbid

    def tick(self, now: float) -> Tick:
        """Expire and plan refresh queries for everything due by ``now``."""
        result = Tick([], [], [])
        while self._heap and self._heap[0][0] <= now:      # _push may rebuild the heap
            _, version, name = heapq.heappop(self._heap)
            entry = self._entries.get(name)
            if entry is None or entry.version != version:
                continue
            if entry.expires_at <= now:
                self._drop(entry, now, grave=entry.owner is not None)
                result.changes.append(Change(name, None))
                (result.lapsed if entry.owner is not None else result.queries).append(name)
                continue
            while entry.refresh and entry.refresh[0] <= now:
                entry.refresh.pop(0)
            result.queries.append(name)
            self._push(entry)
        for name, (_, until) in list(self._graves.items()):
            if until <= now:
                del self._graves[name]
        return result

    # -- internals
    def _live(self, name: str, now: float) -> _Entry | None:
        entry = self._entries.get(name) if isinstance(name, str) else None
        return entry if entry is not None and entry.expires_at > now else None

    def _own(self, name: str, owner: bytes, now: float, verb: str) -> _Entry:
        entry = self._live(name, now)
        if entry is None:
            validate_name(name)
            raise NameNotFound(f"no live registration for {name!r} to {verb} (its lease "
                               "may have run out); register it again")
        if entry.owner is None:
            raise Unauthorized(f"{name!r} is announced by another host on the LAN; only "
                               f"its owner there may {verb} it")
        if not hmac.compare_digest(entry.owner, owner):
            raise Unauthorized(f"{name!r} is registered with another credential; only the "
                               f"credential that registered it may {verb} it")
        return entry

    def _put(self, entry: _Entry) -> None:
        name = entry.announcement.name
        self._entries[name] = entry
        self._graves.pop(name, None)
        self._epochs[name] = max(entry.announcement.epoch, self._epochs.pop(name, 0))
        if len(self._epochs) > MAX_REMEMBERED_EPOCHS:
            del self._epochs[next(iter(self._epochs))]
        self._push(entry)

    def _push(self, entry: _Entry) -> None:
        entry.version = next(self._seq)
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [item for item in self._heap
                          if (e := self._entries.get(item[2])) is not None
                          and e.version == item[1]]
            heapq.heapify(self._heap)
        when = min(entry.refresh[0], entry.expires_at) if entry.refresh else entry.expires_at
        heapq.heappush(self._heap, (when, entry.version, entry.announcement.name))

    def _drop(self, entry: _Entry, now: float, *, grave: bool = True) -> None:
        name = entry.announcement.name
        del self._entries[name]
        if grave:
            self._graves[name] = (entry.txt, now + GRAVE_TIME)

    @staticmethod
    def _snapshot(entry: _Entry, now: float) -> Registration:
        a = entry.announcement
        return Registration(a.name, a.addresses, a.epoch, a.lease, entry.expires_at - now,
                            a.meta)


# -- the network side ----------------------------------------------------------------

GOODBYE_REPEATS = (0.125, 0.25)     # s after the first goodbye, as python-zeroconf does


def _service_info(registration: Registration, txt: bytes) -> ServiceInfo:
    """The DNS-SD service of ``registration``: SRV from its first tcp-ish address."""
    port, host = 0, None
    for address in registration.addresses:
        parts = urlsplit(address)
        if parts.scheme == "tcp" or parts.scheme.endswith("+tcp"):
            try:
                port, host = parts.port or 0, parts.hostname
            except ValueError:
                continue
            break
    tag = f"{registration.name}#{registration.epoch}".encode()
    server = f"posa-{hashlib.sha256(tag).hexdigest()[:16]}.local."
    ips = None
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            server = host.rstrip(".") + "."     # a host name: its own responder answers
        else:
            ips = None if ip.is_unspecified else [str(ip)]
    ttl = _ttl(registration.lease)
    return ServiceInfo(SERVICE_TYPE, instance_label(registration.name) + _SUFFIX,
                       port=port, properties=txt, server=server, parsed_addresses=ips,
                       host_ttl=ttl, other_ttl=ttl)


class _Watchers:
    """Runs watch callbacks on a thread of its own, started by the first subscriber.

    Pending changes are coalesced per name (a slow callback sees the latest state,
    and memory stays bounded by the number of names); names are delivered in the
    order they first changed. A callback that raises is logged and stays subscribed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._callbacks: dict[int, Callable[[str, Registration | None], None]] = {}
        self._ids = itertools.count()
        self._pending: dict[str, Registration | None] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def subscribe(self, callback: Callable[[str, Registration | None], None]
                  ) -> Callable[[], None]:
        with self._cond:
            key = next(self._ids)
            self._callbacks[key] = callback
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="posa-zeroconf-watch")
                self._thread.start()

        def unsubscribe() -> None:
            with self._cond:
                self._callbacks.pop(key, None)
        return unsubscribe

    def publish(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._cond:
            if self._callbacks and not self._closed:
                for name, registration in changes:
                    self._pending[name] = registration
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._callbacks.clear()
            self._pending.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                name = next(iter(self._pending))
                registration = self._pending.pop(name)
                callbacks = tuple(self._callbacks.values())
            for callback in callbacks:
                try:
                    callback(name, registration)
                except Exception:
                    _log.exception("registry watcher %r raised on %r; it stays subscribed",
                                   callback, name)


class _RecordListener(RecordUpdateListener):
    """Hands every record batch python-zeroconf receives to the registry."""

    def __init__(self, registry: ZeroconfRegistry) -> None:
        self._registry = registry

    def async_update_records(self, zc: Zeroconf, now: float,
                             records: list[RecordUpdate]) -> None:
        self._registry._on_records(now, records)


class ZeroconfRegistry:
    """A ``Registry`` whose names are DNS-SD services on the LAN (see the module doc).

    ``interfaces``: IP addresses of the interfaces to announce and listen on (None:
    every interface); ``ip_version``: ``"v4"``, ``"v6"`` or ``"all"`` (None: what the
    addresses are, else v4); ``zeroconf``: a running ``zeroconf.Zeroconf`` to share
    instead, which its owner closes after this registry.

    Errors as ``Registry`` says, and: ``Rejected`` when a registration's DNS-SD record
    would exceed 1300 bytes or meta is not JSON data; ``Unauthorized``/``StaleEpoch``
    for a name another host announces (module doc); ``TransportError`` when the mDNS
    sockets cannot be opened; ``Timeout`` when the event loop does not answer within
    ``CALL_TIMEOUT`` s. Methods block briefly: do not call them on the zeroconf loop.
    """

    def __init__(self, *, interfaces: Sequence[str] | None = None,
                 ip_version: str | None = None, zeroconf: Zeroconf | None = None) -> None:
        versions = {None: None, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only,
                    "all": IPVersion.All}
        if ip_version not in versions:
            raise Rejected(f"ip_version must be 'v4', 'v6', 'all' or None, not {ip_version!r}")
        if zeroconf is not None and (interfaces is not None or ip_version is not None):
            raise Rejected("pass zeroconf= or interfaces=/ip_version=, not both: a shared "
                           "Zeroconf keeps the interfaces it was opened with")
        self._table = DiscoveryTable()
        self._lock = threading.Lock()       # the table and _closed
        self._closed = False
        self._watchers = _Watchers()
        self._services: dict[str, ServiceInfo] = {}         # loop thread only
        self._announcing: dict[str, asyncio.Future[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_at = 0.0                # loop time when the last goodbye is out
        self._browser: AsyncServiceBrowser | None = None
        self._listener = _RecordListener(self)
        self._owns_zeroconf = zeroconf is None
        if zeroconf is None:
            choice = InterfaceChoice.All if interfaces is None else list(interfaces)
            try:
                zeroconf = Zeroconf(interfaces=choice, ip_version=versions[ip_version])
            except (OSError, ZeroconfError) as exc:
                raise TransportError(
                    f"cannot open mDNS sockets on {interfaces or 'every interface'}: {exc}; "
                    "pass addresses of this host's interfaces") from None
        self._zc = zeroconf
        try:
            self._op_lock = self._call(self._async_start())
        except BaseException:
            if self._owns_zeroconf:
                zeroconf.close()
            raise

    def __enter__(self) -> ZeroconfRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the Registry interface
    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        """See ``Registry.register``; announces the name on the LAN."""
        return self._call(self._async_register(name, addresses, credential, epoch, lease,
                                               meta))

    def renew(self, name: str, *, credential: str) -> Registration:
        """See ``Registry.renew``; announces the name again, refreshing every cache."""
        return self._call(self._async_renew(name, credential))

    def unregister(self, name: str, *, credential: str) -> None:
        """See ``Registry.unregister``; sends goodbyes."""
        self._call(self._async_unregister(name, credential))

    def lookup(self, name: str) -> Registration:
        """See ``Registry.lookup``; answered from the table, without network traffic."""
        with self._lock:
            self._check_open()
            return self._table.lookup(name, time.monotonic())

    def names(self, pattern: str = "**") -> list[Registration]:
        """See ``Registry.names``; answered from the table."""
        with self._lock:
            self._check_open()
            return self._table.names(pattern, time.monotonic())

    def watch(self, callback: Callable[[str, Registration | None], None]
              ) -> Callable[[], None]:
        """See ``Registry.watch``; callbacks run on this registry's watch thread."""
        with self._lock:
            self._check_open()
        return self._watchers.subscribe(callback)

    def close(self) -> None:
        """Send goodbyes for this process's names, stop browsing and join the threads
        (the zeroconf loop's too, unless it was passed in). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._async_stop())
        except Closed:
            pass                            # a shared Zeroconf closed first: nothing to withdraw
        finally:
            if self._owns_zeroconf:
                self._zc.close()
            self._watchers.close()

    # -- on the event loop
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._zc.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            raise Closed("the Zeroconf instance of this registry is closed; create a new "
                         "ZeroconfRegistry")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise PosaError("ZeroconfRegistry's methods wait for the zeroconf event loop: "
                            "call them from another thread than that loop's")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Timeout(f"the mDNS event loop did not answer within {CALL_TIMEOUT}s; "
                          "the host may be overloaded: try again") from None

    async def _async_start(self) -> asyncio.Lock:
        self._zc.async_add_listener(self._listener, None)
        self._browser = AsyncServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_browse])
        return asyncio.Lock()

    async def _async_stop(self) -> None:
        async with self._op_lock:
            if self._timer is not None:
                self._timer.cancel()
            self._zc.async_remove_listener(self._listener)
            if self._browser is not None:
                await self._browser.async_cancel()
            for name in list(self._services):
                self._withdraw(name, goodbye=True)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._quiet_at - loop.time()))

    async def _async_register(self, name: str, addresses: Sequence[str], credential: str,
                              epoch: int | None, lease: float,
                              meta: Mapping[str, Any] | None) -> Registration:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                registration, changes = self._table.register(
                    name, addresses, credential=credential, epoch=epoch, lease=lease,
                    meta=meta, now=time.monotonic())
                info = _service_info(registration, self._table.txt(name))
            announcing = self._announcing.pop(name, None)
            if announcing is not None:
                announcing.cancel()
            try:
                if name in self._services:
                    task = await self._zc.async_update_service(info)
                else:
                    task = await self._zc.async_register_service(
                        info, cooperating_responders=True)   # epochs settle conflicts
            except ZeroconfError as exc:
                raise Closed(f"cannot announce {name!r}: {exc!r}; the Zeroconf instance "
                             "of this registry is shutting down") from None
            self._services[name] = info
            self._announcing[name] = asyncio.ensure_future(task)
            self._after(changes)
            return registration

    async def _async_renew(self, name: str, credential: str) -> Registration:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                registration = self._table.renew(name, credential=credential,
                                                 now=time.monotonic())
            info = self._services.get(name)
            if info is not None:
                self._zc.async_send(self._zc.generate_service_broadcast(info, None))
            self._schedule()
            return registration

    async def _async_unregister(self, name: str, credential: str) -> None:
        async with self._op_lock:
            with self._lock:
                self._check_open()
                changes = self._table.unregister(name, credential=credential,
                                                 now=time.monotonic())
            if changes:
                self._withdraw(name, goodbye=True)
            self._after(changes)

    def _withdraw(self, name: str, *, goodbye: bool) -> None:
        """Stop announcing ``name``; with ``goodbye``, tell the LAN (three times)."""
        announcing = self._announcing.pop(name, None)
        if announcing is not None:
            announcing.cancel()
        info = self._services.pop(name, None)
        if info is None:
            return
        self._zc.registry.async_remove(info)
        if goodbye:
            packet = self._zc.generate_service_broadcast(info, 0)
            self._zc.async_send(packet)
            loop = asyncio.get_running_loop()
            for delay in GOODBYE_REPEATS:
                loop.call_later(delay, self._zc.async_send, packet)
            self._quiet_at = loop.time() + GOODBYE_REPEATS[-1]

    def _on_records(self, now: float, records: list[RecordUpdate]) -> None:
        changes: list[Change] = []
        outbid: list[str] = []
        with self._lock:
            if self._closed:
                return
            for update in records:
                record = update.new
                if (not isinstance(record, DNSText) or (record.ttl and record.is_expired(now))
                        or not record.name.lower().endswith(_SUFFIX)):
                    continue        # not ours, or the cache's cleanup: the table keeps time
                got, lost = self._table.receive(record.name[:-len(_SUFFIX)], record.text,
                                                record.ttl, record.created / 1000)
                changes += got
                outbid += lost
        for name in outbid:
            self._withdraw(name, goodbye=False)
        self._after(changes)

    def _on_browse(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        """A new instance in the browse: ask for its TXT if no answer carried it."""
        if state_change is ServiceStateChange.Added and name.lower().endswith(_SUFFIX):
            with self._lock:
                known = self._table.knows(name[:-len(_SUFFIX)], time.monotonic())
            if not known:
                self._query(name)

    def _on_tick(self) -> None:
        self._timer = None
        with self._lock:
            if self._closed:
                return
            tick = self._table.tick(time.monotonic())
        for name in tick.lapsed:
            self._withdraw(name, goodbye=True)
        for name in tick.queries:
            self._query(instance_label(name) + _SUFFIX)
        self._after(tick.changes)

    def _query(self, instance: str) -> None:
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(instance, _TYPE_TXT, _CLASS_IN))
        self._zc.async_send(out)

    def _after(self, changes: list[Change]) -> None:
        self._watchers.publish(changes)
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            deadline = None if self._closed else self._table.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()), self._on_tick)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this ZeroconfRegistry is closed; create a new one")
