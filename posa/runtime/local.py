"""Per-process singletons: one object per process, forgotten in a forked child.

A process has one reactor, one lease keeper, one embedded registry.  Each is
made on first use, under a lock, and must not survive ``fork``: the child has
none of the parent's threads, so an object that owns one (the reactor's loop,
the keeper's renewals) would look alive and never run.  ``process_local``
writes that once: it returns a getter that builds the object with ``factory``
the first time it is called in a process, and returns the same object after.

``os.register_at_fork(after_in_child=...)`` clears the object and replaces the
lock in the child (the parent may have held the lock at the moment of the fork;
a copied held lock would never be released).  ``alive`` lets a getter replace
an object that was closed (a closed reactor is made again on the next call).
Once the object exists, the getter reads it without the lock (one attribute
read is atomic); only making it takes the lock, and checks again under it.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["process_local", "ProcessLocal"]

T = TypeVar("T")


class ProcessLocal(Generic[T]):
    """A getter of the process's one ``T``: call it to get (or make) the object."""

    __slots__ = ("_factory", "_alive", "_value", "_lock")

    def __init__(self, factory: Callable[[], T],
                 alive: Callable[[T], bool] | None = None) -> None:
        self._factory = factory
        self._alive = alive
        self._value: T | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def __call__(self) -> T:
        value = self._value              # made and alive: no lock needed to read it
        if value is not None and (self._alive is None or self._alive(value)):
            return value
        with self._lock:                 # make it once, however many threads ask
            value = self._value
            if value is None or (self._alive is not None and not self._alive(value)):
                value = self._value = self._factory()
            return value

    def _forget(self) -> None:
        self._value = None       # its threads do not exist in the child
        self._lock = threading.Lock()


def process_local(factory: Callable[[], T], *,
                  alive: Callable[[T], bool] | None = None) -> ProcessLocal[T]:
    """A getter that makes ``factory()`` once per process (again in a forked
    child, or when ``alive(object)`` says the last one is gone)."""
    return ProcessLocal(factory, alive)
