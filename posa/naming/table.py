"""The registry's state as a pure class: ``RegistryTable``.

No threads, no I/O, an injectable clock: mutations return change events instead
of calling anyone. It enforces the rules of ``posa.naming.registration`` (owners, epochs,
leases); ``LocalRegistry`` and the standalone dispatcher keep one each.

Strategy: ``_entries`` (a dict) makes lookup O(1). Two indexes
(``posa.naming.index``) serve ``names``: a tree of path prefixes, so a pattern
walks only the subtree below its literal prefix, and a sorted list, so a page
(``page``: names above a cursor) bisects to its cursor. Expiry is a heap of
(expires_at, token, name) with lazy deletion: a renewal pushes a new item, and an
item whose token is no longer its entry's is skipped; the heap is rebuilt when
stale items outnumber the entries.
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import msgpack

from posa.errors import NameNotFound, ProtocolError, Rejected, StaleEpoch, Unauthorized
from posa.naming.index import NameTree, SortedNames
from posa.naming.pages import MAX_SCAN, PAGE_BYTES, PAGE_ENTRIES, wire_size
from posa.naming.protocol import RegistrationParts, registration_parts
from posa.naming.registration import (
    DEFAULT_LEASE,
    MAX_META_BYTES,
    Change,
    Registration,
    check_addresses,
    check_lease,
    credential_digest,
)
from posa.wire.names import Pattern, validate_name

__all__ = ["RegistryTable", "STATE_VERSION"]

STATE_VERSION = 1                   # of export_state() data; import_state() checks it

_EMPTY_META: Mapping[str, Any] = MappingProxyType({})


class _Entry:
    __slots__ = ("addresses", "epoch", "lease", "expires_at", "meta", "owner", "token",
                 "size", "parts")

    def __init__(self, addresses: tuple[str, ...], epoch: int, lease: float,
                 expires_at: float, meta: Mapping[str, Any], owner: bytes,
                 token: int, size: int) -> None:
        self.addresses = addresses
        self.epoch = epoch
        self.lease = lease
        self.expires_at = expires_at
        self.meta = meta
        self.owner = owner
        self.token = token
        self.size = size            # bytes its registration takes on the wire, at most
        # its registration packed but the seconds left, made at its first packed
        # lookup; an entry never changes but for its expiry (register makes a new
        # one), so these go with it: no lookup answers a registration replaced
        self.parts: RegistrationParts | None = None


def _not_found(name: str) -> NameNotFound:
    return NameNotFound(f"no live registration for {name!r}; is the peer running, and "
                        "registered with this registry?")


class RegistryTable:
    """The registry's state, sans-IO: not thread-safe, calls no one.

    Mutations return the ``Change`` events they cause; deliver them yourself.
    Dead registrations are skipped by every method but stay until ``expire()``
    reaps them, so call it first when you want their ``None`` events in order.
    """

    def __init__(self, *, now: Callable[[], float] = time.monotonic,
                 max_tombstones: int = 100_000) -> None:
        self.now = now                          # the clock every lease is measured on
        self._max_tombstones = max_tombstones
        self._entries: dict[str, _Entry] = {}
        self._tree = NameTree()
        self._sorted = SortedNames()
        self._heap: list[tuple[float, int, str]] = []
        self._tokens = itertools.count(1)
        self._tombstones: dict[str, int] = {}   # name -> last epoch, oldest first
        self._packer = msgpack.Packer()

    def __len__(self) -> int:
        """Registrations held, including dead ones not yet reaped by ``expire()``."""
        return len(self._entries)

    # -- queries -----------------------------------------------------------------

    def lookup(self, name: str) -> Registration:
        """The live registration of ``name``; ``NameNotFound`` if there is none."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        now = self.now()
        if entry is None or entry.expires_at <= now:
            validate_name(name)
            raise _not_found(name)
        return self._snapshot(name, entry, now)

    def lookup_packed(self, name: str) -> bytes:
        """``lookup(name)`` as the dispatcher answers it: ``registration_to_wire``
        packed (``posa.naming.protocol.registration_parts``); ``NameNotFound``."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        now = self.now()
        if entry is None or entry.expires_at <= now:
            validate_name(name)
            raise _not_found(name)
        parts = entry.parts
        if parts is None:
            parts = entry.parts = registration_parts(name, entry.addresses, entry.epoch,
                                                     entry.lease, entry.meta)
        join, head, tail = parts
        return join(head, entry.expires_at - now, tail)

    def names(self, pattern: str = "**") -> list[Registration]:
        """Live registrations matching ``pattern``, sorted by name (``InvalidName``
        for a malformed pattern). Visits only the subtree below its literal prefix."""
        names = self._tree.walk(Pattern(pattern), self._entries)
        names.sort()
        now, entries, snapshot = self.now(), self._entries, self._snapshot
        return [snapshot(name, entries[name], now) for name in names
                if entries[name].expires_at > now]

    def page(self, pattern: str = "**", after: str | None = None, *,
             limit: int = PAGE_ENTRIES, max_bytes: int = PAGE_BYTES,
             keep: Callable[[Mapping[str, Any]], bool] | None = None
             ) -> tuple[list[Registration], str | None]:
        """One page of ``names(pattern)``: the live registrations named above the
        cursor ``after`` (None: from the first), sorted by name, at most ``limit``
        and ``max_bytes`` on the wire (one at least), with the cursor of the next
        page (None: this was the last). A cursor is the last name the page looked
        at, so a walk lists every name that lives through it once, in order.
        A page may hold fewer (or no) names while a cursor follows: it looks at
        ``MAX_SCAN`` names at most. ``keep(meta)``, if given, skips the
        registrations whose meta it refuses (as if they did not match)."""
        compiled = Pattern(pattern)
        if after is not None and not isinstance(after, str):
            raise Rejected(f"a page cursor is the str a page returned, not {after!r}")
        match, entries, now = compiled.match, self._entries, self.now()
        found: list[Registration] = []
        size, done = 0, after
        for scanned, name in enumerate(self._sorted.after(after, compiled.literal_prefix,
                                                          entries)):
            entry = entries[name]
            if entry.expires_at > now and match(name) and (keep is None or keep(entry.meta)):
                if found and (len(found) >= limit or size + entry.size > max_bytes):
                    return found, done
                found.append(self._snapshot(name, entry, now))
                size += entry.size
            elif scanned >= MAX_SCAN:
                return found, done
            done = name
        return found, None

    def reaping_due(self) -> bool:
        """True if ``expire`` may have a registration to reap now."""
        heap = self._heap
        return bool(heap) and heap[0][0] <= self.now()

    def next_expiry(self) -> float | None:
        """Clock time at which the next registration dies, or None if none is held."""
        heap = self._heap
        while heap:
            expires_at, token, name = heap[0]
            entry = self._entries.get(name)
            if entry is not None and entry.token == token:
                return expires_at
            heapq.heappop(heap)
        return None

    # -- mutations ---------------------------------------------------------------

    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None
                 ) -> tuple[Registration, list[Change]]:
        """Bind ``name``; see ``posa.naming.registration`` for ownership and epochs."""
        validate_name(name)
        addrs = check_addresses(name, addresses)
        lease = check_lease(name, lease)
        frozen_meta, meta_size = self._freeze_meta(name, meta)
        owner = credential_digest(credential)
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                                  or epoch < 1):
            raise Rejected(f"epoch for {name!r} must be an int >= 1 or None, got {epoch!r}")
        now = self.now()
        entry = self._entries.get(name)
        if entry is not None and entry.expires_at > now:
            if not hmac.compare_digest(entry.owner, owner):
                raise Unauthorized(
                    f"{name!r} is registered with another credential; use the credential "
                    f"that registered it, or another name (it becomes free if its lease "
                    f"runs out, in {entry.expires_at - now:.1f}s)")
            if epoch is not None and epoch < entry.epoch:
                raise StaleEpoch(f"cannot register {name!r} with epoch {epoch}: epoch "
                                 f"{entry.epoch} is in force; omit epoch to take the next "
                                 f"one, or pass an epoch >= {entry.epoch}")
            new_epoch = entry.epoch + 1 if epoch is None else epoch
            changed = (new_epoch != entry.epoch or addrs != entry.addresses
                       or frozen_meta != entry.meta)
        else:
            last_epoch = entry.epoch if entry is not None else self._tombstones.pop(name, 0)
            new_epoch = last_epoch + 1 if epoch is None else epoch
            changed = True
        if entry is None:
            self._index_add(name)
        token = next(self._tokens)
        entry = _Entry(addrs, new_epoch, lease, now + lease, frozen_meta, owner, token,
                       wire_size(name, addrs, meta_size))
        self._entries[name] = entry
        self._push(entry.expires_at, token, name)
        registration = self._snapshot(name, entry, now)
        return registration, [Change(name, registration)] if changed else []

    def renew(self, name: str, *, credential: str) -> Registration:
        """Restart the lease of ``name``'s live registration with its own length."""
        owner = credential_digest(credential)
        now = self.now()
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None or entry.expires_at <= now:
            validate_name(name)
            raise NameNotFound(f"no live registration for {name!r} to renew (its lease may "
                               "have run out); register it again")
        if not hmac.compare_digest(entry.owner, owner):
            raise Unauthorized(f"{name!r} is registered with another credential; only the "
                               "credential that registered it may renew it")
        entry.expires_at = now + entry.lease
        entry.token = next(self._tokens)
        self._push(entry.expires_at, entry.token, name)
        return self._snapshot(name, entry, now)

    def unregister(self, name: str, *, credential: str) -> list[Change]:
        """Remove ``name``'s live registration; without one, do nothing."""
        owner = credential_digest(credential)
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None or entry.expires_at <= self.now():
            validate_name(name)
            return []
        if not hmac.compare_digest(entry.owner, owner):
            raise Unauthorized(f"{name!r} is registered with another credential; only the "
                               "credential that registered it may unregister it")
        self._remove(name, entry)
        return [Change(name, None)]

    def expire(self) -> list[Change]:
        """Reap every dead registration; one ``Change(name, None)`` for each."""
        now = self.now()
        heap = self._heap
        changes = []
        while heap and heap[0][0] <= now:
            _, token, name = heapq.heappop(heap)
            entry = self._entries.get(name)
            if entry is not None and entry.token == token:
                self._remove(name, entry)
                changes.append(Change(name, None))
        return changes

    # -- state file --------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The live state as msgpack-able data (lease time left, not clock times)."""
        now = self.now()
        entries = [self._entry_state(name, entry, now)
                   for name, entry in self._entries.items() if entry.expires_at > now]
        epochs = dict(self._tombstones)
        for name, entry in self._entries.items():
            if entry.expires_at <= now:
                epochs[name] = entry.epoch
        return {"version": STATE_VERSION, "entries": entries, "epochs": epochs}

    def entry_state(self, name: str) -> dict[str, Any] | None:
        """The ``export_state()`` record of one live name (None if it has none):
        what a journal of changes appends."""
        entry = self._entries.get(name)
        now = self.now()
        if entry is None or entry.expires_at <= now:
            return None
        return self._entry_state(name, entry, now)

    @staticmethod
    def _entry_state(name: str, entry: _Entry, now: float) -> dict[str, Any]:
        return {"name": name, "addresses": list(entry.addresses), "epoch": entry.epoch,
                "lease": entry.lease, "expires_in": entry.expires_at - now,
                "meta": dict(entry.meta), "owner": entry.owner}

    @classmethod
    def import_state(cls, state: Mapping[str, Any], *,
                     now: Callable[[], float] = time.monotonic, elapsed: float = 0.0,
                     max_tombstones: int = 100_000) -> RegistryTable:
        """A table from ``export_state()`` data; ``elapsed`` seconds are taken off
        every lease (the time the state spent on disk). Raises ``ProtocolError``
        if the data is not a registry state."""
        table = cls(now=now, max_tombstones=max_tombstones)
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"version {state['version']!r} is not {STATE_VERSION}")
            for name, epoch in state["epochs"].items():
                validate_name(name)
                if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                    raise ValueError(f"epoch {epoch!r} of {name!r} is not an int >= 1")
                table._bury(name, epoch)
            clock = now()
            for item in state["entries"]:
                name = validate_name(item["name"])
                owner, epoch = item["owner"], item["epoch"]
                if not isinstance(owner, bytes) or len(owner) != hashlib.sha256().digest_size:
                    raise ValueError(f"owner of {name!r} is not a SHA-256 digest")
                if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                    raise ValueError(f"epoch {epoch!r} of {name!r} is not an int >= 1")
                if name in table._entries:
                    raise ValueError(f"{name!r} appears twice")
                left = float(item["expires_in"]) - elapsed
                if left <= 0:
                    table._bury(name, epoch)
                    continue
                table._tombstones.pop(name, None)
                token = next(table._tokens)
                addresses = check_addresses(name, item["addresses"])
                meta, meta_size = table._freeze_meta(name, item["meta"])
                table._entries[name] = _Entry(
                    addresses, epoch, check_lease(name, item["lease"]), clock + left,
                    meta, owner, token, wire_size(name, addresses, meta_size))
                table._index_add(name)
                table._push(clock + left, token, name)
        except (KeyError, TypeError, ValueError, AttributeError, Rejected) as exc:
            raise ProtocolError(f"registry state is malformed ({exc}); restore a good copy "
                                "of the state file or remove it to start empty") from None
        return table

    # -- internals ---------------------------------------------------------------

    def _snapshot(self, name: str, entry: _Entry, now: float) -> Registration:
        return Registration(name, entry.addresses, entry.epoch, entry.lease,
                            entry.expires_at - now, entry.meta)

    def _freeze_meta(self, name: str, meta: Mapping[str, Any] | None
                     ) -> tuple[Mapping[str, Any], int]:
        """A read-only deep copy of ``meta`` as it will travel (msgpack data only),
        and its packed size."""
        if meta is None or (isinstance(meta, Mapping) and not meta):
            return _EMPTY_META, 1
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
            raise Rejected(f"meta for {name!r} must be a mapping with str keys")
        try:
            packed = self._packer.pack(dict(meta))
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise Rejected(f"meta for {name!r} is not msgpack data ({exc}); use dicts, "
                           "lists, str, bytes, numbers, bools and None") from None
        if len(packed) > MAX_META_BYTES:
            raise Rejected(f"meta for {name!r} packs to {len(packed)} bytes (at most "
                           f"{MAX_META_BYTES}); keep bulky data out of the registry")
        return MappingProxyType(msgpack.unpackb(packed, strict_map_key=False)), len(packed)

    def _push(self, expires_at: float, token: int, name: str) -> None:
        heap = self._heap
        if len(heap) > 2 * len(self._entries) + 64:
            heap[:] = [(e.expires_at, e.token, n) for n, e in self._entries.items()]
            heapq.heapify(heap)
        heapq.heappush(heap, (expires_at, token, name))

    def _remove(self, name: str, entry: _Entry) -> None:
        del self._entries[name]
        self._tree.remove(name, self._entries)
        self._sorted.discard(name)
        self._bury(name, entry.epoch)

    def _index_add(self, name: str) -> None:
        self._tree.add(name)
        self._sorted.add(name)

    def _bury(self, name: str, epoch: int) -> None:
        tombstones = self._tombstones
        tombstones.pop(name, None)
        tombstones[name] = epoch
        if len(tombstones) > self._max_tombstones:
            del tombstones[next(iter(tombstones))]
