"""An autoscaler: local worker processes started and stopped from a queue's backlog.

``ScaleRule`` (sans-IO) decides how many workers a queue should have from its
metrics (``WorkQueue.metrics``): the backlog — items waiting and in hand, at
most ``per_worker`` per worker — and the age of the oldest waiting item: older
than ``max_age`` seconds, the pool does not keep up and gets one worker more
(the work-queue pattern's rule: size the pool so that items do not wait). It
scales up at once and down only after the queue has had nothing waiting for
``cooldown`` seconds, always within ``minimum`` and ``maximum``.

``Autoscaler`` applies it every ``interval`` seconds to a queue it asks for
metrics by name, starting the program ``argv`` (``posa worker --queue NAME --
COMMAND ...``, or any worker program) as a local process per worker, and
stopping the newest ones with SIGTERM (a ``posa worker`` then finishes and
acknowledges the items it holds and exits; one still running ``grace``
seconds later is killed). Each decision is logged, kept (``decisions``) and
exported (``stats``, ``gauges()`` for ``posa.ops.Monitor``).
"""
from __future__ import annotations

import logging
import math
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.delivery.sender import Sender
from posa.errors import PosaError
from posa.naming.registration import Registry, resolver
from posa.naming.resolve import open_registry
from posa.work.protocol import QUEUE

__all__ = ["ScaleRule", "Decision", "Autoscaler"]

log = logging.getLogger("posa.work.autoscale")


@dataclass(frozen=True)
class Decision:
    """How many workers to run, from how many, and why (``reason`` is for people)."""

    at: float
    current: int
    target: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "current": self.current, "target": self.target,
                "reason": self.reason}


class ScaleRule:
    """The number of workers for a queue's metrics (sans-IO: the time is given)."""

    def __init__(self, *, minimum: int = 1, maximum: int = 4, per_worker: int = 1,
                 max_age: float = 5.0, cooldown: float = 10.0) -> None:
        if not 0 <= minimum <= maximum or maximum < 1:
            raise ValueError(f"need 0 <= min <= max and max >= 1 (got min {minimum}, "
                             f"max {maximum})")
        if per_worker < 1 or max_age <= 0 or cooldown < 0:
            raise ValueError("per_worker must be >= 1, max_age > 0 and cooldown >= 0")
        self.minimum, self.maximum = minimum, maximum
        self.per_worker, self.max_age, self.cooldown = per_worker, max_age, cooldown
        self._quiet_since: float | None = None      # nothing waiting since then

    def decide(self, current: int, metrics: Mapping[str, Any], now: float) -> Decision:
        pending, in_flight = int(metrics["pending"]), int(metrics["in_flight"])
        oldest = float(metrics.get("oldest_age", 0.0))
        by_depth = math.ceil((pending + in_flight) / self.per_worker)
        want = by_depth
        if pending and oldest > self.max_age:
            want = max(want, current + 1)
        want = min(max(want, self.minimum), self.maximum)
        if pending:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        if want > current:
            return Decision(now, current, want,
                            f"scale up: {pending} waiting + {in_flight} in hand, the "
                            f"oldest waiting {oldest:.3g} s (max {self.max_age:g} s)")
        if want < current and self._quiet_since is not None \
                and now - self._quiet_since >= self.cooldown:
            return Decision(now, current, want,
                            f"scale down: nothing waiting for {now - self._quiet_since:.3g}"
                            f" s, {in_flight} in hand")
        return Decision(now, current, current, "steady")


class Autoscaler:
    """Keeps between ``minimum`` and ``maximum`` processes of ``argv`` running for the
    work queue ``queue`` (see the module). ``start()``, then ``close()``."""

    def __init__(self, queue: str, argv: Sequence[str], *, registry: Registry | None = None,
                 dispatcher: str | None = None, rule: ScaleRule | None = None,
                 interval: float = 1.0, grace: float = 30.0, history: int = 100,
                 env: Mapping[str, str] | None = None,
                 authenticator: Authenticator | None = None) -> None:
        if not argv:
            raise ValueError("give the worker program to start, e.g. "
                             "['posa', 'worker', '--queue', NAME, '--', 'wc', '-c']")
        self.queue, self.argv = queue, list(argv)
        self.rule = rule or ScaleRule()
        self.interval, self.grace = interval, grace
        self.name = f"{queue}/autoscaler"
        self.registry, self._owns = open_registry(registry, dispatcher)
        self.sender = Sender("", resolve=resolver(self.registry), authenticator=authenticator)
        self.env = None if env is None else dict(env)
        self.running: list[subprocess.Popen[bytes]] = []
        self.stopping: list[tuple[subprocess.Popen[bytes], float]] = []
        self.decisions: deque[Decision] = deque(maxlen=history)
        self.stats = {"scale_ups": 0, "scale_downs": 0, "started": 0, "stopped": 0,
                      "killed": 0, "metrics_failed": 0}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"posa-autoscale-{queue}",
                                        daemon=True)

    def start(self) -> Autoscaler:
        self._thread.start()
        return self

    def gauges(self) -> dict[str, float]:
        """For ``/metrics``: workers running, stopping, and the last target."""
        with self._lock:
            target = self.decisions[-1].target if self.decisions else len(self.running)
            return {"autoscale_workers": float(len(self.running)),
                    "autoscale_stopping": float(len(self.stopping)),
                    "autoscale_target": float(target)}

    def step(self, now: float) -> Decision | None:
        """One look at the queue and one decision applied (the loop calls it)."""
        self._reap(now)
        try:
            metrics = self.sender.request(self.queue, QUEUE.request("metrics"),
                                          timeout=max(1.0, self.interval)).body
        except PosaError as exc:
            self.stats["metrics_failed"] += 1
            log.info("autoscaler %s: no metrics from the queue (%s); keeping %d worker(s)",
                     self.queue, exc, len(self.running))
            return None
        decision = self.rule.decide(len(self.running), metrics, now)
        if decision.target != decision.current:
            self._apply(decision)
        return decision

    def _apply(self, decision: Decision) -> None:
        log.info("autoscaler %s: %d -> %d worker(s): %s", self.queue, decision.current,
                 decision.target, decision.reason)
        with self._lock:
            self.decisions.append(decision)
            up = decision.target > decision.current
            self.stats["scale_ups" if up else "scale_downs"] += 1
            while len(self.running) < decision.target:
                self.running.append(subprocess.Popen(self.argv, env=self.env,
                                                     stdin=subprocess.DEVNULL,
                                                     stdout=subprocess.DEVNULL))
                self.stats["started"] += 1
            while len(self.running) > decision.target:
                proc = self.running.pop()            # the newest first
                _signal(proc, signal.SIGTERM)
                self.stopping.append((proc, decision.at + self.grace))

    def _reap(self, now: float) -> None:
        with self._lock:
            for proc in [p for p in self.running if p.poll() is not None]:
                log.warning("autoscaler %s: worker pid %d exited (%s); replacing it",
                            self.queue, proc.pid, proc.returncode)
                self.running.remove(proc)
            left = []
            for proc, until in self.stopping:
                if proc.poll() is not None:
                    self.stats["stopped"] += 1
                    continue
                if now >= until:
                    _signal(proc, signal.SIGKILL)
                    self.stats["killed"] += 1
                left.append((proc, until))
            self.stopping = left

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(time.monotonic())
            except Exception:
                log.exception("autoscaler %s: a step failed", self.queue)
            self._stop.wait(self.interval)

    def close(self) -> None:
        """Stop deciding; SIGTERM every worker, kill those still running after
        ``grace`` seconds. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 30.0)
        with self._lock:
            procs = self.running + [proc for proc, _ in self.stopping]
            self.running, self.stopping = [], []
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        self.sender.close()
        if self._owns:
            self.registry.close()

    def __enter__(self) -> Autoscaler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
