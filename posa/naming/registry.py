"""The embedded registry: ``LocalRegistry``, a ``RegistryTable`` behind a lock.

The rules every registry follows (owners, epochs, leases) and the types it
hands out are in ``posa.naming.registration``; the state itself is the sans-IO
``posa.naming.table.RegistryTable``, which the standalone dispatcher keeps too.
This module adds what an in-process registry needs around it: a lock, lazy
reaping of dead registrations, and watchers called outside the lock in the
order of the changes.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from posa.errors import Closed
from posa.naming.pages import PAGE_ENTRIES, walk
from posa.naming.registration import DEFAULT_LEASE, Change, Registration
from posa.naming.table import RegistryTable

__all__ = ["LocalRegistry"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class LocalRegistry:
    """The embedded registry: a ``RegistryTable`` behind a lock, with watchers.

    Thread-safe. Dead registrations are reaped lazily on every call (but the
    dispatcher's ``lookup_packed``), and by ``expire()``, which a reactor timer
    may call at the time it returns.
    Watchers are called outside the lock, in the order of the changes, by one
    thread at a time (the thread whose call caused a change, unless another is
    delivering already); a watcher that raises is logged and stays subscribed.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
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
            if self._closed:
                self._check_open()
            if not self._table.reaping_due():
                return self._table.lookup(name)
        return self._apply(lambda: (self._table.lookup(name), []))

    def lookup_packed(self, name: str) -> bytes:
        """``lookup(name)`` as the dispatcher answers it, packed
        (``RegistryTable.lookup_packed``). It reaps nothing: a dead registration
        is not answered, and the dispatcher's sweep reaps (``expire``)."""
        lock = self._lock   # (not ``with``: twice the instructions; the dispatcher's
        lock.acquire()      # reactor thread calls it, where no KeyboardInterrupt lands)
        try:
            if self._closed:
                self._check_open()
            return self._table.lookup_packed(name)
        finally:
            lock.release()

    def names(self, pattern: str = "**") -> list[Registration]:
        """See ``Registry.names``."""
        return self._apply(lambda: (self._table.names(pattern), []))

    def page(self, pattern: str = "**", after: str | None = None, *,
             limit: int = PAGE_ENTRIES, keep: Callable[[Mapping[str, Any]], bool] | None = None
             ) -> tuple[list[Registration], str | None]:
        """One page of ``names(pattern)`` above the cursor ``after``, and the next
        cursor (see ``RegistryTable.page`` and ``posa.naming.pages``)."""
        return self._apply(lambda: (self._table.page(pattern, after, limit=limit, keep=keep),
                                    []))

    def pages(self, pattern: str = "**", *, limit: int = PAGE_ENTRIES
              ) -> Iterator[list[Registration]]:
        """Every page of ``names(pattern)``, first to last (``posa.naming.pages``)."""
        return walk(lambda after: self.page(pattern, after, limit=limit))

    def __len__(self) -> int:
        """Registrations held (dead ones not yet reaped included)."""
        with self._lock:
            return len(self._table)

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
