"""The work queue's manager: every item processed once, by whichever worker is free.

The roles of the work-queue pattern, on posa peers:

- a **source** lists the items there are to process and fetches one
  (``posa.work.sources``); producers may also put items in directly
  (``WorkQueue.put`` here, ``posa.work.client.submit`` from anywhere);
- the **queue manager**, ``WorkQueue``, is a peer: it keeps what is pending, in
  progress, done or given up (``posa.work.state.WorkState``), hands items out on
  request and takes them back when a lease runs out;
- **workers** (``posa.work.worker.Worker``) are peers that compete for items by
  asking the queue for the next one.

The requests it answers are those of ``posa.work.protocol.QUEUE``, dispatched
through that table to the ``_op_<name>`` methods. A worker's acknowledgements
ride on its request for the next items (one round trip per item, or per
``prefetch`` items); with nothing pending a ``next`` is held (``posa.work.held``).
With a ``store`` (``posa.work.store``) every change a request makes is written
in one transaction before the request is answered, so an item ``put``
acknowledged survives the queue process (docs/work.md, "What survives what").
Draining (``stop_accepting``, on SIGTERM under ``serve_until_signalled``):
new items are refused with ``Rejected``, nothing more is handed out, workers'
acknowledgements are still taken until ``in_flight()`` is 0.

Strategy: the state is touched under one lock, briefly, by the request handler
(reactor thread), the reactor timer (leases, held requests) and the source's
feeder thread; the store is written under the same lock, replies and callbacks
run after it. Completion is idempotent (the first acknowledgement of a key
wins): a worker that dies after finishing but before acknowledging costs a
second execution, never a second completion. ``gauges()`` feeds ``/metrics``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.errors import Closed, PosaError, Rejected, Timeout
from posa.naming.registration import Registry
from posa.peer import DEFERRED, Peer
from posa.wire.codec import Message
from posa.work.held import Held, lease_rows
from posa.work.pace import Pace, gauges
from posa.work.progress import finished, render_progress
from posa.work.protocol import MAX_ITEMS, MAX_WAIT, QUEUE, items_reply
from posa.work.scaling import Recommendation, ScalingAdvisor
from posa.work.sources import Feeder, Source, check_refresh
from posa.work.sqlitestore import SqliteStore
from posa.work.state import DEAD, DONE, PENDING, WorkState
from posa.work.store import Committer, QueueStore

__all__ = ["WorkQueue"]

log = logging.getLogger("posa.work.queue")

TICK = 0.05             # seconds between lease-expiry checks


class WorkQueue:
    """The queue manager: a peer named ``name`` that workers ask for items.

    ``source`` (optional) is listed every ``refresh`` seconds and its new items queued;
    ``submit`` adds items too. ``visibility``, ``max_in_flight``, ``max_attempts``,
    ``capacity``, ``remember`` and ``max_dead`` are those of ``WorkState``.
    ``on_done(key, result)`` is called once per completed item, ``on_dead(key, reason)``
    once per item given up, and ``on_scale(recommendation)`` when the advised number of
    workers changes, all on the reactor thread: keep them quick, never block in them.

    ``store``: where items are kept (a ``QueueStore``, or a path for a ``SqliteStore``;
    None keeps them in memory only); the queue restores what it holds. ``credential``
    owns the name: give a restarted queue the same one and it takes its name over at
    once. ``authenticator`` seals and checks its frames (``Peer``'s).
    """

    def __init__(self, name: str, *, source: Source | None = None,
                 registry: Registry | None = None, listen: str | None = None,
                 visibility: float = 30.0, max_in_flight: int = 1000,
                 max_attempts: int = 3, capacity: int = 100_000,
                 remember: int = 1_000_000, max_dead: int = 10_000, refresh: float = 5.0,
                 store: QueueStore | str | os.PathLike[str] | None = None,
                 credential: str | None = None, authenticator: Authenticator | None = None,
                 on_done: Callable[[str, Any], None] | None = None,
                 on_dead: Callable[[str, str], None] | None = None,
                 advisor: ScalingAdvisor | None = None,
                 on_scale: Callable[[Recommendation], None] | None = None) -> None:
        check_refresh(refresh, source)     # before anything starts
        self.state = WorkState(visibility=visibility, max_in_flight=max_in_flight,
                               max_attempts=max_attempts, capacity=capacity,
                               remember=remember, max_dead=max_dead,
                               journal=store is not None)
        self._owns_store = isinstance(store, (str, os.PathLike))
        self.store = SqliteStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.pace = Pace(advisor or ScalingAdvisor())
        self.advisor = self.pace.advisor
        self.on_done, self.on_dead, self.on_scale = on_done, on_dead, on_scale
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._held = Held()
        self._committer = (None if self.store is None
                           else Committer(self.store, self.state.take_changes))
        self._listed = source is None
        self._closed = self._draining = False
        self._ops = QUEUE.bind(self)
        try:
            if self.store is not None:
                self.state.restore(self.store.load(), time.monotonic())
            self.peer = Peer(name, registry=registry, listen=listen, credential=credential,
                             authenticator=authenticator)
        except BaseException:
            self._close_store()
            raise
        self.name = self.peer.name
        self._timer = self.peer.reactor.call_every(TICK, self._tick)
        self.peer.serve(self._handle)
        self._feeder = None if source is None else Feeder(
            self.name, source, refresh, wants=self._wants, offer=self.offer,
            listed=self._listed_once)

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- local API ---------------------------------------------------------------
    def offer(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]
              ) -> tuple[int, list[str]]:
        """Queue as many items (key -> data) as fit, in order. Returns how many
        were taken and the keys among them that were new (the others are known:
        held, or completed and remembered, and are ignored)."""
        pairs = [[key, data] for key, data in
                 (items.items() if isinstance(items, Mapping) else items)]
        return self._put(pairs)

    def put(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> int:
        """Queue items (key -> data); returns how many were new. Raises
        ``Rejected`` if they do not all fit (those before the first that did not
        fit are queued)."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        accepted, added = self.offer(pairs)
        if accepted < len(pairs):
            raise Rejected(f"the queue {self.name!r} is full ({self.state.capacity} items); "
                           f"{accepted} item(s) were accepted, submit the rest later")
        return len(added)

    def metrics(self) -> dict[str, Any]:
        """Progress and health (docs/work.md, "Progress"): total, done, pending,
        in_flight, dead, ..., rate (items/s), progress (0..1), scaling advice."""
        with self._lock:
            return self._metrics_locked(time.monotonic())

    def dead_letters(self) -> list[tuple[str, Any, int, str]]:
        """(key, data, attempts, last reason) of every item given up, oldest first."""
        with self._lock:
            return [(str(d.key), d.data, d.attempts, d.reason)
                    for d in self.state.dead_letters()]

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout: float) -> dict[str, Any]:
        """Block until ``predicate(metrics)`` holds (checked at every change);
        return those metrics. Raises ``Timeout``, or ``Closed`` once closed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                metrics = self._metrics_locked(time.monotonic())
                if predicate(metrics):
                    return metrics
                if self._closed:
                    raise Closed(f"the work queue {self.name!r} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"the queue {self.name!r} did not reach the state "
                                  f"waited for within {timeout} s; now: "
                                  f"{render_progress(metrics)}; are workers running?")
                self._changed.wait(remaining)

    def join(self, timeout: float) -> dict[str, Any]:
        """Wait until every item is finished (nothing pending or in flight, and
        the source listed once); return the metrics. Raises ``Timeout``."""
        return self.wait_until(finished, timeout)

    def stop_accepting(self) -> None:
        """Drain: refuse new items (``Rejected``), stop listing the source, hand
        out nothing more; workers' acknowledgements are still taken."""
        with self._lock:
            self._draining = True
            self._changed.notify_all()

    def in_flight(self) -> int:
        """Items leased to workers now (a drain waits for them to be acknowledged)."""
        return self.state.n_leased          # (one int read: no lock needed)

    def close(self) -> None:
        """Answer held requests, close the peer and the store (items leased stay
        leased there: handed out again a visibility after a restart). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters = self._held.release()
            self._changed.notify_all()
        self._timer.cancel()
        for msg in waiters:
            self._reply_items(msg, [])
        if self._feeder is not None:
            self._feeder.stop(5.0)
        self.peer.close()
        with self._lock:
            self._close_store()

    def _close_store(self) -> None:
        if self.store is not None and self._owns_store:
            self.store.close()

    def _commit_locked(self, after: list[Any]) -> list[Any]:
        """Store the state's changes; ``_after``'s actions now due (failed commits' too)."""
        return after if self._committer is None else self._committer.commit(after)

    # -- what the source's feeder asks (its thread) ------------------------------
    def _wants(self, key: str) -> bool:
        """Whether ``key`` is new to the queue, once there is room for it: blocks
        while the queue is full. Raises ``Closed`` once the queue is closed."""
        with self._changed:
            while (not self._closed and not self._draining
                   and self.state.status(key) is None and self.state.room() <= 0):
                self._changed.wait(1.0)      # full: wait for completions
            if self._closed or self._draining:
                raise Closed(f"the work queue {self.name!r} is closed or draining")
            return self.state.status(key) is None

    def _listed_once(self) -> None:
        """The source has been listed through once (``join`` waits for that)."""
        with self._lock:
            self._listed = True
            self._changed.notify_all()

    # -- the request handler (reactor thread) -----------------------------------
    def _handle(self, msg: Message) -> Any:
        op, fields = QUEUE.parse(msg.body)
        return self._ops[op.name](msg, fields)

    def _op_put(self, msg: Message, fields: dict[str, Any]) -> Any:
        accepted, added = self._put(fields["items"])
        return {"accepted": accepted, "added": len(added)}

    def _op_extend(self, msg: Message, fields: dict[str, Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            for key, token in fields["leases"]:
                self.state.extend(key, token, now)
        return None

    def _op_wake(self, msg: Message, fields: dict[str, Any]) -> Any:
        """Answer the sender's held request now (it is stopping)."""
        with self._lock:
            mine = self._held.release(msg.sender)
        for held in mine:
            self._reply_items(held, [])
        return None

    def _op_metrics(self, msg: Message, fields: dict[str, Any]) -> Any:
        return self.metrics()

    def _op_dead(self, msg: Message, fields: dict[str, Any]) -> Any:
        return [[key, attempts, reason] for key, _, attempts, reason in self.dead_letters()]

    def _op_next(self, msg: Message, fields: dict[str, Any]) -> Any:
        now = time.monotonic()
        max_items = min(max(fields["max"], 0), MAX_ITEMS)
        wait = min(max(float(fields["wait"]), 0.0), MAX_WAIT,
                   msg.headers.get("ttl", 0) / 1000.0)
        with self._lock:
            if self._closed:
                raise Closed(f"the work queue {self.name!r} is closing")
            self.pace.saw(msg.sender, now)
            acks, returned = self._acknowledge_locked(fields["done"], fields["failed"])
            leases = (self.state.lease(msg.sender, now, max_items)
                      if max_items and not self._draining else [])
            held = not leases and max_items > 0 and wait > 0
            if held:
                self._held.hold(msg, max_items, now + wait)
            replies = self._serve_held_locked(now) if returned else []
            actions = self._commit_locked(replies + acks)
            self._changed.notify_all()
        self._after(actions)
        if held:
            return DEFERRED
        return {"items": lease_rows(leases), "visibility": self.state.visibility}

    def _acknowledge_locked(self, done: Sequence[list[Any]], failed: Sequence[list[Any]]
                            ) -> tuple[list[tuple[str, Any, Any]], bool]:
        """Settle a worker's ``done`` and ``failed`` rows: ``_after``'s actions
        for the items completed now and those given up, and whether any went
        back to pending."""
        completed: list[tuple[str, Any, Any]] = []
        dead: list[tuple[str, Any, Any]] = []
        returned = False
        for key, result, seconds in done:
            if self.state.ack(key) == DONE:
                completed.append(("done", key, result))
                self.advisor.observe_processing(seconds)
        for key, token, reason in failed:
            outcome = self.state.fail(key, token, str(reason))
            returned = returned or outcome == PENDING
            if outcome == DEAD:
                dead.append(("dead", key, str(reason)))
        return completed + dead, returned

    def _put(self, items: list[list[Any]]) -> tuple[int, list[str]]:
        now = time.monotonic()
        accepted = 0
        added = []
        with self._lock:
            if self._closed:
                raise Closed(f"the work queue {self.name!r} is closed")
            if self._draining:
                raise Rejected(f"the work queue {self.name!r} is draining (shutting down) "
                               "and takes no new items; submit them again once it is back")
            for key, data in items:
                if self.state.status(key) is None and self.state.room() <= 0:
                    break
                accepted += 1
                if self.state.add(key, data, now):
                    added.append(key)
                    self.advisor.observe_arrival(now)
            actions = self._commit_locked(self._serve_held_locked(now) if added else [])
            self._changed.notify_all()
        self._after(actions)
        return accepted, added

    def _serve_held_locked(self, now: float) -> list[tuple[str, Any, Any]]:
        """Lease to held requests (nothing while draining); the answers to send."""
        return [("reply", msg, items) for msg, items in
                self._held.serve(None if self._draining else self.state.lease, now)]

    def _after(self, actions: Sequence[tuple[str, Any, Any]]) -> None:
        """What follows a commit: ("reply", msg, items), ("done", key, result),
        ("dead", key, reason)."""
        for what, first, second in actions:
            if what == "reply":
                self._reply_items(first, second)
            elif what == "done":
                self._call(self.on_done, first, second)
            else:
                log.warning("queue %s: item %r given up after %d attempts: %s", self.name,
                            first, self.state.max_attempts, second)
                self._call(self.on_dead, first, second)

    def _call(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is not None:
            try:
                callback(*args)
            except Exception:
                log.exception("queue %s: callback %r raised for %r", self.name, callback,
                              args)

    def _reply_items(self, msg: Message, items: list[Any]) -> None:
        try:
            self.peer.reply(msg, items_reply(items, self.state.visibility))
        except PosaError as exc:
            log.info("queue %s: reply to %s not sent (%s); its leases will expire",
                     self.name, msg.sender, exc)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            expired = self.state.expire(now)
            dead = [("dead", str(key), getattr(self.state.dead_letter(key), "reason",
                                               "lease expired"))
                    for key, outcome in expired if outcome == DEAD]
            replies = self._serve_held_locked(now) if self._held else []
            actions: list[Any] = []
            try:
                actions = self._commit_locked(replies + dead)
            except PosaError as exc:      # tried again each tick: said once a run of them
                if self._committer is not None and self._committer.tell():
                    log.error("queue %s: changes not stored, tried again: %s", self.name, exc)
            reviewed, advice = self.pace.review(now, self.state)
            if expired or replies or reviewed:
                self._changed.notify_all()
        self._after(actions)
        if advice is not None and self.pace.seen:
            log.info("queue %s: %d worker(s) advised: %s", self.name, advice.workers,
                     advice.reason)
            self._call(self.on_scale, advice)

    def _metrics_locked(self, now: float) -> dict[str, Any]:
        return self.pace.metrics(self.name, self.state, now, waiting=len(self._held),
                                 listed=self._listed)

    def gauges(self) -> dict[str, float]:
        """pending, in flight, dead, redelivered, oldest age ... for ``/metrics``."""
        return gauges(self.metrics())
