"""The master's schedule for one job, and the voting strategies (sans-IO).

``JobState`` decides which slave computes which subtask, takes the answers and
failures back, and says when the job is finished. The master drives it from its
threads under one lock; tests drive it directly with any order of events.

- **Partition** (``replicas=1``): each subtask goes to one slave; the job is
  finished when every subtask has its answer.
- **Redundancy** (``replicas=r`` or ``None`` for every slave): each subtask goes
  to ``r`` different slaves and a ``Vote`` turns their answers into one
  (majority, first, mean), naming the slaves that disagreed (dissenters).
- A slave that dies or times out (``failed(..., dead=True)``) is dropped and its
  subtasks go to other slaves (*reassigned*). A subtask whose work raised is
  tried on another slave, up to ``max_attempts`` times, then fails the job.
- A slave with nothing left to do may take a *backup* copy of a subtask that
  has run elsewhere for ``backup_factor`` times the mean subtask time of the
  job so far (``backups=True``): whichever answer comes first counts, so a hung
  slave does not hold the job up until its timeout. Answers are assumed
  deterministic per subtask, so the result is the same either way.
- When there are fewer usable slaves than replicas wanted, the vote is taken
  over the answers that can still come (never fewer than one).
- **Hedging**: a vote that needs fewer answers than there are replicas (``first``)
  still sends every replica a copy: at once (``hedge=0``), or ``hedge`` seconds
  after the subtask's first copy started (the master derives it from observed
  times). The first answer decides; the copies still running are ignored when
  they answer, and counted (``hedged``: extra copies sent; ``late``: answers
  that came after the decision). ``hedge=None``: one copy only.

Invariants (tested with hypothesis): a subtask is decided at most once; every
decided subtask's value comes from an answer; the job finishes (decided or
failed) once every slave has answered or failed what it holds.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from posa.errors import PosaError, RemoteError

__all__ = ["Vote", "Majority", "First", "Mean", "majority", "first", "JobState"]


class Vote(Protocol):
    """Turns the answers of a subtask's replicas into one value."""

    def needed(self, replicas: int) -> int:
        """How many answers to wait for when ``replicas`` slaves compute a subtask."""

    def decide(self, answers: Sequence[tuple[str, Any]]) -> tuple[Any, list[str]]:
        """``(value, dissenters)`` from ``(slave, answer)`` pairs in arrival order.
        Raises ``PosaError`` if the answers allow no decision."""


def _canonical(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # equal data, equal bytes


class Majority:
    """The answer most replicas gave, if more than half of the answers agree;
    waits for every replica. Dissenters: the slaves that answered otherwise."""

    def needed(self, replicas: int) -> int:
        return replicas

    def decide(self, answers: Sequence[tuple[str, Any]]) -> tuple[Any, list[str]]:
        groups: dict[bytes, list[str]] = {}
        values: dict[bytes, Any] = {}
        for slave, value in answers:
            key = _canonical(value)
            groups.setdefault(key, []).append(slave)
            values.setdefault(key, value)
        best = max(groups, key=lambda k: len(groups[k]))
        if 2 * len(groups[best]) <= len(answers):
            tally = ", ".join(f"{len(v)} x {values[k]!r:.40}" for k, v in groups.items())
            raise PosaError(f"no majority among {len(answers)} answers ({tally}); use more "
                            "replicas, or another vote such as first or mean")
        dissenters = [slave for key, slaves in groups.items() if key != best
                      for slave in slaves]
        return values[best], dissenters


class First:
    """The first answer to arrive; the other replicas are not waited for."""

    def needed(self, replicas: int) -> int:
        return 1

    def decide(self, answers: Sequence[tuple[str, Any]]) -> tuple[Any, list[str]]:
        return answers[0][1], []


class Mean:
    """The mean of numeric answers; waits for every replica. With ``tolerance``,
    slaves whose answer is farther than that from the median are dissenters and
    left out of the mean (a faulty replica cannot drag the result)."""

    def __init__(self, tolerance: float | None = None) -> None:
        self.tolerance = tolerance

    def needed(self, replicas: int) -> int:
        return replicas

    def decide(self, answers: Sequence[tuple[str, Any]]) -> tuple[Any, list[str]]:
        numbers = [(slave, value) for slave, value in answers
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        dissenters = [slave for slave, value in answers if (slave, value) not in numbers]
        if self.tolerance is not None and numbers:
            middle = statistics.median(value for _, value in numbers)
            dissenters += [slave for slave, value in numbers
                           if abs(value - middle) > self.tolerance]
            numbers = [(s, v) for s, v in numbers if abs(v - middle) <= self.tolerance]
        if not numbers:
            raise PosaError(f"no numeric answers to average among {len(answers)}; the "
                            "mean vote needs int or float results")
        return statistics.fmean(value for _, value in numbers), dissenters


majority = Majority()
first = First()


@dataclass
class _Subtask:
    data: Any
    need: int                       # answers wanted (replicas, shrunk if slaves run out)
    holders: set[str]               # slaves computing it now
    answers: list[tuple[str, Any]]  # arrival order
    excluded: set[str]              # slaves whose work on it raised
    starts: dict[str, float]        # holder -> when it took the subtask
    attempts: int = 0               # failures of the work itself
    opened: float | None = None     # when its first copy went out
    decided: bool = False
    value: Any = None


class JobState:
    """One job's subtasks and who computes them. Not thread-safe."""

    def __init__(self, subtasks: Iterable[Any], slaves: Iterable[str], *,
                 replicas: int | None = 1, vote: Vote | None = None,
                 max_attempts: int = 3, backups: bool = True,
                 backup_factor: float = 2.0, hedge: float | None = 0.0) -> None:
        self.live: set[str] = set(slaves)
        if not self.live:
            raise ValueError("a job needs at least one slave")
        if replicas is not None and replicas < 1:
            raise ValueError("replicas must be at least 1 (or None for every slave)")
        self.replicas = len(self.live) if replicas is None else min(replicas, len(self.live))
        self.vote: Vote = vote or (first if self.replicas == 1 else majority)
        self.max_attempts = max_attempts
        self.backups = backups
        self.backup_factor = backup_factor
        if hedge is not None and hedge < 0:
            raise ValueError("hedge is a delay in seconds (0: at once) or None (no hedging)")
        self.hedge = hedge
        self.tasks = [_Subtask(data, self.replicas, set(), [], set(), {}) for data in subtasks]
        self._durations: list[float] = []
        self._open = 0                              # every subtask before it is decided
        self.undecided = len(self.tasks)
        self.error: PosaError | None = None
        self.dissenters: dict[str, list[int]] = {}
        self.answered: dict[str, int] = {}
        self.reassigned = 0
        self.backup_runs = 0
        self.hedged = 0                             # extra copies sent by hedging
        self.late = 0                               # answers after the decision, ignored
        if not self.tasks:
            self.undecided = 0

    @property
    def finished(self) -> bool:
        return self.error is not None or self.undecided == 0

    def progress(self) -> tuple[int, int]:
        """(subtasks decided, subtasks in all)."""
        return len(self.tasks) - self.undecided, len(self.tasks)

    def results(self) -> list[Any]:
        """The decided value of every subtask, in order (once ``finished``)."""
        if self.error is not None:
            raise self.error
        return [task.value for task in self.tasks]

    # -- events ----------------------------------------------------------------
    def add_slave(self, slave: str) -> None:
        """A slave that appeared while the job runs."""
        self.live.add(slave)

    def take(self, slave: str, now: float) -> tuple[int, Any] | None:
        """The subtask ``slave`` should compute from ``now``, as (index, data);
        None if there is none for it at the moment (see ``backup_due``)."""
        if self.finished or slave not in self.live:
            return None
        backup: int | None = None
        ripe = self._backup_threshold()
        tasks = self.tasks
        while tasks[self._open].decided:            # skip the decided prefix for good
            self._open += 1
        for index in range(self._open, len(tasks)):
            task = tasks[index]
            if task.decided or not self._may_take(task, slave):
                continue
            have = len(task.answers) + len(task.holders)
            if have < self._wanted(task):
                return self._hand(index, task, slave, now)
            if have < self._copies(task, now):
                self.hedged += 1
                return self._hand(index, task, slave, now)
            if (ripe is not None and task.holders
                    and min(task.starts.values()) + ripe <= now
                    and (backup is None
                         or len(task.holders) < len(self.tasks[backup].holders))):
                backup = index                      # overdue elsewhere, fewest copies
        if backup is None:
            return None
        self.backup_runs += 1
        return self._hand(backup, self.tasks[backup], slave, now)

    def backup_due(self) -> float | None:
        """The earliest time at which a running subtask becomes due for a backup
        copy (None: no backups, no timings yet, or nothing running)."""
        due = [t.opened + self.hedge for t in self.tasks
               if self.hedge and t.opened is not None and not t.decided
               and self.vote.needed(t.need) < t.need]
        ripe = self._backup_threshold()
        if ripe is not None:
            due += [min(t.starts.values()) + ripe for t in self.tasks
                    if not t.decided and t.starts]
        return min(due) if due else None

    @property
    def durations(self) -> list[float]:
        """The times the answers of this job took, in arrival order."""
        return list(self._durations)

    def succeeded(self, slave: str, index: int, value: Any, now: float) -> None:
        """``slave`` answered subtask ``index`` with ``value`` at ``now``."""
        task = self.tasks[index]
        task.holders.discard(slave)
        started = task.starts.pop(slave, None)
        if started is not None:
            self._durations.append(now - started)
        if task.decided or self.finished:
            self.late += 1                          # a late backup or replica: ignored
            return
        task.answers.append((slave, value))
        self.answered[slave] = self.answered.get(slave, 0) + 1
        if len(task.answers) >= self.vote.needed(task.need):
            self._decide(index, task)
        else:
            self._settle(index, task, None)     # perhaps no one else can answer now

    def failed(self, slave: str, index: int, error: PosaError, *, dead: bool) -> None:
        """``slave`` did not answer subtask ``index``: it is gone or timed out
        (``dead``), or the work raised ``error`` there."""
        task = self.tasks[index]
        task.holders.discard(slave)
        task.starts.pop(slave, None)
        if self.finished:
            return
        if dead:
            if slave in self.live:
                self.live.discard(slave)
                for other in self.tasks:
                    other.holders.discard(slave)
                    other.starts.pop(slave, None)
                self.reassigned += 1
        elif not task.decided:
            task.excluded.add(slave)
            task.attempts += 1
            if task.attempts >= self.max_attempts:
                self.error = _with_context(error, f"subtask {index} failed "
                                           f"{task.attempts} times")
                return
        self._shrink(error)

    # -- internals ---------------------------------------------------------------
    def _may_take(self, task: _Subtask, slave: str) -> bool:
        return (slave not in task.holders and slave not in task.excluded
                and all(s != slave for s, _ in task.answers))

    def _hand(self, index: int, task: _Subtask, slave: str, now: float) -> tuple[int, Any]:
        task.holders.add(slave)
        task.starts[slave] = now
        if task.opened is None:
            task.opened = now
        return index, task.data

    def _backup_threshold(self) -> float | None:
        if not self.backups or not self._durations:
            return None
        return self.backup_factor * sum(self._durations) / len(self._durations)

    def _wanted(self, task: _Subtask) -> int:
        return self.vote.needed(task.need)

    def _copies(self, task: _Subtask, now: float) -> int:
        """How many copies of ``task`` should be out by ``now``: its replicas once
        the hedging delay has passed, else the answers its vote needs."""
        if self.hedge is None:
            return self._wanted(task)
        if self.hedge > 0 and (task.opened is None or task.opened + self.hedge > now):
            return self._wanted(task)
        return task.need

    def _decide(self, index: int, task: _Subtask) -> None:
        try:
            value, dissenters = self.vote.decide(task.answers)
        except PosaError as exc:
            self.error = _with_context(exc, f"subtask {index}")
            return
        task.decided, task.value = True, value
        task.holders.clear()
        task.starts.clear()
        self.undecided -= 1
        for slave in dissenters:
            self.dissenters.setdefault(slave, []).append(index)

    def _shrink(self, error: PosaError) -> None:
        for index, task in enumerate(self.tasks):
            if not task.decided:
                self._settle(index, task, error)
                if self.finished:
                    return

    def _settle(self, index: int, task: _Subtask, error: PosaError | None) -> None:
        """Want fewer answers for ``task`` if no usable slave is left to give
        them; decide with what came, or fail the job if nothing can come."""
        coming = len(task.answers) + len(task.holders)
        if coming >= self._wanted(task):
            return
        if any(self._may_take(task, slave) for slave in self.live):
            return
        if coming == 0 and task.excluded & self.live:
            task.excluded.clear()               # retry where it failed (attempts bound it)
            return
        if coming == 0:
            assert error is not None            # answers never leave a task with none
            self.error = _with_context(error, f"no slave is left for subtask {index}")
            return
        task.need = min(task.need, coming)
        if task.answers and len(task.answers) >= self.vote.needed(task.need):
            self._decide(index, task)


def _with_context(error: PosaError, context: str) -> PosaError:
    """``error`` again, its message prefixed with ``context`` (same class)."""
    if isinstance(error, RemoteError):
        return RemoteError(error.remote_type, f"{context}: {error.remote_message}")
    try:
        return type(error)(f"{context}: {error}")
    except TypeError:
        return PosaError(f"{context}: {error}")
