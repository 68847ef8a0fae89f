"""What one registrant may take of a shared registry: quotas, and the reserved names.

A dispatcher serves anyone who can reach it, so its registry needs bounds that an
anonymous flood cannot push it past (docs/security.md, "Registry quotas"):

- **names per owner**: an owner is the key that authenticated the request, or,
  for a request without a key, the connection it came on;
- **metadata bytes per name** (the registry's own hard limit, 64 KiB, stays);
- **registrations per second per connection** (a token bucket);
- **names in all**, a backstop whatever the owners.

And the names under ``posa/`` are posa's own (``is_reserved``): the dispatcher
registers its names in its own table, and over the wire only a key the
dispatcher was configured with may register one ("Reserved names").

The values are the ``registry_*`` fields of ``posa.security.Quotas`` (every limit
in one place), with safe defaults: a posa peer registers one name, with under
200 bytes of meta. ``QuotaLedger`` is sans-IO: it is told which names each owner registered and
which went away, and checks a registration before it is made; every refusal is
a ``Rejected`` that names the quota, its value and what to do. Not thread-safe.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from posa.admission.quotas import Quotas, RateLimiter
from posa.errors import Rejected
from posa.naming.registration import MAX_META_BYTES
from posa.wire.codec import Message

__all__ = ["RESERVED", "is_reserved", "check_quotas", "QuotaLedger"]

RESERVED = "posa"       # the first segment of the names posa's own services take


def is_reserved(name: str) -> bool:
    """True for ``posa`` and every name below ``posa/``."""
    return name == RESERVED or name.startswith(RESERVED + "/")


def check_quotas(quotas: Quotas) -> Quotas:
    """``quotas`` if its ``registry_*`` fields make sense, else ``ValueError``."""
    if min(quotas.registry_names_per_owner, quotas.registry_meta_bytes,
           quotas.registry_names) <= 0:
        raise ValueError("registry quotas must be positive")
    if quotas.registry_meta_bytes > MAX_META_BYTES:
        raise ValueError(f"registry_meta_bytes is at most {MAX_META_BYTES} (the registry's "
                         f"own limit), got {quotas.registry_meta_bytes}")
    return quotas


class QuotaLedger:
    """Names held per owner, and the checks a registration passes first."""

    def __init__(self, quotas: Quotas, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quotas = check_quotas(quotas)
        rate = quotas.registry_rate
        self._rate = (RateLimiter(per_source=rate, per_sender=None, clock=clock)
                      if rate is not None else None)
        self._owner_of: dict[str, Hashable] = {}
        self._held: dict[Hashable, int] = {}
        self.refused = {"registry-rate": 0, "registry-meta-bytes": 0,      # by quota
                        "registry-names-per-owner": 0, "registry-names": 0}

    def held(self, owner: Hashable) -> int:
        """How many names ``owner`` holds."""
        return self._held.get(owner, 0)

    def admit(self, connection: Hashable, msg: Message) -> None:
        """Take a registration token of ``connection``; ``Rejected`` if none is left."""
        rate = self.quotas.registry_rate
        if self._rate is None or rate is None or self._rate.admit(connection, msg):
            return
        self.refused["registry-rate"] += 1
        raise Rejected(
            f"registration rate quota: at most {rate.per_second:g} registrations per "
            f"second per connection (bursts of {rate.burst:g}), and this connection sent "
            "more; register more slowly and retry, or ask the operator to raise "
            "--registration-rate")

    def check(self, name: str, owner: Hashable, who: str, meta_bytes: int, live: bool,
              total: int) -> None:
        """Raise ``Rejected`` if ``owner`` (described by ``who``) may not register
        ``name`` with ``meta_bytes`` of meta; ``live``: the name is registered now;
        ``total``: names the registry holds."""
        quotas = self.quotas
        if meta_bytes > quotas.registry_meta_bytes:
            self.refused["registry-meta-bytes"] += 1
            raise Rejected(
                f"metadata quota: the meta of {name!r} packs to {meta_bytes} bytes, over "
                f"the {quotas.registry_meta_bytes} bytes a name may carry here "
                "(--max-meta-bytes); keep bulky data out of the registry")
        most = quotas.registry_names_per_owner
        if self._owner_of.get(name) != owner and self.held(owner) >= most:
            self.refused["registry-names-per-owner"] += 1
            raise Rejected(
                f"names-per-owner quota: {who} holds {self.held(owner)} names, the most "
                f"one owner may (--max-names-per-owner {quotas.registry_names_per_owner}); "
                f"unregister names it no longer uses before registering {name!r}, or ask "
                "the operator to raise the quota")
        if not live and total >= quotas.registry_names:
            self.refused["registry-names"] += 1
            raise Rejected(
                f"registry size quota: the registry holds {total} names, its most "
                f"(--max-names {quotas.registry_names}); {name!r} can be registered once "
                "others are gone, or ask the operator to raise the quota")

    def bind(self, name: str, owner: Hashable) -> None:
        """``owner`` registered ``name`` (again, or instead of another owner)."""
        old = self._owner_of.get(name)
        if old == owner:
            return
        if old is not None:
            self._drop(old)
        self._owner_of[name] = owner
        self._held[owner] = self._held.get(owner, 0) + 1

    def release(self, name: str) -> None:
        """``name`` is gone (unregistered, expired); its owner holds one name less."""
        old = self._owner_of.pop(name, None)
        if old is not None:
            self._drop(old)

    def _drop(self, owner: Hashable) -> None:
        left = self._held[owner] - 1
        if left:
            self._held[owner] = left
        else:
            del self._held[owner]
