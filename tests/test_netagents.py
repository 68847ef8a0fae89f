"""The netagents example: its pure parts as tables, and both modes end to end as
real processes, asserting on the outcome each run computes (its RESULT line)."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from examples.netagents.network import build, link_key, scenario
from examples.netagents.outcome import message_counts, migration_summary, table_mismatches
from examples.netagents.routing import LSA, LinkStateDB, shortest_paths
from tests.support import Proc

PACE = "0.3"   # seconds between the scenario's steps: quick, yet traffic flows between


# -- the pure parts ----------------------------------------------------------------------
GRAPHS = [
    # (graph, source, expected table)
    ({"a": {"b": 1}, "b": {"a": 1}}, "a", {"b": ("b", 1)}),
    # two equal-cost paths: the smaller first hop wins
    ({"a": {"c": 1, "b": 1}, "b": {"a": 1, "d": 1}, "c": {"a": 1, "d": 1},
      "d": {"b": 1, "c": 1}}, "a", {"b": ("b", 1), "c": ("c", 1), "d": ("b", 2)}),
    # a cheaper path with more hops beats a direct expensive one
    ({"a": {"b": 10, "c": 1}, "b": {"a": 10, "c": 1}, "c": {"a": 1, "b": 1}}, "a",
     {"b": ("c", 2), "c": ("c", 1)}),
    # unreachable routers are absent
    ({"a": {}, "b": {}}, "a", {}),
]


@pytest.mark.parametrize("graph, source, expected", GRAPHS)
def test_shortest_paths(graph: dict[str, dict[str, int]], source: str,
                        expected: dict[str, tuple[str, int]]) -> None:
    assert shortest_paths(graph, source) == expected


def test_link_state_db_keeps_newer_adverts_and_two_way_links_only() -> None:
    db = LinkStateDB([LSA("a", 1, {"b": 3}), LSA("b", 1, {"a": 3, "c": 2})])
    assert db.graph() == {"a": {"b": 3}, "b": {"a": 3}}        # c advertises nothing
    assert not db.offer(LSA("a", 1, {}))                       # not newer: ignored
    assert db.offer(LSA("a", 2, {}))                           # a's link went down
    assert db.routes("b") == {}


def test_the_network_and_its_scenario_come_from_the_seed() -> None:
    assert build(7) == build(7)
    assert scenario(build(7)) == scenario(build(7))
    assert build(7).links != build(8).links


@pytest.mark.parametrize("seed", range(1, 21))
def test_the_network_stays_connected_through_the_scenario(seed: int) -> None:
    network = build(seed)
    for step in scenario(network):
        network.apply(step)
        assert len(shortest_paths(network.graph(), network.routers[0])) == \
            len(network.routers) - 1


def test_outcome_checks_spot_a_wrong_route_and_a_lost_message() -> None:
    network = build(1)
    tables = {r: {d: list(v) for d, v in shortest_paths(network.graph(), r).items()}
              for r in network.routers}
    assert table_mismatches(network, tables) == {}
    first = network.routers[0]
    tables[first] = {}
    assert list(table_mismatches(network, tables)) == [first]
    counters = [
        {"router": "a", "sent": {"b": 5}, "received": {"b": 4}, "missing": 0,
         "duplicates": 0, "send_errors": 0, "migration": None},
        {"router": "b", "sent": {"a": 4}, "received": {"a": 4}, "missing": 0,
         "duplicates": 1, "send_errors": 0,
         "migration": {"router": "b", "received_before": 1}},
    ]
    counts = message_counts(counters)
    assert (counts["sent"], counts["received"], counts["lost"]) == (9, 8, 1)
    assert counts["unbalanced"] == ["a -> b: sent 5, received 4"]
    summary = migration_summary(counters)
    assert summary is not None and summary["received_after"] == 3
    assert link_key("b", "a") == ("a", "b")


# -- end to end, as real processes --------------------------------------------------------
def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def _assert_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for pid in left:            # don't leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def _run_demo(*args: str, timeout: float) -> tuple[dict[str, Any], list[int], int]:
    """Run the demo to its end; its RESULT, the pids it started, its exit code."""
    proc = Proc([sys.executable, "-m", "examples.netagents", "--pace", PACE, *args])
    pids: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            line = proc.line(max(0.1, deadline - time.monotonic()))
            pids += [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", line)]
            if line.startswith("RESULT "):
                break
        result = json.loads(line[len("RESULT "):])
        code = proc.popen.wait(max(1.0, deadline - time.monotonic()))
    finally:
        proc.close()
    return result, pids, code


def _assert_outcome(result: dict[str, Any]) -> None:
    assert result["tables"]["mismatches"] == []
    assert result["tables"]["equal"] == result["tables"]["checked"] == 8
    messages = result["messages"]
    assert messages["sent"] == messages["received"] > 0
    assert messages["lost"] == messages["missing"] == 0
    assert messages["unbalanced"] == []
    migration = result["migration"]
    assert migration["lost"] == 0
    assert migration["epochs"] == [1, 2]
    assert migration["received_before"] > 0 and migration["received_after"] > 0
    assert migration["from"].split("://")[0] != migration["to"].split("://")[0]
    assert result["alerts"]["link/down"] >= 2 and result["alerts"]["agent/migrated"] == 1
    assert result["ok"] is True


@pytest.mark.timeout(90)
def test_all_in_one_runs_the_scenario_and_its_checks_pass() -> None:
    result, _, code = _run_demo(timeout=60)
    assert code == 0
    assert result["mode"] == "all-in-one"
    _assert_outcome(result)
    assert result["messages"]["duplicates_dropped"] == 0   # posa delivers none twice


@pytest.mark.timeout(120)
def test_multi_process_runs_the_scenario_and_leaves_no_process_behind() -> None:
    result, pids, code = _run_demo("--multi", timeout=90)
    assert code == 0
    assert result["mode"] == "multi-process"
    _assert_outcome(result)
    assert sorted(result["processes"]) == sorted(pids) and len(pids) >= 7
    old, new = result["migration"]["pids"]
    assert old != new and {old, new} <= set(pids)
    _assert_gone(pids)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("args, stop", [((), signal.SIGINT), (("--multi",), signal.SIGTERM),
                                        (("--multi",), signal.SIGINT)])
def test_a_signal_stops_the_demo_cleanly(args: tuple[str, ...], stop: int) -> None:
    proc = Proc([sys.executable, "-m", "examples.netagents", *args])
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:     # mid-scenario: after the first step has converged
            line = proc.line(max(0.1, deadline - time.monotonic()))
            pids += [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", line)]
            if line.startswith("[") and "admin: take link" in line:
                break
        proc.popen.send_signal(stop)
        assert proc.popen.wait(40) == 0
    finally:
        proc.close()
    _assert_gone(pids)
