"""Which registry a peer or a service uses, and how a sender resolves a name.

One place answers the question every pattern asks at construction ("the
registry I was given, else a client of the dispatcher at this address, else the
process's embedded registry"), so no service writes it again.

And one place makes the ``resolve(name, fresh)`` a ``Sender`` needs: over a
registry, with *pinned* names (the dispatcher's own name, reached at the
address the caller was given, never looked up) answered first. A pinned name
resolves to its one address with epoch 0, fresh or not, which is what a
forwarder's recovery needs: it reconnects to the same address and never asks a
registry about it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from posa.errors import NameNotFound
from posa.naming.registration import Registry
from posa.naming.registry import LocalRegistry

__all__ = ["Resolve", "embedded_registry", "open_registry", "resolver"]

Resolve = Callable[[str, bool], tuple[tuple[str, ...], int]]
"""``resolve(name, fresh) -> (addresses, epoch)``: how a ``Sender`` finds a name."""

_embedded: LocalRegistry | None = None
_embedded_lock = threading.Lock()


def embedded_registry() -> LocalRegistry:
    """The process's embedded registry: the default for peers given none."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = LocalRegistry()
        return _embedded


def open_registry(registry: Registry | None = None, dispatcher: str | None = None, *,
                  required: bool = False) -> tuple[Registry, bool]:
    """The registry to use and whether the caller owns it (must close it): the
    one given; else a ``RegistryClient`` of the dispatcher at ``dispatcher``
    (owned); else the process's embedded registry, unless ``required`` says a
    registry or a dispatcher must be given (``TypeError`` then)."""
    if registry is not None:
        return registry, False
    if dispatcher is not None:
        from posa.naming.client import RegistryClient
        return RegistryClient(dispatcher), True
    if required:
        raise TypeError("give the dispatcher's address (dispatcher='tcp://...') or a registry")
    return embedded_registry(), False


def resolver(registry: Registry | None, pins: Mapping[str, str] | None = None) -> Resolve:
    """The ``resolve(name, fresh)`` a ``Sender`` needs: a name in ``pins`` is
    reached at its pinned address (epoch 0); any other is looked up in
    ``registry`` (``NameNotFound`` if there is none), ``fresh`` (after a failed
    delivery) first dropping it from a caching registry's cache."""
    pinned = {name: ((address,), 0) for name, address in (pins or {}).items()}
    if registry is None:
        def pinned_only(name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
            found = pinned.get(name)
            if found is None:
                raise NameNotFound(f"{name!r} is not reachable here: only "
                                   f"{', '.join(sorted(pinned)) or 'no name'} is pinned "
                                   "and no registry is given")
            return found
        return pinned_only
    forget = getattr(registry, "forget", None)   # a caching registry

    def resolve(name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        if pinned:
            found = pinned.get(name)
            if found is not None:
                return found
        if fresh and forget is not None:
            forget(name)
        registration = registry.lookup(name)
        return registration.addresses, registration.epoch
    return resolve
