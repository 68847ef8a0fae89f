"""Workers: competing consumers of a work queue.

A ``Worker`` is a peer that asks the queue (``posa.work.queue.WorkQueue``) for
the next items with the ``next`` request of ``posa.work.protocol.QUEUE`` and
runs the executor, ``work(item)``, on each. The acknowledgements of the items
it finished (with their results) or failed ride on its request for the next
ones, so a busy worker costs one round trip per item, or per ``prefetch``
items. An empty queue holds the request up to ``wait`` seconds: an idle worker
does not poll.

Strategy: the executor runs on the worker's own thread (``run``, or the
thread ``start`` creates); a heartbeat thread extends the leases of the items
in hand every third of the queue's visibility timeout (one-way ``extend``), so a
slow item is not handed to a second worker while this one lives. A queue that
cannot be reached is asked again after a pause; acknowledgements that cannot
be delivered are logged, and those items are handed out again by the queue
(completion there is idempotent, so that costs a second execution, never a
second completion).

Draining (``stop_accepting``, as ``posa.ops.serve_until_signalled`` calls it on
SIGTERM): the worker takes no more items, finishes those in hand and delivers
their acknowledgements; ``in_flight()`` counts the items taken and not yet
acknowledged, so a drain waits until the queue has them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from posa.admission.gatekeeper import Authenticator
from posa.errors import PosaError
from posa.naming.registration import Registry
from posa.peer import Peer
from posa.work.protocol import QUEUE, next_request

__all__ = ["Item", "Worker"]

log = logging.getLogger("posa.work.worker")


@dataclass(frozen=True)
class Item:
    """What an executor gets: the item's ``key``, its ``data`` and which
    delivery this is (``attempt`` 1 first, more after a failure or a lost lease)."""

    key: str
    data: Any
    attempt: int


def _check_settings(prefetch: int, wait: float, timeout: float) -> None:
    """``ValueError`` saying what to pass for a setting that means nothing (a nan
    ``wait`` or ``timeout`` ended ``run`` at its first request; a ``timeout`` of 0
    retried an unreachable queue without a pause)."""
    if type(prefetch) is not int or prefetch < 1:
        raise ValueError(f"prefetch must be a whole number >= 1, not {prefetch!r}")
    for label, seconds, zero in (("wait", wait, True), ("timeout", timeout, False)):
        if not (isinstance(seconds, (int, float)) and 0 <= seconds <= threading.TIMEOUT_MAX
                and (zero or seconds > 0)):
            raise ValueError(f"{label} must be a number of seconds {'>=' if zero else '>'} "
                             f"0, not {seconds!r}")


class Worker:
    """A competing consumer: a peer named ``name`` that takes items from the
    queue named ``queue`` and runs ``work(item)`` on each (an ``Item``).

    ``prefetch`` items are taken per request (1 is the fairest; more saves round
    trips on tiny items). ``work``'s result (msgpack data) travels back with
    the acknowledgement; an exception fails the item, which the queue retries
    and finally dead-letters. Leases of the items in progress are extended
    every third of the queue's visibility timeout, so a slow item is not handed
    to a second worker while this one is alive. ``wait`` is how long one request
    may be held by an empty queue; ``timeout`` bounds a round trip beyond it.
    ``credential`` owns the name: a restarted worker given the same one takes
    its name over at once.
    """

    def __init__(self, name: str, queue: str, work: Callable[[Item], Any], *,
                 registry: Registry | None = None, listen: str | None = None,
                 prefetch: int = 1, wait: float = 1.0, timeout: float = 5.0,
                 credential: str | None = None,
                 authenticator: Authenticator | None = None) -> None:
        _check_settings(prefetch, wait, timeout)
        self.queue = queue
        self.work = work
        self.prefetch = prefetch
        self.wait = wait
        self.timeout = timeout
        self.stats = {"processed": 0, "failed": 0}
        self.peer = Peer(name, registry=registry, listen=listen, credential=credential,
                         authenticator=authenticator)
        self.name = self.peer.name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[str, int] = {}          # key -> lease token, for heartbeats
        self._visibility = 30.0                     # until the queue tells its own
        self._unsettled = 0                         # items taken, not yet acknowledged

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, *, max_items: int | None = None, until_idle: bool = False) -> int:
        """Process items on this thread until ``stop()``, until ``max_items`` are
        done, or (``until_idle``) until the queue has had nothing for ``wait``
        seconds. Returns the number processed successfully."""
        done: list[list[Any]] = []
        failed: list[list[Any]] = []
        processed = 0
        beating = threading.Event()
        heart: threading.Thread | None = None     # started once the visibility is known
        try:
            while not self._stop.is_set():
                want = self.prefetch if max_items is None else min(
                    self.prefetch, max_items - processed)
                if want <= 0:
                    break
                items = self._next(want, done, failed)
                if items is None:
                    continue                        # queue unreachable: retried
                done, failed = [], []
                self._unsettled = len(items)        # the earlier ones are acknowledged
                if not items and until_idle:
                    break
                if heart is None:
                    heart = threading.Thread(target=self._heartbeat, args=(beating,),
                                             name=f"posa-heartbeat-{self.name}", daemon=True)
                    heart.start()
                for key, token, attempt, data in items:
                    processed += self._process(key, token, attempt, data, done, failed)
            if done or failed:
                self._flush(done, failed)
        finally:
            self._unsettled = 0
            beating.set()
            if heart is not None:
                heart.join(5.0)
        return processed

    def start(self) -> Worker:
        """Run on a thread of its own until ``stop()``/``close()``."""
        self._thread = threading.Thread(target=self.run, name=f"posa-worker-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the items in hand, acknowledge them and return from ``run``."""
        self._stop.set()

    def stop_accepting(self) -> None:
        """Drain: take no more items; those in hand are finished and acknowledged
        (``in_flight`` counts them), then ``run`` returns."""
        self.stop()
        self._wake()

    def in_flight(self) -> int:
        """Items taken from the queue and not yet acknowledged to it."""
        return self._unsettled

    def close(self, timeout: float = 10.0) -> None:
        """Stop, wait up to ``timeout`` for the items in hand, close the peer."""
        self.stop()
        if self._thread is not None:
            if self._thread.is_alive():
                self._wake()
            self._thread.join(timeout)
        self.peer.close()

    def _wake(self) -> None:
        """Cut short a request of ours that the queue holds while it is empty."""
        try:
            self.peer.send(self.queue, QUEUE.request("wake"), timeout=1.0)
        except PosaError:
            pass

    def _next(self, want: int, done: list[list[Any]],
              failed: list[list[Any]]) -> list[list[Any]] | None:
        try:
            reply = self.peer.request(
                self.queue, next_request(want, self.wait, done, failed),
                timeout=self.wait + self.timeout)
        except PosaError as exc:
            log.warning("worker %s: asking %s for work failed (%s); retrying", self.name,
                        self.queue, exc)
            self._stop.wait(min(self.timeout, 1.0))
            return None
        self._visibility = float(reply.get("visibility") or self._visibility)
        return reply.get("items") or []

    def _process(self, key: str, token: int, attempt: int, data: Any,
                 done: list[list[Any]], failed: list[list[Any]]) -> int:
        self._running[key] = token
        started = time.monotonic()
        try:
            result = self.work(Item(key, data, attempt))
            msgpack.packb(result)                   # it must travel: fail it here if not
        except Exception as exc:
            log.info("worker %s: item %r failed (attempt %d): %s", self.name, key, attempt,
                     exc)
            failed.append([key, token, f"{type(exc).__name__}: {exc}"])
            self.stats["failed"] += 1
            return 0
        finally:
            self._running.pop(key, None)
        done.append([key, result, time.monotonic() - started])
        self.stats["processed"] += 1
        return 1

    def _flush(self, done: list[list[Any]], failed: list[list[Any]]) -> None:
        try:
            self.peer.request(self.queue, QUEUE.request("next", max=0, done=done,
                                                        failed=failed), timeout=self.timeout)
        except PosaError as exc:
            log.warning("worker %s: %d acknowledgement(s) not delivered (%s); those "
                        "items will be processed again", self.name, len(done), exc)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self._visibility / 3):
            leases = [[key, token] for key, token in list(self._running.items())]
            if leases:
                try:
                    self.peer.send(self.queue, QUEUE.request("extend", leases=leases),
                                   timeout=self._visibility / 3)
                except PosaError as exc:
                    log.info("worker %s: extending leases failed: %s", self.name, exc)
