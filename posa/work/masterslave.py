"""Master-Slave: one call from the client, the work divided among named slaves.

The ``Master`` gives the client one interface, ``run(job)``: it splits the job
into subtasks (a split strategy), hands them to the slaves it finds by name or
group pattern, collects their answers and derives the result (a merge
strategy). A ``Slave`` is a peer whose handler runs ``work(subtask)`` on a
worker thread and replies when it is done. Neither the client nor the slaves
know how the job is divided, how many slaves there are, or where they run
(threads of this process or processes elsewhere: only names are used).

Variants (see ``posa.work.jobstate``): partition (``replicas=1``: each slave a part,
the master waits for all), redundancy (``replicas=r`` or ``None`` for all: the
same subtask to several slaves, the answer by a vote — ``majority``, ``first``,
``Mean`` — and the dissenting slaves reported in the ``Outcome``).

Hedging: with a vote that needs fewer answers than replicas (``first``), every
replica gets a copy — at once (``hedge=0``, the default), after ``hedge``
seconds, or after the given percentile of the recent subtask times
(``hedge="p95"``) — and the first answer decides; later answers are ignored
and counted (``Outcome.hedged``, ``metrics["ignored"]``). Slaves are not
interrupted: a copy that lost the race finishes and its answer is dropped.

Strategy: the master keeps *lanes*, one thread per slave (``per_slave`` if a
slave computes several subtasks at once), each sending through a forwarder of
its own, one request at a time. Lanes outlive a job, so connections are reused;
a lane whose slave died ends, and the slave (by name and registration epoch)
is left out of later jobs until it registers anew. Lanes take subtasks from the
job's ``JobState`` under one condition variable; a dead or timed-out slave's
subtasks go to the other lanes, and idle lanes run backup copies of subtasks
still running elsewhere, so a hung slave delays a job by little, not by its
timeout.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from posa.delivery.sender import Sender
from posa.errors import Closed, NameNotFound, PosaError, Timeout, TransportError
from posa.naming.registration import Registration, Registry, resolver
from posa.naming.resolve import open_registry
from posa.wire.names import is_pattern
from posa.work.jobstate import JobState, Mean, Vote, first, majority
from posa.work.slave import Slave

__all__ = ["Slave", "Master", "Outcome", "split_chunks", "split_whole", "merge_concat",
           "merge_first", "majority", "first", "Mean"]

log = logging.getLogger("posa.work.masterslave")

_GONE = (Timeout, TransportError, NameNotFound)   # the slave died, left or hangs


# -- strategies --------------------------------------------------------------------
def split_chunks(job: Sequence[Any], n: int) -> list[list[Any]]:
    """``job`` (a sequence) cut into ``n`` contiguous parts of near-equal size."""
    items = list(job)
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    parts, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        parts.append(items[start:end])
        start = end
    return parts


def split_whole(job: Any, n: int) -> list[Any]:
    """The whole job as the one subtask (for redundancy: every replica computes it)."""
    return [job]


def merge_concat(results: Sequence[Sequence[Any]]) -> list[Any]:
    """The answers (sequences) joined in subtask order."""
    return [item for part in results for item in part]


def merge_first(results: Sequence[Any]) -> Any:
    """The answer of the only subtask."""
    return results[0]


# -- master ------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """A job's result and how it came about. With ``partial=True`` and a deadline
    that passed, ``result`` is None, ``missing`` names the undecided subtasks and
    ``partial`` holds the decided ones (subtask index -> value)."""

    result: Any
    subtasks: int
    dissenters: dict[str, list[int]] = field(default_factory=dict)  # slave -> subtasks
    reassigned: int = 0          # slaves lost mid-job (their subtasks went elsewhere)
    backups: int = 0             # backup copies run for subtasks running elsewhere
    answers: dict[str, int] = field(default_factory=dict)           # slave -> answers
    elapsed: float = 0.0
    hedged: int = 0              # extra copies sent by hedging (vote=first)
    ignored: int = 0             # answers that came after their subtask was decided
    missing: list[int] = field(default_factory=list)                # undecided subtasks
    partial: dict[int, Any] = field(default_factory=dict)           # decided, if missing

    @property
    def complete(self) -> bool:
        return not self.missing


def _hedge_delay(hedge: float | str | None) -> Callable[[Sequence[float]], float | None]:
    """``hedge`` as a function of the recent subtask times: the delay before the
    other replicas' copies go out (0: at once, None: never)."""
    if hedge is None or isinstance(hedge, (int, float)):
        if hedge is not None and hedge < 0:
            raise ValueError("hedge must be a delay in seconds >= 0, 'pNN' or None")
        fixed = None if hedge is None else float(hedge)
        return lambda times: fixed
    if not (hedge.startswith("p") and hedge[1:].isdigit() and 0 < int(hedge[1:]) < 100):
        raise ValueError(f"hedge={hedge!r}: give a delay in seconds, a percentile of "
                         "the recent subtask times such as 'p95', or None")
    rank = int(hedge[1:]) / 100

    def percentile(times: Sequence[float]) -> float | None:
        if not times:
            return 0.0                   # nothing observed yet: hedge at once
        ordered = sorted(times)
        return ordered[min(len(ordered) - 1, int(rank * len(ordered)))]
    return percentile


class Master:
    """Runs jobs on the slaves named by ``slaves`` (a group pattern such as
    ``work/tsp/*``, or a list of names), looked up in ``registry`` at each job.

    ``split(job, n_slaves) -> subtasks`` and ``merge(answers) -> result`` are
    the strategies; ``replicas`` (1, r, or None for every slave) and ``vote``
    choose partition or redundancy; ``hedge`` (seconds, ``"p95"`` or None) when
    the other replicas of a ``first`` vote get their copies. ``timeout`` bounds
    one subtask on one slave: past it, the slave counts as dead. A subtask whose
    work raises is tried on another slave, ``attempts`` times in all.
    ``on_progress(done, total)`` is called as subtasks are decided; ``metrics``
    holds the same and totals. One job runs at a time per master (``run`` from
    several threads queues up).
    """

    def __init__(self, slaves: str | Sequence[str] = "work/*", *,
                 registry: Registry | None = None,
                 split: Callable[[Any, int], Sequence[Any]] = split_chunks,
                 merge: Callable[[Sequence[Any]], Any] = merge_concat,
                 replicas: int | None = 1, vote: Vote | None = None,
                 timeout: float = 30.0, attempts: int = 3, per_slave: int = 1,
                 backups: bool = True, hedge: float | str | None = 0.0,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.slaves = slaves
        self.registry, _ = open_registry(registry)
        self.split = split
        self.merge = merge
        self.replicas = replicas
        self.vote = vote
        self.timeout = timeout
        self.attempts = attempts
        self.per_slave = per_slave
        self.backups = backups
        self.hedge = _hedge_delay(hedge)
        self.on_progress = on_progress
        self.metrics: dict[str, Any] = {"jobs": 0, "done": 0, "total": 0,
                                        "reassigned": 0, "backups": 0, "dissents": 0,
                                        "hedged": 0, "ignored": 0, "partial": 0}
        self.sender = Sender("", resolve=resolver(self.registry))
        self._cond = threading.Condition()
        self._job: JobState | None = None
        self._lanes: dict[str, list[threading.Thread]] = {}
        self._dead: dict[str, tuple[int, float]] = {}   # slave -> (epoch, until)
        self._registrations: dict[str, Registration] = {}
        self._times: deque[float] = deque(maxlen=200)   # recent subtask times
        self._run_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()     # a forked child's copy: its lanes and lock the parent's

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, job: Any, *, timeout: float | None = None) -> Any:
        """The merged result of ``job``. Raises ``NameNotFound`` (no slaves),
        ``Timeout`` (``timeout`` for the whole job passed), or the error that
        failed it (a subtask that failed on every attempt, no majority ...)."""
        return self.execute(job, timeout=timeout).result

    def execute(self, job: Any, *, timeout: float | None = None,
                partial: bool = False) -> Outcome:
        """Like ``run``, with the details: dissenters, reassignments, backups.
        With ``partial``, a ``timeout`` that passes returns the subtasks decided
        so far (``Outcome.partial``, ``Outcome.missing``) instead of raising."""
        with self._run_lock:
            if self._closed:
                raise Closed("this master is closed")
            started = time.monotonic()
            deadline = None if timeout is None else started + timeout
            slaves = self._discover()
            with self._cond:
                delay = self.hedge(list(self._times))
            state = JobState(self.split(job, len(slaves)), slaves, replicas=self.replicas,
                             vote=self.vote, max_attempts=self.attempts,
                             backups=self.backups, hedge=delay)
            timed_out = self._follow(state, slaves, deadline, timeout, partial)
            with self._cond:                    # late answers may still come in
                outcome = self._account(state, timed_out)
                results = None if timed_out else state.results()
            if results is None:
                return replace(outcome, elapsed=time.monotonic() - started)
            self._report(outcome.subtasks, outcome.subtasks)
            return replace(outcome, result=self.merge(results),
                           elapsed=time.monotonic() - started)

    def _account(self, state: JobState, timed_out: bool) -> Outcome:
        """Add a finished (or timed-out) job to ``metrics``; its outcome so far."""
        m = self.metrics
        m["jobs"] += 1
        m["reassigned"] += state.reassigned
        m["backups"] += state.backup_runs
        m["hedged"] += state.hedged
        m["dissents"] += sum(len(v) for v in state.dissenters.values())
        outcome = Outcome(None, len(state.tasks), dict(state.dissenters), state.reassigned,
                          state.backup_runs, dict(state.answered),
                          hedged=state.hedged, ignored=state.late)
        if not timed_out:
            return outcome
        m["partial"] += 1
        decided = {i: t.value for i, t in enumerate(state.tasks) if t.decided}
        return replace(outcome, partial=decided,
                       missing=[i for i in range(len(state.tasks)) if i not in decided])

    def _follow(self, state: JobState, slaves: list[str], deadline: float | None,
                timeout: float | None, partial: bool) -> bool:
        """Hand ``state`` to the lanes and wait until it is finished (False) or the
        deadline passed (True with ``partial``, else ``Timeout``)."""
        total = len(state.tasks)
        with self._cond:
            self._job = state
            for slave in slaves:
                self._ensure_lanes(slave)
            self._cond.notify_all()
            reported = -1
            try:
                while not state.finished:
                    done = state.progress()[0]
                    if done != reported:
                        reported = done
                        self._report(done, total)
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        if partial:
                            return True
                        raise Timeout(f"the job did not finish within {timeout} s: "
                                      f"{done} of {total} subtasks decided (pass "
                                      "partial=True to execute for what was decided)")
                    self._cond.wait(wait)
            finally:
                self._job = None
        return False

    def close(self) -> None:
        """Let the lanes finish their current request and end. Idempotent.

        In a forked child the lanes are the parent's threads (not in the child) and
        a lane of the parent may have held the master's lock at the fork: closing
        there takes no lock, waits for no lane, and closes the child's copies of
        the sender's connections (``Sender.close``)."""
        if self._pid != os.getpid():
            self._closed = True
            self.sender.close()
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            lanes = [lane for group in self._lanes.values() for lane in group]
        deadline = time.monotonic() + self.timeout + 1.0    # a lane ends within a request
        for lane in lanes:
            lane.join(max(0.0, deadline - time.monotonic()))
        self.sender.close()

    # -- internals ---------------------------------------------------------------
    def _report(self, done: int, total: int) -> None:
        self.metrics["done"], self.metrics["total"] = done, total
        if self.on_progress is not None:
            try:
                self.on_progress(done, total)
            except Exception:
                log.exception("master: on_progress raised")

    def _discover(self) -> list[str]:
        if isinstance(self.slaves, str) and is_pattern(self.slaves):
            found = self.registry.names(self.slaves)
        else:
            names = [self.slaves] if isinstance(self.slaves, str) else list(self.slaves)
            found = []
            for name in names:
                try:
                    found.append(self.registry.lookup(name))
                except NameNotFound:
                    continue
        live = []
        now = time.monotonic()
        for registration in found:
            dead = self._dead.get(registration.name)
            if dead is not None and dead[0] == registration.epoch and now < dead[1]:
                continue                # seen dead with this registration, still unexpired
            self._dead.pop(registration.name, None)
            self._registrations[registration.name] = registration
            live.append(registration.name)
        if not live:
            raise NameNotFound(f"no live slave matches {self.slaves!r}; start slaves "
                               "(posa.Slave) under that name, with the same registry")
        return live

    def _ensure_lanes(self, slave: str) -> None:
        lanes = [lane for lane in self._lanes.get(slave, ()) if lane.is_alive()]
        while len(lanes) < self.per_slave:
            lane = threading.Thread(target=self._lane, args=(slave,),
                                    name=f"posa-master-lane-{slave}", daemon=True)
            lanes.append(lane)
            lane.start()
        self._lanes[slave] = lanes

    def _lane(self, slave: str) -> None:
        """One slave's lane: take a subtask, request it, report; until the slave
        is found dead or the master closes."""
        try:
            while (taken := self._take(slave)) is not None:
                state, index, subtask = taken
                failure: PosaError | None = None
                sent = time.monotonic()
                try:
                    answer = self.sender.request(slave, subtask, timeout=self.timeout,
                                                 failfast=True).body
                except _GONE as exc:
                    log.info("master: slave %s lost on subtask %d (%s); reassigning",
                             slave, index, exc)
                    with self._cond:
                        self._quarantine(slave)
                        state.failed(slave, index, exc, dead=True)
                        self._cond.notify_all()
                    return
                except PosaError as exc:
                    failure = exc
                with self._cond:
                    if failure is None:
                        now, late = time.monotonic(), state.late
                        self._times.append(now - sent)
                        state.succeeded(slave, index, answer, now)
                        self.metrics["ignored"] += state.late - late
                    else:
                        state.failed(slave, index, failure, dead=False)
                    self._cond.notify_all()
        finally:
            try:
                self.sender.forget(slave)           # this lane's connection to it
            except PosaError:
                pass

    def _take(self, slave: str) -> tuple[JobState, int, Any] | None:
        """The next subtask for ``slave``'s lane (waiting for a job, or for a
        backup to fall due), with its job; None once the lane is to end."""
        with self._cond:
            while True:
                state = self._job
                if self._closed or (state is not None and slave not in state.live):
                    return None
                if state is None:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                task = state.take(slave, now)
                if task is not None:
                    return state, task[0], task[1]
                due = state.backup_due()
                self._cond.wait(None if due is None else max(0.001, due - now))

    def _quarantine(self, slave: str) -> None:
        """Leave ``slave`` out of jobs while the registration seen dead may live."""
        registration = self._registrations.get(slave)
        if registration is not None:
            self._dead[slave] = (registration.epoch,
                                 time.monotonic() + registration.lease)
