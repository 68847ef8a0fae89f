"""The registry: name -> addresses, with owners, epochs and leases.

``Registry`` is the interface every registry implements (embedded, the dispatcher
service's, zeroconf); ``Registration`` and ``Change`` are what it hands out, and
``check_addresses``, ``check_lease`` and ``credential_digest`` the checks they all
make. ``RegistryTable`` (``posa.naming.table``, re-exported here) is its state as
a pure class; the standalone dispatcher keeps one too. ``LocalRegistry`` is the
embedded registry: a table behind a lock, with watchers.

Rules (the same for every registry):

- A name belongs to the credential that registered it while its registration
  lives. Only a SHA-256 digest of the credential is kept, compared in constant
  time. Another credential gets ``Unauthorized`` (register, renew, unregister).
- ``epoch=None`` takes the next epoch (1 for a name never seen). An explicit epoch
  below the one in force is ``StaleEpoch``; the one in force, from the owner, is
  a refresh (new lease; new addresses or meta if they differ).
- A registration not renewed within ``lease`` seconds is dead: lookups and
  ``names()`` skip it, anyone may take the name, and ``expire()`` reaps it and
  reports it gone. Epochs survive death (within a bound of ``max_tombstones``
  names), so a name's epoch never goes backwards for its watchers.

``posa.naming.table`` builds on the types of this module, so this module imports
it on first use (``LocalRegistry()`` or ``posa.naming.registry.RegistryTable``).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    NamedTuple,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from posa.errors import Closed, Rejected, Unauthorized

if TYPE_CHECKING:
    from posa.naming.table import RegistryTable

__all__ = ["Registration", "Change", "Registry", "RegistryTable", "LocalRegistry",
           "DEFAULT_LEASE", "MAX_ADDRESSES", "MAX_ADDRESS_LEN", "MAX_META_BYTES",
           "check_addresses", "check_lease", "credential_digest", "resolver"]

DEFAULT_LEASE = 10.0
MAX_ADDRESSES = 16
MAX_ADDRESS_LEN = 1024
MAX_META_BYTES = 64 * 1024

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, init=False)
class Registration:
    """A snapshot of one live registration. ``meta`` is read-only msgpack data."""

    name: str
    addresses: tuple[str, ...]     # transport URIs where the name is reachable, preferred first
    epoch: int                     # increases with every re-registration/migration
    lease: float                   # seconds the registration lives unless renewed
    expires_in: float              # seconds left when this snapshot was taken
    meta: Mapping[str, Any]        # free data, e.g. {"service": "library/catalog", "weight": 1}

    def __init__(self, name: str, addresses: tuple[str, ...], epoch: int, lease: float,
                 expires_in: float, meta: Mapping[str, Any]) -> None:
        # what the generated __init__ of a frozen dataclass does, without a call of
        # object.__setattr__ per field: every lookup builds one (0.6 µs, not 1.4)
        fields = self.__dict__
        fields["name"] = name
        fields["addresses"] = addresses
        fields["epoch"] = epoch
        fields["lease"] = lease
        fields["expires_in"] = expires_in
        fields["meta"] = meta


class Change(NamedTuple):
    """One change of the table: ``registration`` is None when the name is gone."""

    name: str
    registration: Registration | None


@runtime_checkable
class Registry(Protocol):
    """What every registry offers. Errors: ``InvalidName`` for a malformed name,
    ``Unauthorized``, ``StaleEpoch``, ``NameNotFound`` as described in the module
    docstring, ``Rejected`` for malformed addresses, lease or meta, ``Closed``
    after ``close()``."""

    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        """Bind ``name`` to ``addresses`` for ``lease`` seconds; return the binding."""

    def renew(self, name: str, *, credential: str) -> Registration:
        """Restart the lease of a live registration (``NameNotFound`` if none)."""

    def unregister(self, name: str, *, credential: str) -> None:
        """Remove a live registration; a name with none is left as it is."""

    def lookup(self, name: str) -> Registration:
        """The live registration of ``name``, or ``NameNotFound``."""

    def names(self, pattern: str = "**") -> list[Registration]:
        """Every live registration whose name matches ``pattern``, sorted by name."""

    def watch(self, callback: Callable[[str, Registration | None], None]
              ) -> Callable[[], None]:
        """Call ``callback(name, registration or None)`` on every change; return
        a function that unsubscribes."""

    def close(self) -> None:
        """Release the registry; later calls raise ``Closed``."""


def credential_digest(credential: str) -> bytes:
    """The SHA-256 digest of ``credential``, all a registry keeps of it
    (``Unauthorized`` unless it is a non-empty str)."""
    if not isinstance(credential, str) or not credential:
        raise Unauthorized("a credential must be a non-empty str (the token that owns "
                           "the name); pass credential=...")
    return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()


def check_addresses(name: str, addresses: Sequence[str]) -> tuple[str, ...]:
    """``addresses`` of ``name`` as a tuple: 1 to ``MAX_ADDRESSES`` transport URIs
    of at most ``MAX_ADDRESS_LEN`` characters, else ``Rejected``."""
    if isinstance(addresses, (str, bytes)) or not isinstance(addresses, Sequence):
        raise Rejected(f"addresses for {name!r} must be a list of transport URIs, e.g. "
                       "['tcp://127.0.0.1:7000'], not a single string")
    if not 1 <= len(addresses) <= MAX_ADDRESSES:
        raise Rejected(f"{name!r} needs 1 to {MAX_ADDRESSES} addresses, got "
                       f"{len(addresses)}")
    for address in addresses:
        scheme, sep, rest = (address.partition("://") if isinstance(address, str)
                             else ("", "", ""))
        if not (sep and scheme and rest) or len(address) > MAX_ADDRESS_LEN:
            raise Rejected(f"address {address!r} for {name!r} is not a transport URI of at "
                           f"most {MAX_ADDRESS_LEN} characters; write SCHEME://WHERE, e.g. "
                           "tcp://127.0.0.1:7000")
    return tuple(addresses)


def check_lease(name: str, lease: float) -> float:
    """``lease`` of ``name`` as a float: finite seconds > 0, else ``Rejected``."""
    if (isinstance(lease, bool) or not isinstance(lease, (int, float))
            or not math.isfinite(lease) or lease <= 0):
        raise Rejected(f"lease for {name!r} must be a finite number of seconds > 0, "
                       f"got {lease!r}")
    return float(lease)


def resolver(registry: Registry) -> Callable[[str, bool], tuple[tuple[str, ...], int]]:
    """The ``resolve(name, fresh)`` a ``Sender`` needs, over ``registry``: ``fresh``
    (after a failed delivery) first drops the name from a caching registry."""
    forget = getattr(registry, "forget", None)   # a caching registry

    def resolve(name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        if fresh and forget is not None:
            forget(name)
        registration = registry.lookup(name)
        return registration.addresses, registration.epoch
    return resolve


class LocalRegistry:
    """The embedded registry: a ``RegistryTable`` behind a lock, with watchers.

    Thread-safe. Dead registrations are reaped lazily on every call, and by
    ``expire()``, which a reactor timer may call at the time it returns.
    Watchers are called outside the lock, in the order of the changes, by one
    thread at a time (the thread whose call caused a change, unless another is
    delivering already); a watcher that raises is logged and stays subscribed.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        from posa.naming.table import RegistryTable  # see the module docstring
        self._table = RegistryTable(now=clock)
        self._lock = threading.Lock()
        self._watchers: dict[int, Callable[[str, Registration | None], None]] = {}
        self._watcher_ids = itertools.count()
        self._pending: deque[Change] = deque()
        self._delivering = False
        self._closed = False

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        """See ``Registry.register``."""
        def op() -> tuple[Registration, list[Change]]:
            return self._table.register(name, addresses, credential=credential,
                                        epoch=epoch, lease=lease, meta=meta)
        return self._apply(op)

    def renew(self, name: str, *, credential: str) -> Registration:
        """See ``Registry.renew``."""
        return self._apply(lambda: (self._table.renew(name, credential=credential), []))

    def unregister(self, name: str, *, credential: str) -> None:
        """See ``Registry.unregister``."""
        self._apply(lambda: (None, self._table.unregister(name, credential=credential)))

    def lookup(self, name: str) -> Registration:
        """See ``Registry.lookup``."""
        with self._lock:    # the hot path: with nothing to reap, a plain read
            self._check_open()
            if not self._table.reaping_due():
                return self._table.lookup(name)
        return self._apply(lambda: (self._table.lookup(name), []))

    def names(self, pattern: str = "**") -> list[Registration]:
        """See ``Registry.names``."""
        return self._apply(lambda: (self._table.names(pattern), []))

    def expire(self) -> float | None:
        """Reap dead registrations now; return the seconds until the next one dies
        (None if no registration is held)."""
        def op() -> tuple[float | None, list[Change]]:
            deadline = self._table.next_expiry()
            return (None if deadline is None
                    else max(0.0, deadline - self._table.now())), []
        return self._apply(op)

    def export_state(self) -> dict[str, Any]:
        """``RegistryTable.export_state()`` of the live state, for a state file."""
        return self._apply(lambda: (self._table.export_state(), []))

    def entry_state(self, name: str) -> dict[str, Any] | None:
        """``RegistryTable.entry_state(name)``, for a journal of changes."""
        return self._apply(lambda: (self._table.entry_state(name), []))

    def load(self, table: RegistryTable) -> None:
        """Replace the whole state by ``table`` (e.g. from ``import_state``), whose
        clock the registry adopts. Watchers hear of every name that went away and
        of every live name in ``table``."""
        def op() -> tuple[None, list[Change]]:
            old = {r.name for r in self._table.names()}
            self._table = table
            fresh = table.names()
            gone = old.difference(r.name for r in fresh)
            return None, ([Change(name, None) for name in sorted(gone)]
                          + [Change(r.name, r) for r in fresh])
        self._apply(op)

    def watch(self, callback: Callable[[str, Registration | None], None]
              ) -> Callable[[], None]:
        """See ``Registry.watch``; unsubscribing twice is harmless."""
        with self._lock:
            self._check_open()
            key = next(self._watcher_ids)
            self._watchers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._watchers.pop(key, None)
        return unsubscribe

    def close(self) -> None:
        """Drop every watcher; later calls raise ``Closed``. Idempotent."""
        with self._lock:
            self._closed = True
            self._watchers.clear()
            self._pending.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this LocalRegistry is closed; create a new one")

    def _apply(self, op: Callable[[], tuple[_T, list[Change]]]) -> _T:
        try:
            with self._lock:
                self._check_open()
                self._pending.extend(self._table.expire())
                result, changes = op()
                self._pending.extend(changes)
                return result
        finally:
            if self._pending:
                self._deliver()

    def _deliver(self) -> None:
        with self._lock:
            if self._delivering:
                return                          # that thread delivers ours too
            self._delivering = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._delivering = False    # under the lock: no event strands
                        return
                    name, registration = self._pending.popleft()
                    watchers = tuple(self._watchers.values())
                for callback in watchers:
                    try:
                        callback(name, registration)
                    except Exception:
                        _log.exception("registry watcher %r raised on %r; it stays "
                                       "subscribed", callback, name)
        except BaseException:
            with self._lock:
                self._delivering = False
            raise


def __getattr__(name: str) -> Any:
    # posa.naming.registry.RegistryTable: see the module docstring
    if name == "RegistryTable":
        from posa.naming.table import RegistryTable
        return RegistryTable
    raise AttributeError(f"module 'posa.naming.registry' has no attribute {name!r}")
