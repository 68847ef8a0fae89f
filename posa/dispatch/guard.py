"""The dispatcher's checks before a registration: access rules, reserved names, quotas.

A ``register`` request reaches the registry only through ``RegistrationGuard``:
its connection's registration rate first (a refused request costs a token too),
then the ``Acl`` (which keys may register which names), then the reserved
namespace (``posa/…`` only with a key the dispatcher was configured with), then
the quotas of ``posa.naming.quotas`` (metadata bytes, names per owner, names in
all). The guard keeps the ledger of which owner holds which name: told of every
registration it lets through and, through the registry's watch, of every name
that goes away. Thread-safe (one reentrant lock: the registry may report a
change on the thread that registers).
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Hashable
from typing import Any

import msgpack

from posa.admission.acl import peer_identity
from posa.admission.gatekeeper import refusal
from posa.errors import NameNotFound
from posa.naming.quotas import RESERVED, QuotaLedger, is_reserved
from posa.naming.registration import Registration
from posa.naming.registry import LocalRegistry
from posa.security import Acl, Quotas, authenticated_key
from posa.wire.codec import Message

__all__ = ["RegistrationGuard"]


class RegistrationGuard:
    """Registers a name for a request, if the rules and quotas let it."""

    def __init__(self, registry: LocalRegistry, quotas: Quotas, *,
                 acl: Acl | None = None, reserved_keys: Collection[str] = ()) -> None:
        self.registry = registry
        self.quotas = quotas
        self.ledger = QuotaLedger(quotas)
        self.acl = acl
        self.reserved_keys = frozenset(reserved_keys)
        self._lock = threading.RLock()
        self.reserved_refused = 0

    @property
    def rejections(self) -> dict[str, int]:
        """Registrations refused, by cause: each quota, and ``reserved-name``."""
        return {**self.ledger.refused, "reserved-name": self.reserved_refused}

    def register(self, msg: Message, fields: dict[str, Any]) -> Registration:
        """Register what the request ``msg`` asks (its checked ``fields``), or raise
        ``Rejected`` (a quota), ``Unauthorized`` (a rule), or the registry's error."""
        name, key = fields["name"], authenticated_key(msg)
        connection = _connection(msg)
        with self._lock:
            self.ledger.admit(connection, msg)
        if self.acl is not None:
            self.acl.check_register(name, key, peer_identity(msg))
        if is_reserved(name) and key not in self.reserved_keys:
            self.reserved_refused += 1
            raise refusal("reserved-name", _reserved_text(name, key))
        owner: Hashable = ("key", key) if key else connection
        who = f"key {key!r}" if key else "this connection (it has no key)"
        meta = fields["meta"]
        with self._lock:
            self.ledger.check(name, owner, who, _packed_size(meta), self._live(name),
                              len(self.registry))
            registration = self.registry.register(
                name, fields["addresses"], credential=fields["credential"],
                epoch=fields["epoch"], lease=fields["lease"], meta=meta)
            self.ledger.bind(name, owner)
        return registration

    def changed(self, name: str, registration: Registration | None) -> None:
        """The registry's watcher: a name that went away frees its owner's quota."""
        if registration is None:
            with self._lock:
                self.ledger.release(name)

    def _live(self, name: str) -> bool:
        try:
            self.registry.lookup(name)
        except NameNotFound:
            return False
        return True


def _connection(msg: Message) -> Hashable:
    """The connection a request came on (what anonymous quotas are counted by)."""
    route = msg.route
    if isinstance(route, tuple) and len(route) == 2:
        endpoint, where = route
        return ("connection", id(endpoint), where)
    return ("connection", None, None)


def _packed_size(meta: Any) -> int:
    if not meta:
        return 1
    try:
        return len(msgpack.packb(meta))
    except (TypeError, ValueError, OverflowError):
        return 1        # not msgpack data: the registry refuses it, saying why


def _reserved_text(name: str, key: str | None) -> str:
    holder = f"key {key!r}" if key else "a client without a key"
    return (f"{name!r} is reserved: names under '{RESERVED}/' are taken only by posa's own "
            f"services (the dispatcher registers its own names itself), and {holder} is "
            "not one the dispatcher was started with for them (--reserved-key); choose a "
            f"name outside '{RESERVED}/'")
