"""The benchmark suite runs end to end at a tiny scale and writes its report.

Nothing here asserts on timing: the numbers of a tiny run on a shared machine
mean nothing; that the suite runs, fails no row and reports every goal does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import AREAS, ONEWAY, Bench, Goal
from bench.anchors import ANCHORS
from bench.report import MARKER, ratios, write_markdown
from bench.runner import Outcome, Suite, load_suite, schedule

ROOT = Path(__file__).resolve().parent.parent


def _row(key: str, versus: str | None = None) -> Bench:
    return Bench(key, key, lambda ctx, n: {}, 10, ONEWAY, versus=versus, area="transport")


@pytest.mark.timeout(330)
def test_tiny_run_writes_a_report(tmp_path: Path) -> None:
    # every row, in two runs of half the rows each (``--only``) at once: one run
    # keeps about one core busy (its rows run one after another), so on two cores
    # two halves take little more than one; each run gets its own dispatcher,
    # processes and directory
    suite = load_suite()
    keys = list(suite.rows)
    halves = [keys[0::2], keys[1::2]]
    # each run in its own session: a run cut off by the deadline takes its
    # processes (a dispatcher, roles) with it rather than leaving them to the machine
    runs = [subprocess.Popen(
        [sys.executable, "-m", "bench", "--scale", "0.01", "--reps", "1", "--no-anchors",
         "--only", ",".join(half), "--out", str(tmp_path / f"half{i}")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        for i, half in enumerate(halves)]
    deadline = time.monotonic() + 300
    errors = []
    try:
        for run in runs:
            try:
                _, stderr = run.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _, stderr = "", "(cut off)"
            errors.append(stderr)
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.communicate()
    for i, (run, half, stderr) in enumerate(zip(runs, halves, errors)):
        assert run.returncode == 0, f"the tiny run of half {i} did not end well " \
                                    f"within 300 s: {stderr[-3000:]}"
        report = (tmp_path / f"half{i}" / "benchmarks.md").read_text(encoding="utf-8")
        assert MARKER in report
        assert "### Goals" in report
        assert "Skipped and failed" not in report, report.split("Skipped and failed")[1][:3000]
        for goal in suite.goals:                 # every goal of its rows has its line
            if goal.num[0] in half:
                assert goal.text in report
        for key in half:                         # every posa row has a measured line
            label = suite.rows[key].label
            line = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
            cells = [cell.strip() for cell in line.split("|")]
            assert cells[2] != "–" and cells[3] not in ("–", "skipped"), line
        assert "[#" in stderr                    # the progress bar
    assert {g.num[0] for g in suite.goals} <= set(keys)   # so every goal was reported


def test_anchors_run_right_before_the_first_row_compared_with_them() -> None:
    suite = Suite(rows={"a": _row("a"), "b": _row("b", versus="simplequeue"), "c": _row("c")},
                  goals=[Goal("g", "t", "a vs dealer", ("a", "msgs_per_s"),
                              ("zmq_dealer2_tcp", "msgs_per_s"), ">=", 0.8),
                         Goal("h", "t", "c vs a", ("c", "msgs_per_s"), ("a", "msgs_per_s"),
                              ">=", 1.0)])
    order, goals = schedule(suite, set(), anchors=True)
    assert [row.key for row in order] == ["zmq_dealer2_tcp", "a", "simplequeue", "b", "c"]
    assert order[0].area == "anchors" and len(goals) == 2
    order, _ = schedule(suite, {"b"}, anchors=False)
    assert [row.key for row in order] == ["b"]
    with pytest.raises(SystemExit):
        schedule(suite, {"no-such-row"}, anchors=True)


def test_goal_values_are_ratios_within_each_rep() -> None:
    outcome = Outcome(order=[], goals=[], reps=3, scale=1.0, results={
        "a": [{"m": 10.0}, None, {"m": 30.0}],
        "b": [{"m": 5.0}, {"m": 5.0}, {"m": 10.0}]})
    assert ratios(outcome, ("a", "m"), ("b", "m")) == [2.0, 3.0]
    assert ratios(outcome, ("a", "m"), None) == [10.0, 30.0]


def test_the_hand_written_header_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "benchmarks.md"
    target.write_text("# Title\n\nMethod.\n\n" + MARKER + "\n\nold tables\n", encoding="utf-8")
    write_markdown(str(target), "new tables", default_header_from=str(tmp_path / "none.md"))
    assert target.read_text(encoding="utf-8") == f"# Title\n\nMethod.\n\n{MARKER}\n\nnew tables\n"


def test_areas_not_written_yet_are_pending_slots() -> None:
    suite = load_suite()
    present = {row.area for row in suite.rows.values()}
    assert {"transport", "peer", "dispatcher"} <= present
    for area, _, _ in suite.pending:
        assert area not in present
    assert {a for a, _, _ in suite.pending} | present == {a for a, _, _ in AREAS}
    assert not set(suite.rows) & set(ANCHORS)


def test_scale_rows_are_drawn_against_callers_not_as_bars() -> None:
    from bench.report import _scale_keys, _scale_series
    outcome = Outcome(order=[], goals=[], reps=2, scale=1.0, results={
        "scale_calls_1": [{"calls_per_s": 10.0}, {"calls_per_s": 12.0}],
        "scale_calls_64": [{"calls_per_s": 30.0}, None],
        "scale_pyro_lookup_4": [{"lookups_per_s": 7.0}, {"lookups_per_s": 9.0}]})
    calls, lookups = _scale_series(outcome)
    assert calls[1] == "calls_per_s"
    assert [(label, points) for label, _, points in calls[2]] == [
        ("posa Peer.request (threads)", [(1, [10.0, 12.0]), (64, [30.0])])]
    assert lookups[1] == "lookups_per_s"
    assert [points for _, _, points in lookups[2]] == [[(4, [7.0, 9.0])]]
    assert {"scale_calls_16", "scale_nats_64", "scale_aio_64"} <= _scale_keys()


def test_anchors_beside_a_row_run_before_it() -> None:
    row = Bench("a", "a", lambda ctx, n: {}, 10, ONEWAY, versus="simplequeue",
                beside=("zmq_push_ipc",), area="transport")
    order, _ = schedule(Suite(rows={"a": row}), set(), anchors=True)
    assert [r.key for r in order] == ["simplequeue", "zmq_push_ipc", "a"]


@pytest.mark.timeout(150)
def test_side_by_side_runs_two_trees_at_once() -> None:
    # (the same tree twice: that it runs and reports, not what it measures)
    run = subprocess.run(
        [sys.executable, "-m", "bench.side_by_side", str(ROOT), str(ROOT), "--rounds", "1",
         "--calls", "200"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "round 1 " in run.stdout and "both: B/A median" in run.stdout, run.stdout


def test_threaded_client_makes_every_call_once() -> None:
    # bench.instructions --threads: every thread makes a warm-up call (its
    # connection), then the threads make the warm-up's rest and the timed calls
    import threading

    from bench.instructions import WARMUP, _threaded_calls

    made: list[str] = []
    threads: set[int] = set()

    class Peer:
        def request(self, name: str, body: object, *, timeout: float) -> None:
            made.append(name)
            threads.add(threading.get_ident())

    _threaded_calls(Peer(), 300, 8)
    assert len(made) == WARMUP + 300 and len(threads) == 8
