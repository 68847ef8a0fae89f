"""The chaos suite (tests/chaos/) over nats://: seeded scenarios whose zmq+tcp and
zmq+ipc endpoints listen on a real 3-node NATS cluster instead, so receivers
start on nats:// and migrate between it, tcp:// and inproc:// under SIGKILL,
SIGSTOP and dispatcher faults; the checker finds no loss, duplicate or reordering."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import CI_SEEDS, replay_command
from tests.chaos.checker import summarize
from tests.chaos.runner import run
from tests.chaos.scenario import Scenario, generate
from tests.natsserver import NatsCluster

SEEDS = (CI_SEEDS[0], CI_SEEDS[2], CI_SEEDS[6])   # each has nats receivers and migrations
_ZMQ = {"zmq+tcp", "zmq+ipc"}


def over_nats(scenario: Scenario) -> Scenario:
    """The same scenario with every zmq transport replaced by nats."""
    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("nats" if k == "transport" and v in _ZMQ else swap(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    return Scenario(scenario.seed, scenario.without, swap(scenario.nodes),
                    swap(scenario.steps))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_chaos_scenario_over_nats_keeps_every_promise(
        seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = over_nats(generate(seed))
    text = json.dumps([scenario.nodes, scenario.steps])
    assert '"transport": "nats"' in text and '"migrate"' in text
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        monkeypatch.setenv("POSA_CHAOS_NATS", cluster.urls)
        violations = run(scenario, tmp_path / f"seed-{seed}")
    shown = "\n".join(f"  {line}" for line in summarize(violations))
    assert not violations, (f"chaos seed {seed} over nats: {len(violations)} violation(s)"
                            f"\n{shown}\nreplay the tcp/zmq form: {replay_command(seed)}")
