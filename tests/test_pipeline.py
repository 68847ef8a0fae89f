"""Pipes and filters: configuration, results equal to the sequential ones,
duplicate detection between stages, and stage instances in real processes
killed mid-job."""
from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

import posa
from posa.work.pipeline import Pipeline, RunResult, Stage, load_stages
from tests.support import Proc, load_example

pytestmark = pytest.mark.timeout(120)


example = load_example("pipeline")


def add_one(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def odd_only(x: int) -> int | None:
    return x if x % 2 else None


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

def test_stages_come_from_lists_dicts_and_import_paths() -> None:
    stages = load_stages({"stages": [{"name": "cap", "filter": "string:capwords"},
                                     Stage("dbl", double, 3)]})
    assert [(s.name, s.instances) for s in stages] == [("cap", 1), ("dbl", 3)]
    assert stages[0].function()("posa pipes") == "Posa Pipes"


@pytest.mark.parametrize("config, message", [
    ([{"name": "a"}], "lacks 'filter'"),
    ([{"name": "a", "filter": double}, {"name": "a", "filter": double}], "distinct names"),
    ([], "distinct names"),
])
def test_bad_configuration_says_what_is_wrong(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_stages(config)


def test_a_filter_path_that_is_not_module_colon_function_is_refused() -> None:
    with pytest.raises(ValueError, match="package.module:function"):
        Stage("x", "string.capwords").function()


# ---------------------------------------------------------------------------
# pipelines in one process
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("stages, expected", [
    ([add_one, double], [2 * (x + 1) for x in range(20)]),        # reordered ...
    ([double, add_one], [2 * x + 1 for x in range(20)]),          # ... by configuration
    ([double], [2 * x for x in range(20)]),                       # a stage removed
    ([add_one, odd_only, double], [2 * (x + 1) for x in range(20) if (x + 1) % 2]),
])
def test_outputs_equal_the_sequential_result(registry: posa.LocalRegistry, stages: list[Any],
                                             expected: list[int]) -> None:
    config = [{"name": f.__name__.replace("_", "-"), "filter": f, "instances": 2}
              for f in stages]
    with Pipeline("pipe/calc", config, registry=registry) as pipeline:
        assert pipeline.run(range(20)) == expected
        assert pipeline.run([]) == []
        assert pipeline.run(range(20)) == expected          # runs do not collide


def test_process_reports_outputs_drops_and_duplicate_keys(
        registry: posa.LocalRegistry) -> None:
    with Pipeline("pipe/odd", [Stage("odd", odd_only), Stage("dbl", double)],
                  registry=registry) as pipeline:
        first = pipeline.process({"a": 1, "b": 2})
        again = pipeline.process({"a": 1, "c": 3})
    assert first == RunResult({"a": 2}, {"b"}, {}, set())
    assert again == RunResult({"c": 6}, set(), {}, {"a"})


def test_an_item_that_keeps_failing_is_reported_with_its_stage(
        registry: posa.LocalRegistry) -> None:
    def picky(x: int) -> int:
        if x == 3:
            raise ValueError("three is not allowed")
        return x

    with Pipeline("pipe/picky", [Stage("first", add_one), Stage("picky", picky)],
                  registry=registry, max_attempts=2) as pipeline:
        result = pipeline.process({"k2": 2, "k1": 1})
        with pytest.raises(posa.PosaError, match="stage 'picky'.*three is not allowed"):
            pipeline.run([2])
    assert result.outputs == {"k1": 2}
    assert "ValueError: three is not allowed" in result.failed["k2"]


def test_an_instance_dying_after_sending_its_output_makes_no_duplicate(
        registry: posa.LocalRegistry) -> None:
    """The seed's hard case: the output went downstream, the input was never
    acknowledged, so another instance processes the input again."""
    with Pipeline("pipe/dup", [Stage("inc", add_one), Stage("dbl", double)],
                  registry=registry, local=False, visibility=0.3) as pipeline:
        outcome: dict[str, RunResult] = {}
        feeder = threading.Thread(target=lambda: outcome.update(
            run=pipeline.process({str(i): i for i in range(10)}, timeout=30)))
        feeder.start()
        workers = []
        try:
            with posa.Peer("pipe/dup/inc/dies", registry=registry) as dying:
                [[key, token, attempt, data]] = dying.request(
                    "pipe/dup/inc", {"op": "next", "max": 1, "wait": 10}, timeout=15)["items"]
                dying.request("pipe/dup/dbl", {"op": "put", "items": [[key, data + 1]]})
            # ... and it dies here, before acknowledging its input
            for stage in ("inc", "dbl"):
                workers += Pipeline.start_instances("pipe/dup", pipeline.stages, stage,
                                           registry=registry)
            feeder.join(30)
            # the output is complete; the dead instance's lease runs out later
            metrics = {stage: queue.join(10) for stage, queue in pipeline.queues.items()}
        finally:
            for worker in workers:
                worker.close()
    assert outcome["run"].outputs == {str(i): 2 * (i + 1) for i in range(10)}
    assert metrics["inc"]["redelivered"] == 1 and metrics["inc"]["done"] == 10
    assert metrics["dbl"]["duplicates"] == 1 and metrics["dbl"]["done"] == 10


def test_pipeline_example_runs() -> None:
    demo = Proc([sys.executable, "examples/pipeline.py"])
    try:
        assert "same as sequential" in demo.line(timeout=60)
        assert demo.popen.wait(30) == 0
    finally:
        demo.close()


# ---------------------------------------------------------------------------
# stage instances in real processes
# ---------------------------------------------------------------------------

def test_a_killed_stage_instance_changes_nothing_and_duplicates_nothing(
        dispatcher: str) -> None:
    items = example.sentences(400)
    expected = example.sequential(items)
    layout = [("normalize", False), ("tokenize", True), ("tokenize", False),
              ("summarize", False)]
    procs = [Proc([sys.executable, "examples/pipeline.py", "stage", stage,
                   "--dispatcher", dispatcher] + (["--trace"] if trace else []))
             for stage, trace in layout]
    outcome: dict[str, Any] = {}
    try:
        with posa.RegistryClient(dispatcher) as registry, \
                Pipeline(example.NAME, example.STAGES, registry=registry,
                         listen="tcp://127.0.0.1:0", local=False,
                         # the killed instance's items come back after this; a
                         # live instance slower than it (a loaded machine) would
                         # be taken for dead too, and its items run twice
                         visibility=5.0) as pipeline:
            for proc in procs:
                proc.expect("ready")

            def run() -> None:
                try:
                    outcome["outputs"] = pipeline.run(items, timeout=90)
                except posa.PosaError as exc:
                    outcome["error"] = exc
            runner = threading.Thread(target=run)
            runner.start()
            victim = procs[1]
            for _ in range(10):                  # it is working: kill it mid-stream
                victim.expect("item")
            victim.kill()
            runner.join(100)
            metrics = pipeline.metrics()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["outputs"] == expected
        assert metrics["summarize"]["done"] == len(expected)   # each completed once
        assert all(m["dead"] == 0 and m["pending"] == 0 for m in metrics.values())
        print("after the kill:", {s: (m["expired"], m["duplicates"])
                                  for s, m in metrics.items()})
    finally:
        for proc in procs:
            proc.close()
