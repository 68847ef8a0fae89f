"""/metrics as Prometheus reads it: prometheus_client's own parser, each series
once, the standard process metrics, request latency histograms fed by the peers."""
from __future__ import annotations

import json
import os
import urllib.request
from collections import Counter
from typing import Any

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import posa
from posa.ops import Monitor, OpsServer
from tests.support import Proc, free_port

pytestmark = pytest.mark.timeout(120)

Series = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str) -> dict[Series, float]:
    """``url``'s /metrics through prometheus_client's parser: every series once."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return parse(text)


def parse(text: str) -> dict[Series, float]:
    seen: Counter[Series] = Counter()
    values: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series = (sample.name, tuple(sorted(sample.labels.items())))
            seen[series] += 1
            values[series] = sample.value
    assert not [s for s, n in seen.items() if n > 1], "series twice: " + repr(
        [s for s, n in seen.items() if n > 1])
    return values


def value(values: dict[Series, float], metric: str, **labels: str) -> float:
    return values[(metric, tuple(sorted(labels.items())))]


def health(url: str) -> Any:
    with urllib.request.urlopen(url + "/health", timeout=10) as answer:
        return json.loads(answer.read())


PROCESS = {"process_cpu_seconds_total", "process_resident_memory_bytes",
           "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
           "process_start_time_seconds"}


def test_a_dispatcher_process_exports_each_series_once_with_process_metrics_and_latency(
        ) -> None:
    address, ops_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    proc = Proc.posa("dispatcher", "--listen", address, "--ops-port", str(ops_port))
    try:
        url = proc.expect("posa dispatcher").rsplit("ops on ", 1)[1]
        with posa.RegistryClient(address, cache=False) as registry:
            registry.register("app/x", ["tcp://127.0.0.1:9"], credential="c")
            for _ in range(5):
                registry.lookup("app/x")
        values = scrape(url)
        names = health(url)["names"]
    finally:
        proc.close()
    assert len(names) == 1 and names[0].startswith("posa/dispatcher/"), names
    me = names[0]
    assert value(values, "posa_requests_in_flight", name=me) == 0
    assert {metric for metric, _ in values} >= PROCESS
    assert value(values, "process_open_fds") > 0
    assert value(values, "process_resident_memory_bytes") > 1_000_000
    # the register and the lookups, timed from arrival to answer by the dispatcher
    assert value(values, "posa_request_seconds_count", name=me) >= 6
    assert value(values, "posa_request_seconds_bucket", name=me, le="+Inf") >= 6
    # a dispatcher's registry quotas are its own refusals, not a listener's
    assert not [labels for metric, labels in values if metric == "posa_rejections_total"
                and dict(labels).get("reason", "").startswith("registry")
                and "listener" in dict(labels)]


def test_a_channel_a_queue_and_a_peer_each_series_once() -> None:
    with posa.LocalRegistry() as registry, \
            posa.EventChannel("ev/metrics", registry=registry) as channel, \
            posa.WorkQueue("q/metrics", registry=registry) as queue, \
            posa.Peer("app/echo", registry=registry, handler=lambda m: m.body) as peer, \
            posa.Peer("app/client", registry=registry) as client:
        for i in range(3):
            assert client.request("app/echo", i, timeout=10) == i
        for watched in (channel, queue, peer):
            with OpsServer(Monitor(watched)) as server:
                values = scrape(server.url)
                names = health(server.url)["names"]
            assert names == [watched.name], names       # a service and its peer: once
            assert {metric for metric, _ in values} >= PROCESS
            assert value(values, "posa_requests_in_flight", name=watched.name) == 0
        with OpsServer(Monitor(peer)) as server:
            client.request("app/echo", "timed", timeout=10)
            values = scrape(server.url)
        assert value(values, "posa_request_seconds_count", name="app/echo") == 1


def test_process_metrics_are_the_ones_prometheus_client_exports() -> None:
    ours = {metric: v for (metric, _), v in parse(Monitor().metrics()).items()
            if metric.startswith("process_")}
    theirs = {sample.name: sample.value for family in ProcessCollector(registry=None).collect()
              for sample in family.samples}
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert ours["process_start_time_seconds"] == pytest.approx(
        theirs["process_start_time_seconds"], abs=1.0)
    assert ours["process_max_fds"] == theirs["process_max_fds"]
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]
    try:
        more = parse(Monitor().metrics())
    finally:
        for fd in opened:
            os.close(fd)
    assert value(more, "process_open_fds") >= ours["process_open_fds"] + 10


def test_a_service_wrapping_a_peer_is_one_subject_for_health_and_series() -> None:
    with posa.LocalRegistry() as registry, posa.Peer("svc/one", registry=registry) as peer:
        class Service:                  # what a service offers beside its peer
            name, address = peer.name, peer.address

            def __init__(self) -> None:
                self.peer, self.registry = peer, registry

            def in_flight(self) -> int:
                return 3
        for monitor in (Monitor(Service(), peer), Monitor(peer, Service())):  # either order
            assert monitor.health()["names"] == ["svc/one"]
            values = parse(monitor.metrics())
            assert value(values, "posa_requests_in_flight", name="svc/one") == 3  # the service's
            assert ("posa_request_seconds_count", (("name", "svc/one"),)) in values
