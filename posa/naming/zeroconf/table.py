"""The names seen on the LAN plus this process's own: ``DiscoveryTable``. Pure.

Leases are DNS TTLs: the TXT record of a name lives ``lease`` seconds in every
cache. ``register`` announces, ``renew`` announces again (which refreshes every
cache), ``unregister``, ``close`` and a lapsed local lease send goodbyes (TTL 0).
A peer that dies silently stops answering: as RFC 6762 section 5.2 asks, this
table queries a record at 80, 85, 90 and 95% of its TTL unless it was refreshed,
so a live announcer keeps its name alive even between renewals, and a dead one's
name goes away one TTL after its last answer. The table trusts its own clock,
never the cache's cleanup (which runs every 10 s), and reads only TXT records:
they carry the whole registration, and their TTL is kept as sent (caches stretch
a PTR's to at least 1125 s). It does no I/O and takes the clock as an argument:
it returns what to report, announce, withdraw and query, and the registry
(``posa.naming.zeroconf.registry``) does the talking.

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
"""
from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from posa.errors import NameNotFound, ProtocolError, Rejected, StaleEpoch, Unauthorized
from posa.naming.registration import (
    Change,
    Registration,
    check_addresses,
    check_lease,
    credential_digest,
)
from posa.naming.zeroconf.wire import (
    Announcement,
    decode_txt,
    encode_txt,
    freeze_meta,
    instance_label,
)
from posa.wire.names import Pattern, validate_name

__all__ = ["DiscoveryTable", "Tick", "REFRESH_POINTS", "MAX_REMEMBERED_EPOCHS",
           "GRAVE_TIME"]

REFRESH_POINTS = (0.80, 0.85, 0.90, 0.95)   # of a record's TTL, RFC 6762 section 5.2
MAX_REMEMBERED_EPOCHS = 100_000
GRAVE_TIME = 1.0    # s a withdrawn record's late copies (echoes, reordering) are ignored

_log = logging.getLogger("posa.naming.zeroconf.registry")


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
        addrs, lease = check_addresses(name, addresses), check_lease(name, lease)
        frozen, owner = freeze_meta(name, meta), credential_digest(credential)
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
        owner = credential_digest(credential)
        entry = self._own(name, owner, now, "renew")
        entry.expires_at = now + entry.announcement.lease
        self._push(entry)
        return self._snapshot(entry, now)

    def unregister(self, name: str, *, credential: str, now: float) -> list[Change]:
        owner = credential_digest(credential)
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
