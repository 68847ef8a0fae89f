"""Which registry a peer or a service uses: the one given, a dispatcher's, or the embedded one.

One place answers the question every pattern asks at construction ("the
registry I was given, else a client of the dispatcher at this address, else the
process's embedded registry"), so no service writes it again.

The ``resolve(name, fresh)`` a ``Sender`` needs is ``resolver`` in
``posa.naming.registration``, beside the ``Registry`` interface it works over:
``RegistryClient``, which this module picks, uses it too, so it cannot live
here without an import cycle.
"""
from __future__ import annotations

from posa.naming.registration import Registry
from posa.naming.registry import LocalRegistry
from posa.runtime.local import process_local

__all__ = ["embedded_registry", "open_registry"]

embedded_registry = process_local(LocalRegistry)
"""The process's embedded registry: the default for peers given none (a forked
child gets a fresh one: the parent's inproc addresses do not exist in it)."""


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
