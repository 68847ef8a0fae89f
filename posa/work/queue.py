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
ride on its request for the next items, so a busy worker costs one round trip
per item (or per ``prefetch`` items). With nothing pending, the queue holds a
``next`` request for up to ``wait`` seconds and answers it as soon as an item
comes (a long poll: no busy polling). ``put`` takes the items that fit and
leaves the rest to be sent again.

Strategy: the state is touched under one lock, briefly, by the request handler
(on the reactor thread), by the reactor timer that expires leases and held
requests, and by the source's feeder thread; replies and user callbacks run
after the lock is released. Completion is idempotent (the first
acknowledgement of a key wins; later ones are counted as duplicates), so a
worker that dies after finishing but before acknowledging costs a second
execution, never a second completion.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from posa.errors import Closed, PosaError, Rejected, Timeout
from posa.naming.registration import Registry
from posa.peer import DEFERRED, Peer
from posa.wire.codec import Message
from posa.work.progress import finished, render_progress
from posa.work.protocol import MAX_ITEMS, MAX_WAIT, QUEUE, items_reply
from posa.work.sources import Feeder, Source
from posa.work.state import DEAD, DONE, PENDING, Recommendation, ScalingAdvisor, WorkState

__all__ = ["WorkQueue"]

log = logging.getLogger("posa.work.queue")

TICK = 0.05             # seconds between lease-expiry checks
ACTIVE = 10.0           # a worker seen within this many seconds counts as active


class WorkQueue:
    """The queue manager: a peer named ``name`` that workers ask for items.

    ``source`` (optional) is listed every ``refresh`` seconds and its new items
    queued; ``submit`` adds items too. ``visibility``, ``max_in_flight``,
    ``max_attempts``, ``capacity``, ``remember`` and ``max_dead`` are those of
    ``WorkState``. ``on_done(key, result)`` is called once per completed item,
    ``on_dead(key, reason)`` once per item given up, and
    ``on_scale(recommendation)`` when the advised number of workers changes,
    all on the reactor thread: keep them quick, never block in them.
    """

    def __init__(self, name: str, *, source: Source | None = None,
                 registry: Registry | None = None, listen: str | None = None,
                 visibility: float = 30.0, max_in_flight: int = 1000,
                 max_attempts: int = 3, capacity: int = 100_000,
                 remember: int = 1_000_000, max_dead: int = 10_000, refresh: float = 5.0,
                 on_done: Callable[[str, Any], None] | None = None,
                 on_dead: Callable[[str, str], None] | None = None,
                 advisor: ScalingAdvisor | None = None,
                 on_scale: Callable[[Recommendation], None] | None = None) -> None:
        self.state = WorkState(visibility=visibility, max_in_flight=max_in_flight,
                               max_attempts=max_attempts, capacity=capacity,
                               remember=remember, max_dead=max_dead)
        self.advisor = advisor or ScalingAdvisor()
        self.on_done = on_done
        self.on_dead = on_dead
        self.on_scale = on_scale
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiters: deque[tuple[Message, int, float]] = deque()
        self._seen: dict[str, float] = {}
        self._rate_samples: deque[tuple[float, int]] = deque(maxlen=40)
        self._advice: Recommendation | None = None
        self._advised_at = 0.0
        self._listed = source is None
        self._closed = False
        self._ops = QUEUE.bind(self)
        self.peer = Peer(name, registry=registry, listen=listen)
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
        """Progress and health: total, done, pending, in_flight, dead, failed,
        expired, redelivered, duplicates, workers, waiting, rate (items/s),
        progress (0..1) and the scaling advice."""
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

    def close(self) -> None:
        """Stop handing out items, answer held requests, close the peer. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters, self._waiters = list(self._waiters), deque()
            self._changed.notify_all()
        self._timer.cancel()
        for msg, _, _ in waiters:
            self._reply_items(msg, [])
        if self._feeder is not None:
            self._feeder.stop(5.0)
        self.peer.close()

    # -- what the source's feeder asks (its thread) ------------------------------
    def _wants(self, key: str) -> bool:
        """Whether ``key`` is new to the queue, once there is room for it: blocks
        while the queue is full. Raises ``Closed`` once the queue is closed."""
        with self._changed:
            while (not self._closed and self.state.status(key) is None
                   and self.state.room() <= 0):
                self._changed.wait(1.0)      # full: wait for completions
            if self._closed:
                raise Closed(f"the work queue {self.name!r} is closed")
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
            mine = [w for w in self._waiters if w[0].sender == msg.sender]
            for waiter in mine:
                self._waiters.remove(waiter)
        for held, _, _ in mine:
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
            self._seen[msg.sender] = now
            completed, dead, returned = self._acknowledge_locked(fields["done"],
                                                                 fields["failed"])
            leases = self.state.lease(msg.sender, now, max_items) if max_items else []
            held = not leases and max_items > 0 and wait > 0
            if held:
                self._waiters.append((msg, max_items, now + wait))
            replies = self._serve_waiters_locked(now) if returned else []
            self._changed.notify_all()
        if completed or replies or dead:
            self._after(completed, replies, dead)
        if held:
            return DEFERRED
        return {"items": [[lease.key, lease.token, lease.attempt, lease.data]
                          for lease in leases], "visibility": self.state.visibility}

    def _acknowledge_locked(self, done: Sequence[list[Any]], failed: Sequence[list[Any]]
                            ) -> tuple[list[tuple[str, Any]], list[tuple[str, str]], bool]:
        """Settle a worker's ``done`` and ``failed`` rows: the items completed
        now (key, result), those given up (key, reason), and whether any went
        back to pending."""
        completed: list[tuple[str, Any]] = []
        dead: list[tuple[str, str]] = []
        returned = False
        for key, result, seconds in done:
            if self.state.ack(key) == DONE:
                completed.append((key, result))
                self.advisor.observe_processing(seconds)
        for key, token, reason in failed:
            outcome = self.state.fail(key, token, str(reason))
            returned = returned or outcome == PENDING
            if outcome == DEAD:
                dead.append((key, str(reason)))
        return completed, dead, returned

    def _put(self, items: list[list[Any]]) -> tuple[int, list[str]]:
        now = time.monotonic()
        accepted = 0
        added = []
        with self._lock:
            if self._closed:
                raise Closed(f"the work queue {self.name!r} is closed")
            for key, data in items:
                if self.state.status(key) is None and self.state.room() <= 0:
                    break
                accepted += 1
                if self.state.add(key, data):
                    added.append(key)
                    self.advisor.observe_arrival(now)
            replies = self._serve_waiters_locked(now) if added else []
            self._changed.notify_all()
        self._after([], replies)
        return accepted, added

    def _serve_waiters_locked(self, now: float) -> list[tuple[Message, list[Any]]]:
        """Lease to held requests, oldest first; answer those whose wait is over."""
        replies = []
        waiters = self._waiters
        for _ in range(len(waiters)):
            msg, max_items, until = waiters.popleft()
            leases = self.state.lease(msg.sender, now, max_items)
            if leases or until <= now:
                replies.append((msg, [[lease.key, lease.token, lease.attempt, lease.data]
                                      for lease in leases]))
            else:
                waiters.append((msg, max_items, until))
        return replies

    def _after(self, completed: list[tuple[str, Any]],
               replies: list[tuple[Message, list[Any]]],
               dead: Sequence[tuple[str, str]] = ()) -> None:
        for msg, items in replies:
            self._reply_items(msg, items)
        for key, result in completed:
            self._callback(self.on_done, key, result)
        for key, reason in dead:
            log.warning("queue %s: item %r given up after %d attempts: %s", self.name, key,
                        self.state.max_attempts, reason)
            self._callback(self.on_dead, key, reason)

    def _callback(self, callback: Callable[[str, Any], None] | None, key: str,
                  value: Any) -> None:
        if callback is not None:
            try:
                callback(key, value)
            except Exception:
                log.exception("queue %s: callback %r raised for %r", self.name, callback,
                              key)

    def _reply_items(self, msg: Message, items: list[Any]) -> None:
        try:
            self.peer.reply(msg, items_reply(items, self.state.visibility))
        except PosaError as exc:
            log.info("queue %s: reply to %s not sent (%s); its leases will expire",
                     self.name, msg.sender, exc)

    def _tick(self) -> None:
        now = time.monotonic()
        advice = None
        with self._lock:
            expired = self.state.expire(now)
            dead = [(str(key), self._last_reason(key)) for key, outcome in expired
                    if outcome == DEAD]
            replies = self._serve_waiters_locked(now) if self._waiters else []
            if expired or replies:
                self._changed.notify_all()
            if now - self._advised_at >= 1.0:
                self._advised_at = now
                done = self.state.counters["done"]
                self._rate_samples.append((now, done))
                for worker in [w for w, t in self._seen.items() if now - t > ACTIVE]:
                    del self._seen[worker]
                recommendation = self.advisor.recommend(len(self._seen), now)
                if (self._advice is None or self._advice.workers != recommendation.workers):
                    advice = recommendation
                self._advice = recommendation
                self._changed.notify_all()
        self._after([], replies, dead)
        if advice is not None and self._seen:
            log.info("queue %s: %d worker(s) advised: %s", self.name, advice.workers,
                     advice.reason)
            if self.on_scale is not None:
                try:
                    self.on_scale(advice)
                except Exception:
                    log.exception("queue %s: on_scale raised", self.name)

    def _last_reason(self, key: Hashable) -> str:
        letter = self.state.dead_letter(key)
        return letter.reason if letter is not None else "lease expired"

    def _metrics_locked(self, now: float) -> dict[str, Any]:
        counts = self.state.counts()
        total, done = counts["total"], counts["done"]
        samples = self._rate_samples
        rate = 0.0
        if samples and now - samples[0][0] > 0:
            rate = (done - samples[0][1]) / (now - samples[0][0])
        return {
            "name": self.name, "total": total, "done": done,
            "pending": counts["pending"], "in_flight": counts["leased"],
            "dead": counts["dead"], "failed": counts["failed"],
            "expired": counts["expired"], "redelivered": counts["redelivered"],
            "duplicates": counts["duplicate_adds"] + counts["duplicate_acks"],
            "workers": sum(1 for t in self._seen.values() if now - t <= ACTIVE),
            "waiting": len(self._waiters), "rate": rate,
            "progress": (done + counts["dead"]) / total if total else 0.0,
            "listed": self._listed,
            "scaling": self._advice.as_dict() if self._advice is not None else None,
        }
