"""Keeps registrations alive: one thread per process renews every lease.

Renewal may go over the network (a dispatcher's registry), so it runs on its
own thread, never on the reactor's.  A renewal that fails is retried at the
next tick; a registration that is gone (``NameNotFound``, e.g. after a
dispatcher restart without state) is registered again by its ``restore``
callback, so servers and peers come back by themselves.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from posa.errors import NameNotFound, PosaError
from posa.runtime.local import process_local

__all__ = ["LeaseKeeper", "keeper"]

log = logging.getLogger("posa.runtime.leases")

_LONGEST = min(threading.TIMEOUT_MAX, 86400.0)
"""The longest the keeper's thread waits at once."""


class _Lease:
    __slots__ = ("renew", "restore", "interval", "cancelled")

    def __init__(self, renew: Callable[[], object], restore: Callable[[], object],
                 interval: float) -> None:
        self.renew = renew
        self.restore = restore
        self.interval = interval
        self.cancelled = False


class LeaseKeeper:
    """Calls each lease's ``renew`` every ``interval`` seconds on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Lease]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def keep(self, renew: Callable[[], object], restore: Callable[[], object],
             interval: float) -> Callable[[], None]:
        """Renew every ``interval`` s; returns a function that stops it."""
        lease = _Lease(renew, restore, interval)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + interval, next(self._order), lease))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="posa-leases",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

        def cancel() -> None:
            lease.cancelled = True
        return cancel

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    # a lease longer than a thread can wait (lease=1e300) is woken
                    # early and waits again, never OverflowError killing the thread
                    self._cond.wait(None if wait is None else min(wait, _LONGEST))
                _, _, lease = heapq.heappop(self._heap)
            if lease.cancelled:
                continue
            try:
                lease.renew()
            except NameNotFound:
                try:
                    lease.restore()
                except PosaError as exc:
                    log.warning("could not register again: %s", exc)
            except PosaError as exc:
                log.warning("lease renewal failed, retrying: %s", exc)
            except Exception:
                log.exception("lease renewal raised")
            with self._cond:
                heapq.heappush(self._heap, (time.monotonic() + lease.interval,
                                            next(self._order), lease))


keeper = process_local(LeaseKeeper)
"""The process's lease keeper."""
