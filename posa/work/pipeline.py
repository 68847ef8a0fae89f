"""Pipes and filters: named filter stages joined by work queues.

A pipeline is a list of stages, each a filter (one function, one job) with N
competing instances. Every stage reads from a work queue of its own; an
instance takes an item, applies the filter and puts the output into the next
stage's queue under the same key, then acknowledges its input. Stages are
added, removed or reordered by editing the list (``Stage`` objects, or dicts
with ``name``, ``filter`` and ``instances``); a filter given as
``"package.module:function"`` can be loaded by instances in other processes.

    pipeline = Pipeline("pipe/text", [
        {"name": "strip", "filter": str.strip, "instances": 2},
        {"name": "upper", "filter": str.upper},
    ])
    pipeline.run(["  a ", " b"])      # -> ["A", "B"]

Semantics: a filter returns the output for its input, or ``None`` to drop the
item. An item's key is kept from stage to stage, and every queue ignores a key
it holds or has completed (``posa.work.queue``), which is the duplicate
detection between stages: an instance that dies after sending its output but
before acknowledging its input has that input processed again by another
instance, whose identical output (same key) the next queue drops. The last
stage's output travels with its acknowledgement to the pipeline, which
completes each key once. Delivery between stages is at least once, completion
exactly once; filters should be deterministic (or idempotent) for the output to
be the same whichever instance computed it.

The queues live in the process that creates the ``Pipeline``; instances run
there (``local=True``) and/or in other processes (``Pipeline.start_instances``).
"""
from __future__ import annotations

import importlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posa.errors import PosaError, Timeout
from posa.naming.registration import Registry
from posa.work.client import submit
from posa.work.queue import WorkQueue
from posa.work.worker import Item, Worker

__all__ = ["Stage", "StageFunction", "Pipeline", "RunResult", "load_stages"]

StageFunction = Callable[[Any], Any]


@dataclass(frozen=True)
class Stage:
    """One filter stage: its ``name`` (a name segment), the ``filter`` (a
    callable or "module:function") and how many competing ``instances`` run."""

    name: str
    filter: StageFunction | str
    instances: int = 1

    def function(self) -> StageFunction:
        """The filter as a callable (importing "module:function")."""
        if callable(self.filter):
            return self.filter
        module, _, attribute = self.filter.partition(":")
        if not module or not attribute:
            raise ValueError(f"stage {self.name!r}: filter {self.filter!r} must be a "
                             "callable or 'package.module:function'")
        function = getattr(importlib.import_module(module), attribute)
        if not callable(function):
            raise ValueError(f"stage {self.name!r}: {self.filter!r} is not callable")
        return function  # type: ignore[no-any-return]


def load_stages(config: Sequence[Stage | Mapping[str, Any]] | Mapping[str, Any]
                ) -> list[Stage]:
    """Stages from configuration: a list of ``Stage`` or dicts (name, filter,
    instances), or a dict with a "stages" list. Raises ``ValueError`` for a
    missing field or a stage name used twice."""
    entries: Sequence[Stage | Mapping[str, Any]] = (
        config["stages"] if isinstance(config, Mapping) else config)
    stages = []
    for entry in entries:
        if isinstance(entry, Stage):
            stages.append(entry)
            continue
        try:
            stages.append(Stage(entry["name"], entry["filter"],
                                int(entry.get("instances", 1))))
        except KeyError as exc:
            raise ValueError(f"stage {entry!r} lacks {exc}; give name and filter") from None
    names = [stage.name for stage in stages]
    if not stages or len(set(names)) != len(names):
        raise ValueError(f"a pipeline needs stages with distinct names, got {names}")
    return stages


_instance_ids = itertools.count()


def _executor(function: StageFunction, target: str | None, holder: list[Worker],
              timeout: float) -> Callable[[Item], Any]:
    """What an instance runs per item: filter, then pass on (or report) the output."""
    def execute(item: Item) -> Any:
        output = function(item.data)
        if output is None:
            return {"dropped": True}
        if target is None:
            return {"out": output}
        submit(holder[0].peer, target, [(item.key, output)], timeout=timeout)
        return {"sent": True}
    return execute


@dataclass
class RunResult:
    """What became of each item of a run, by key."""

    outputs: dict[str, Any] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)    # key -> "stage: reason"
    duplicates: set[str] = field(default_factory=set)       # keys known already: ignored

    def finished(self, keys: Iterable[str]) -> bool:
        return all(k in self.outputs or k in self.dropped or k in self.failed for k in keys)


class Pipeline:
    """The stages' queues (peers named ``NAME/STAGE``) and, with ``local``, the
    stages' instances as threads of this process.

    ``visibility``, ``max_attempts`` and ``capacity`` apply to every queue;
    ``remember`` is how many completed keys each queue keeps for duplicate
    detection (keep it above the number of items in flight through the pipeline).
    """

    def __init__(self, name: str, stages: Sequence[Stage | Mapping[str, Any]] | Mapping[str, Any],
                 *, registry: Registry | None = None, listen: str | None = None,
                 local: bool = True, visibility: float = 10.0, max_attempts: int = 3,
                 capacity: int = 10_000, remember: int = 1_000_000,
                 prefetch: int = 1) -> None:
        self.name = name
        self.stages = load_stages(stages)
        self._cond = threading.Condition()
        self._runs = itertools.count(1)
        self._result = RunResult()
        self.queues: dict[str, WorkQueue] = {}
        self.instances: list[Worker] = []
        last = self.stages[-1].name
        try:
            for stage in self.stages:
                self.queues[stage.name] = WorkQueue(
                    f"{name}/{stage.name}", registry=registry, listen=listen,
                    visibility=visibility, max_attempts=max_attempts, capacity=capacity,
                    remember=remember,
                    on_done=self._on_done_at(stage.name, stage.name == last),
                    on_dead=self._on_dead_at(stage.name))
            if local:
                for stage in self.stages:
                    self.instances += self.start_instances(
                        name, self.stages, stage.name, registry=registry, listen=listen,
                        prefetch=prefetch)
        except BaseException:
            self.close()
            raise
        self._feeder = self.queues[self.stages[0].name]

    @staticmethod
    def start_instances(pipeline: str, stages: Sequence[Stage | Mapping[str, Any]],
                        stage: str, *, count: int | None = None,
                        registry: Registry | None = None, listen: str | None = None,
                        prefetch: int = 1, timeout: float = 30.0) -> list[Worker]:
        """Start ``count`` (default: the stage's ``instances``) instances of
        ``stage`` in this process, on their own threads; close them when done.
        ``stages`` must be the pipeline's configuration: it tells where outputs go."""
        stages = load_stages(stages)
        position = [s.name for s in stages].index(stage)
        here = stages[position]
        target = (f"{pipeline}/{stages[position + 1].name}" if position + 1 < len(stages)
                  else None)
        function = here.function()
        workers = []
        for _ in range(here.instances if count is None else count):
            name = f"{pipeline}/{here.name}/{os.getpid()}-{next(_instance_ids)}"
            holder: list[Worker] = []
            worker = Worker(name, f"{pipeline}/{here.name}",
                            _executor(function, target, holder, timeout),
                            registry=registry, listen=listen, prefetch=prefetch)
            holder.append(worker)
            workers.append(worker.start())
        return workers

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def process(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *,
                timeout: float = 60.0) -> RunResult:
        """Feed items (key -> data) to the first stage and wait until each is out
        of the last stage, dropped, or given up. A key the pipeline holds or
        has completed is a duplicate: it is ignored and listed in
        ``duplicates``. Raises ``Timeout``."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        deadline = time.monotonic() + timeout
        keys: list[str] = []
        offset = 0
        with self._cond:
            while True:
                accepted, added = self._feeder.offer(pairs[offset:])
                offset += accepted
                keys += added
                if offset == len(pairs):
                    break
                self._wait(deadline, keys)      # the first queue is full: let it drain
            while not self._result.finished(keys):
                self._wait(deadline, keys)
            result = self._result
            outputs = {k: result.outputs.pop(k) for k in keys if k in result.outputs}
            dropped = {k for k in keys if k in result.dropped}
            result.dropped -= dropped
            failed = {k: result.failed.pop(k) for k in keys if k in result.failed}
        return RunResult(outputs, dropped, failed, {key for key, _ in pairs} - set(keys))

    def run(self, items: Iterable[Any], *, timeout: float = 60.0) -> list[Any]:
        """The outputs of ``items`` in their order (dropped ones left out).
        Raises ``PosaError`` naming the stage and reason if an item was given
        up, ``Timeout`` if the pipeline did not finish in time."""
        run = next(self._runs)
        pairs = [(f"{run}-{i}", data) for i, data in enumerate(items)]
        result = self.process(pairs, timeout=timeout)
        if result.failed:
            key, reason = next(iter(result.failed.items()))
            raise PosaError(f"{len(result.failed)} item(s) failed in the pipeline "
                            f"{self.name!r}, e.g. item {key.split('-', 1)[1]} in {reason}")
        return [result.outputs[key] for key, _ in pairs if key in result.outputs]

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Each stage's queue metrics (done/total, in flight, duplicates ...)."""
        return {stage: queue.metrics() for stage, queue in self.queues.items()}

    def close(self) -> None:
        """Stop the local instances, then the queues."""
        for worker in self.instances:
            worker.stop()
        for worker in self.instances:
            worker.close()
        for queue in self.queues.values():
            queue.close()

    def _wait(self, deadline: float, keys: list[str]) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result = self._result
            done = sum(1 for k in keys if k in result.outputs or k in result.dropped
                       or k in result.failed)
            in_flight = ", ".join(f"{stage}: {queue.metrics()['in_flight']}"
                                  for stage, queue in self.queues.items())
            raise Timeout(f"the pipeline {self.name!r} finished {done} of {len(keys)} "
                          f"items in time (in flight per stage: {in_flight}); are all "
                          "stages' instances running?")
        self._cond.wait(min(remaining, 1.0))

    def _on_done_at(self, stage: str, last: bool) -> Callable[[str, Any], None]:
        def on_done(key: str, result: Any) -> None:
            with self._cond:
                if isinstance(result, dict) and result.get("dropped"):
                    self._result.dropped.add(key)
                elif last and isinstance(result, dict) and "out" in result:
                    self._result.outputs[key] = result["out"]
                self._cond.notify_all()
        return on_done

    def _on_dead_at(self, stage: str) -> Callable[[str, str], None]:
        def on_dead(key: str, reason: str) -> None:
            with self._cond:
                self._result.failed[key] = f"stage {stage!r}: {reason}"
                self._cond.notify_all()
        return on_dead
