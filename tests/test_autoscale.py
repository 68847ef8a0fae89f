"""Scaling a pool of workers from the queue's backlog and the age of its oldest
item: the rule (sans-IO), the queue's advice and numbers, and an autoscaler that
starts and stops real ``posa worker`` processes."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa import ops
from posa.work.autoscale import Autoscaler, ScaleRule
from posa.work.scaling import ScalingAdvisor
from tests.support import wait_until

pytestmark = pytest.mark.timeout(180)


# -- the rules (sans-IO) -------------------------------------------------------------

def test_the_advice_follows_the_backlog_not_only_the_rates() -> None:
    advisor = ScalingAdvisor(target=10.0)
    for _ in range(37):                           # a burst: 37 items at once
        advisor.observe_arrival(100.0)
    for _ in range(3):
        advisor.observe_processing(1.0)           # one second each
    # the rates alone (items arrived all at once, long ago) would say otherwise
    advice = advisor.recommend(1, now=200.0, pending=37, oldest=100.0)
    assert advice.workers == 4                    # 37 items x 1 s within 10 s
    assert "37 item(s) waiting" in advice.reason and advice.as_dict()["pending"] == 37
    # an old item with no timings yet: one worker more
    fresh = ScalingAdvisor(target=5.0)
    assert fresh.recommend(2, now=0.0, pending=3, oldest=6.0).workers == 3
    # never down while items wait
    slow = ScalingAdvisor(target=10.0)
    for t in range(10):
        slow.observe_arrival(float(t) * 100)
        slow.observe_processing(0.01)
    assert slow.recommend(5, now=1000.0, pending=1, oldest=0.5).workers == 5
    assert slow.recommend(5, now=1000.0).workers < 5


def test_the_scale_rule_goes_up_at_once_and_down_after_a_quiet_cooldown() -> None:
    rule = ScaleRule(minimum=1, maximum=4, per_worker=2, max_age=5.0, cooldown=10.0)
    busy = {"pending": 9, "in_flight": 1, "oldest_age": 1.0}
    assert rule.decide(0, busy, 0.0).target == 4                   # ceil(10 / 2), capped
    assert rule.decide(1, {"pending": 1, "in_flight": 0, "oldest_age": 9.0},
                       1.0).target == 2                            # too old: one more
    idle = {"pending": 0, "in_flight": 0, "oldest_age": 0.0}
    assert rule.decide(4, idle, 2.0).target == 4                   # quiet, not for long
    assert rule.decide(4, idle, 11.9).target == 4
    down = rule.decide(4, idle, 12.0)
    assert down.target == 1 and "scale down" in down.reason        # never below min
    with pytest.raises(ValueError, match="min <= max"):
        ScaleRule(minimum=3, maximum=2)


# -- the queue's numbers -------------------------------------------------------------

def test_the_queue_exports_its_numbers_and_the_age_of_its_oldest_item() -> None:
    with posa.LocalRegistry() as registry, \
            posa.WorkQueue("work/gauged", registry=registry,
                           advisor=ScalingAdvisor(target=0.5)) as queue:
        queue.put({f"k{i}": i for i in range(5)})
        metrics = queue.wait_until(lambda m: m["oldest_age"] > 0.5, timeout=30)
        assert metrics["pending"] == 5
        # the advice follows the old backlog (no worker has been seen: one to start)
        queue.wait_until(lambda m: (m["scaling"] or {}).get("workers", 0) >= 1, timeout=30)
        text = ops.Monitor(queue).metrics()
    assert 'posa_queue_pending{name="work/gauged"} 5.0' in text
    assert "# TYPE posa_queue_oldest_age_seconds gauge" in text
    assert 'posa_queue_redelivered_total{name="work/gauged"} 0.0' in text
    for metric in ("posa_queue_in_flight", "posa_queue_dead"):
        assert f'{metric}{{name="work/gauged"}} 0.0' in text


# -- real worker processes -----------------------------------------------------------

@pytest.fixture
def registry(dispatcher: str) -> Iterator[posa.RegistryClient]:
    with posa.RegistryClient(dispatcher) as client:
        yield client


def test_the_autoscaler_goes_up_under_a_backlog_and_down_when_idle(
        dispatcher: str, registry: posa.RegistryClient, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    # each item waits until the test opens the gate, then echoes itself
    program = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; cat"]
    worker = [sys.executable, "-m", "posa", "worker", "--queue", "work/auto",
              "--dispatcher", dispatcher, "--grace", "5", "--", *program]
    done: list[str] = []
    with posa.WorkQueue("work/auto", registry=registry,
                        on_done=lambda key, result: done.append(key)) as queue:
        queue.put({f"item-{i}": f"data {i}" for i in range(12)})
        rule = ScaleRule(minimum=1, maximum=3, per_worker=1, max_age=1.0, cooldown=0.5)
        with Autoscaler("work/auto", worker, registry=registry, rule=rule,
                        interval=0.1, grace=10.0) as scaler:
            wait_until(lambda: len(scaler.running) == 3, timeout=60,
                       what="three workers under the backlog")
            queue.wait_until(lambda m: m["workers"] >= 2 and m["in_flight"] >= 2,
                             timeout=60)
            assert scaler.stats["scale_ups"] >= 1
            assert 'posa_autoscale_workers{name="work/auto/autoscaler"} 3.0' in \
                ops.Monitor(scaler).metrics()
            gate.touch()
            queue.join(timeout=60)
            wait_until(lambda: len(scaler.running) == 1 and not scaler.stopping,
                       timeout=60, what="back to one worker when idle")
            reasons = [d.reason for d in scaler.decisions]
        assert any(r.startswith("scale up") for r in reasons)
        assert any(r.startswith("scale down") for r in reasons)
        assert scaler.stats["stopped"] >= 2 and scaler.stats["killed"] == 0
    assert sorted(done) == sorted(f"item-{i}" for i in range(12))


def test_posa_autoscale_runs_workers_for_a_queue_and_stops_them_on_sigterm(
        dispatcher: str, registry: posa.RegistryClient) -> None:
    from tests.support import Proc
    with posa.WorkQueue("work/cli-auto", registry=registry) as queue:
        scaler = Proc.posa("autoscale", "--queue", "work/cli-auto", "--min", "1", "--max",
                           "2", "--interval", "0.1", "--dispatcher", dispatcher, "--grace",
                           "10", "--", "tr", "a-z", "A-Z")
        try:
            assert "1..2 worker(s) running tr a-z A-Z" in scaler.expect("autoscale work/cli-auto")
            results: dict[str, object] = {}
            queue.on_done = lambda key, result: results.__setitem__(key, result)
            queue.put({"a": b"abc", "b": b"xyz"})
            queue.join(timeout=60)
            assert results == {"a": "ABC", "b": "XYZ"}
            assert scaler.terminate(timeout=30) == 0
            assert registry.names("work/cli-auto/*") == []     # its workers drained, left
        finally:
            scaler.close()
