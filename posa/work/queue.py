"""Work queue: every item processed once, by whichever worker is free.

The roles of the work-queue pattern, on posa peers:

- a **source** lists the items there are to process and fetches one
  (``Source.items()`` / ``Source.fetch(key)``); producers may also put items in
  directly (``submit``);
- the **queue manager**, ``WorkQueue``, is a peer: it keeps what is pending, in
  progress, done or given up (``posa.work.state.WorkState``), hands items out on
  request and takes them back when a lease runs out;
- **workers**, ``Worker``, are peers that compete for items by asking the queue
  for the next one; the executor, ``work(item)``, processes one item.

Protocol (requests to the queue's name; every body is a map):

    op       request fields                           reply
    next     max, wait, done: [[key, result, secs]],   {"items": [[key, token, attempt,
             failed: [[key, token, reason]]            data]], "visibility": secs}
    put      items: [[key, data]]                      {"accepted": n, "added": m}
    extend   leases: [[key, token]]   (one-way send)   -
    wake     -                        (one-way send)   answers the sender's held ``next``
    metrics  -                                         the metrics dict
    dead     -                                         [[key, attempts, reason]]

A worker's acknowledgements ride on its request for the next items, so a busy
worker costs one round trip per item (or per ``prefetch`` items). With nothing
pending, the queue holds a ``next`` request for up to ``wait`` seconds and
answers it as soon as an item comes (a long poll: no busy polling). ``put``
takes the items that fit (``accepted``; ``added`` of them were new, the others
duplicates of known keys) and leaves the rest to be sent again.

Strategy: the state is touched under one lock, briefly, by the request handler
(on the reactor thread), by the reactor timer that expires leases and held
requests, and by the source thread that lists and fetches; replies and user
callbacks run after the lock is released. Completion is idempotent (the first
acknowledgement of a key wins; later ones are counted as duplicates), so a
worker that dies after finishing but before acknowledging costs a second
execution, never a second completion.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

from posa.errors import Closed, PosaError, Rejected, Timeout
from posa.naming.registry import Registry
from posa.peer import DEFERRED, Peer
from posa.wire.codec import Message
from posa.work.state import DEAD, DONE, PENDING, Recommendation, ScalingAdvisor, WorkState

__all__ = ["Item", "Source", "ListSource", "DirectorySource", "WorkQueue", "Worker",
           "submit", "finished", "progress_bar", "render_progress", "add_parser", "run"]

log = logging.getLogger("posa.work.queue")

TICK = 0.05             # seconds between lease-expiry checks
ACTIVE = 10.0           # a worker seen within this many seconds counts as active


@dataclass(frozen=True)
class Item:
    """What an executor gets: the item's ``key``, its ``data`` and which
    delivery this is (``attempt`` 1 first, more after a failure or a lost lease)."""

    key: str
    data: Any
    attempt: int


class Source(Protocol):
    """Where a queue's items come from (the application's side of the queue)."""

    def items(self) -> Iterable[str]:
        """The keys of every item there is to process now (done ones may stay
        listed: the queue remembers what it has done)."""

    def fetch(self, key: str) -> Any:
        """The data of item ``key`` (msgpack data), handed to the executor."""


class ListSource:
    """Items held in memory: a mapping of key -> data, or a sequence whose keys
    are the positions as decimal strings ("0", "1", ...)."""

    def __init__(self, items: Mapping[str, Any] | Sequence[Any]) -> None:
        self._items = (dict(items) if isinstance(items, Mapping)
                       else {str(i): data for i, data in enumerate(items)})

    def items(self) -> Iterable[str]:
        return list(self._items)

    def fetch(self, key: str) -> Any:
        return self._items[key]


class DirectorySource:
    """The files in a directory matching ``pattern``: key = file name, data =
    {"path": absolute path, "size": bytes}. A file that appears later is
    picked up at the queue's next refresh."""

    def __init__(self, directory: str | os.PathLike[str], pattern: str = "*") -> None:
        self.directory = Path(directory).resolve()
        self.pattern = pattern

    def items(self) -> Iterable[str]:
        return sorted(p.name for p in self.directory.glob(self.pattern) if p.is_file())

    def fetch(self, key: str) -> Any:
        path = self.directory / key
        return {"path": str(path), "size": path.stat().st_size}


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
        self.peer = Peer(name, registry=registry, listen=listen)
        self.name = self.peer.name
        self._timer = self.peer.reactor.call_every(TICK, self._tick)
        self.peer.serve(self._handle)
        self._stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        if source is not None:
            self._source_thread = threading.Thread(
                target=self._poll_source, args=(source, refresh),
                name=f"posa-source-{name}", daemon=True)
            self._source_thread.start()

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
        self._stop.set()
        self._timer.cancel()
        for msg, _, _ in waiters:
            self._reply_items(msg, [])
        if self._source_thread is not None:
            self._source_thread.join(5.0)
        self.peer.close()

    # -- the request handler (reactor thread) -----------------------------------
    def _handle(self, msg: Message) -> Any:
        body = msg.body
        op = body.get("op") if isinstance(body, dict) else None
        if op == "next":
            return self._next(msg, body)
        if op == "put":
            items = body.get("items")
            if not isinstance(items, list) or not all(
                    isinstance(i, list) and len(i) == 2 and isinstance(i[0], str)
                    for i in items):
                raise Rejected("put needs items: [[key (str), data], ...]")
            accepted, added = self._put(items)
            return {"accepted": accepted, "added": len(added)}
        if op == "extend":
            now = time.monotonic()
            with self._lock:
                for key, token in _pairs(body.get("leases")):
                    self.state.extend(key, token, now)
            return None
        if op == "wake":
            self._wake(msg.sender)
            return None
        if op == "metrics":
            return self.metrics()
        if op == "dead":
            return [[key, attempts, reason] for key, _, attempts, reason in self.dead_letters()]
        raise Rejected(f"unknown work-queue operation {op!r}; use next, put, extend, "
                       "wake, metrics or dead")

    def _next(self, msg: Message, body: dict[str, Any]) -> Any:
        now = time.monotonic()
        completed: list[tuple[str, Any]] = []
        dead: list[tuple[str, str]] = []
        max_items = _bounded(body.get("max"), 1, 0, 10_000)
        wait = min(_bounded(body.get("wait"), 0.0, 0.0, 3600.0),
                   msg.headers.get("ttl", 0) / 1000.0)
        with self._lock:
            if self._closed:
                raise Closed(f"the work queue {self.name!r} is closing")
            self._seen[msg.sender] = now
            returned = False
            for entry in body.get("done") or ():
                if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str):
                    key, result, seconds = entry
                    if self.state.ack(key) == DONE:
                        completed.append((key, result))
                        if isinstance(seconds, (int, float)):
                            self.advisor.observe_processing(seconds)
            for entry in body.get("failed") or ():
                if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str):
                    key, token, reason = entry
                    outcome = self.state.fail(key, token, str(reason))
                    returned = returned or outcome == PENDING
                    if outcome == DEAD:
                        dead.append((key, str(reason)))
            leases = self.state.lease(msg.sender, now, max_items) if max_items else []
            held = not leases and max_items > 0 and wait > 0
            if held:
                self._waiters.append((msg, max_items, now + wait))
            replies = self._serve_waiters_locked(now) if returned else []
            self._changed.notify_all()
        self._after(completed, replies, dead)
        if held:
            return DEFERRED
        return {"items": [[lease.key, lease.token, lease.attempt, lease.data]
                          for lease in leases],
                "visibility": self.state.visibility}

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

    def _wake(self, worker: str) -> None:
        """Answer ``worker``'s held request now (it is stopping)."""
        with self._lock:
            mine = [w for w in self._waiters if w[0].sender == worker]
            for waiter in mine:
                self._waiters.remove(waiter)
        for msg, _, _ in mine:
            self._reply_items(msg, [])

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
            self.peer.reply(msg, {"items": items, "visibility": self.state.visibility})
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

    def _last_reason(self, key: str) -> str:
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

    # -- the source (its own thread: listing and fetching may block) -------------
    def _poll_source(self, source: Source, refresh: float) -> None:
        while not self._stop.is_set():
            try:
                keys = list(source.items())
            except Exception:
                log.exception("queue %s: listing the source failed; retrying in %s s",
                              self.name, refresh)
                keys = []
            for key in keys:
                with self._changed:
                    while (not self._closed and self.state.status(key) is None
                           and self.state.room() <= 0):
                        self._changed.wait(1.0)      # full: wait for completions
                    if self._closed:
                        return
                    if self.state.status(key) is not None:
                        continue                     # known: queued, done or dead
                try:
                    data = source.fetch(key)
                except Exception:
                    log.exception("queue %s: fetching %r failed; retrying at the next "
                                  "refresh", self.name, key)
                    continue
                try:
                    self._put([[key, data]])
                except Closed:
                    return
            with self._lock:
                self._listed = True
                self._changed.notify_all()
            self._stop.wait(refresh)


def _pairs(value: Any) -> list[tuple[str, int]]:
    if not isinstance(value, list):
        return []
    return [(v[0], v[1]) for v in value
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]


def _bounded(value: Any, default: Any, low: Any, high: Any) -> Any:
    """``value`` clamped to [low, high] if it is a number of default's type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return type(default)(min(max(value, low), high))


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
    """

    def __init__(self, name: str, queue: str, work: Callable[[Item], Any], *,
                 registry: Registry | None = None, listen: str | None = None,
                 prefetch: int = 1, wait: float = 1.0, timeout: float = 5.0) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.queue = queue
        self.work = work
        self.prefetch = prefetch
        self.wait = wait
        self.timeout = timeout
        self.stats = {"processed": 0, "failed": 0}
        self.peer = Peer(name, registry=registry, listen=listen)
        self.name = self.peer.name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[str, int] = {}          # key -> lease token, for heartbeats
        self._visibility = 30.0                     # until the queue tells its own

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

    def close(self, timeout: float = 10.0) -> None:
        """Stop, wait up to ``timeout`` for the items in hand, close the peer."""
        self.stop()
        if self._thread is not None:
            if self._thread.is_alive():
                try:                                # cut short a request held empty
                    self.peer.send(self.queue, {"op": "wake"}, timeout=1.0)
                except PosaError:
                    pass
            self._thread.join(timeout)
        self.peer.close()

    def _next(self, want: int, done: list[list[Any]],
              failed: list[list[Any]]) -> list[list[Any]] | None:
        try:
            reply = self.peer.request(
                self.queue, {"op": "next", "max": want, "wait": self.wait, "done": done,
                             "failed": failed}, timeout=self.wait + self.timeout)
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
            self.peer.request(self.queue, {"op": "next", "max": 0, "done": done,
                                           "failed": failed}, timeout=self.timeout)
        except PosaError as exc:
            log.warning("worker %s: %d acknowledgement(s) not delivered (%s); those "
                        "items will be processed again", self.name, len(done), exc)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self._visibility / 3):
            leases = [[key, token] for key, token in list(self._running.items())]
            if leases:
                try:
                    self.peer.send(self.queue, {"op": "extend", "leases": leases},
                                   timeout=self._visibility / 3)
                except PosaError as exc:
                    log.info("worker %s: extending leases failed: %s", self.name, exc)


def submit(peer: Peer, queue: str, items: Mapping[str, Any] | Iterable[tuple[str, Any]],
           *, timeout: float = 30.0, batch: int = 500) -> int:
    """Put items (key -> data) into the queue named ``queue``, sending through
    ``peer``; returns how many were new (known keys are ignored, so submitting
    again is harmless). Waits while the queue is full; raises ``Timeout`` if
    everything is not accepted within ``timeout`` seconds."""
    pairs = [[key, data] for key, data in
             (items.items() if isinstance(items, Mapping) else items)]
    deadline = time.monotonic() + timeout
    added = sent = 0
    delay = 0.01
    while sent < len(pairs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"{queue!r} accepted {sent} of {len(pairs)} items within "
                          f"{timeout} s; it is full: add workers or raise its capacity")
        chunk = pairs[sent:sent + batch]
        reply = peer.request(queue, {"op": "put", "items": chunk}, timeout=remaining)
        sent += reply["accepted"]
        added += reply["added"]
        if reply["accepted"] < len(chunk):
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))  # back off
            delay = min(delay * 2, 0.5)
        else:
            delay = 0.01
    return added


# -- progress ----------------------------------------------------------------------
def finished(metrics: Mapping[str, Any]) -> bool:
    """Whether a queue's metrics show every item finished (none pending or in
    flight, and its source listed at least once)."""
    return bool(metrics["listed"]) and metrics["pending"] == 0 and metrics["in_flight"] == 0


def progress_bar(done: int, total: int, *, width: int = 30) -> str:
    """``[####......] done/total pct``: a job's progress (a master's subtasks,
    a queue's items) as text."""
    fraction = min(done / total, 1.0) if total else 0.0
    return f"{_bar(fraction, width)} {done}/{total} {fraction:.0%}"


def render_progress(metrics: Mapping[str, Any], *, width: int = 30) -> str:
    """One line for a queue: a bar of items finished (done or dead) of the
    total, the count done, the rate, the time left at that rate, items in
    flight, workers and dead letters."""
    total = metrics["total"]
    finished = metrics["done"] + metrics["dead"]
    fraction = finished / total if total else 0.0
    rate = metrics.get("rate") or 0.0
    left = total - finished
    eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
    return (f"{metrics['name']} {_bar(fraction, width)} {metrics['done']}/{total} "
            f"{fraction:.0%} {rate:.0f}/s eta {eta} in flight {metrics['in_flight']} "
            f"workers {metrics['workers']} dead {metrics['dead']}")


def _bar(fraction: float, width: int) -> str:
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``posa progress QUEUE``: a work queue's progress as a bar, until done."""
    p = subparsers.add_parser(
        "progress", help="show a work queue's progress (items done/total) as a bar",
        description="Poll a work queue's metrics and draw a progress bar until every "
        "item it holds is finished (done or dead-lettered), or once with --once.")
    p.add_argument("queue", help="the work queue's name, e.g. work/thumbnails")
    p.add_argument("--dispatcher", default="tcp://127.0.0.1:7000", metavar="ADDRESS",
                   help="the dispatcher to ask (default tcp://127.0.0.1:7000)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
    p.add_argument("--once", action="store_true", help="print one line and exit")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON lines")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The ``posa progress`` command; returns the exit code (0 when finished)."""
    import json

    from posa.delivery.forwarder import Sender
    from posa.naming.client import RegistryClient

    with RegistryClient(args.dispatcher, timeout=args.timeout) as registry:
        sender = Sender("", resolve=lambda name, fresh: _resolve(registry, name, fresh))
        ticker = threading.Event()
        redraw = sys.stdout.isatty() and not args.json
        try:
            while True:
                metrics = sender.request(args.queue, {"op": "metrics"},
                                         timeout=args.timeout).body
                line = json.dumps(metrics, sort_keys=True) if args.json else (
                    render_progress(metrics))
                last = args.once or (finished(metrics) and metrics["total"] > 0)
                sys.stdout.write(("\r" + line + ("\n" if last else "")) if redraw
                                 else line + "\n")
                sys.stdout.flush()
                if last:
                    return 0
                ticker.wait(args.interval)
        finally:
            sender.close()


def _resolve(registry: Registry, name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
    if fresh:
        forget = getattr(registry, "forget", None)      # a caching registry
        if forget is not None:
            forget(name)
    registration = registry.lookup(name)
    return registration.addresses, registration.epoch
