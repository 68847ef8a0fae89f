"""How ``ZeroconfRegistry`` delivers changes to its watchers.

python-zeroconf reports records on its event-loop thread, which must never wait
for a watcher: the registry publishes the changes to ``Watchers``, and returns.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from posa.naming.registration import Change, Registration

__all__ = ["Watchers"]

_log = logging.getLogger("posa.naming.zeroconf.registry")


class Watchers:
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
        """Call ``callback(name, registration or None)`` for every change published
        from now on; return a function that unsubscribes (twice is harmless)."""
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
        """Hand ``changes`` to the watch thread without waiting for it."""
        if not changes:
            return
        with self._cond:
            if self._callbacks and not self._closed:
                for name, registration in changes:
                    self._pending[name] = registration
                self._cond.notify()

    def close(self) -> None:
        """Drop every callback and pending change; join the thread unless called
        on it. Idempotent."""
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
