"""Health, metrics and the signalled shutdown."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

import posa
from posa.admission.gatekeeper import Gatekeeper
from posa.admission.quotas import InFlight
from posa.ops import Histogram, Monitor, OpsServer, serve_until_signalled, timed
from posa.ops.histogram import FOLD_AT
from posa.wire.codec import Codec
from tests.support import Proc, start_dispatcher

pytestmark = pytest.mark.timeout(120)

SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="(?:[^"\\]|\\.)*")(,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
                    r'(-?[0-9.e+-]+|\+Inf)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Check the Prometheus text format; return ``{'metric{labels}': value}``."""
    assert text.endswith("\n")
    values: dict[str, float] = {}
    described: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            described[line.split()[1] + " " + line.split()[2]] += 1
            if line.startswith("# TYPE "):
                assert line.split()[3] in ("counter", "gauge", "histogram"), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        key, value = line.rsplit(" ", 1)
        assert key not in values, f"a series comes twice: {key}"
        values[key] = float(value)
    assert all(count == 1 for count in described.values()), described
    return values


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


# ---------------------------------------------------------------- histogram
def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram("t_seconds", "test", buckets=(0.01, 0.1, 1.0), labels={"op": "x"})
    for value in (0.005, 0.01, 0.05, 0.5, 5.0):
        h.observe(value)
    samples = {(name, labels.get("le")): value for name, labels, value in h.samples()}
    assert samples[("t_seconds_bucket", "0.01")] == 2
    assert samples[("t_seconds_bucket", "0.1")] == 3
    assert samples[("t_seconds_bucket", "1.0")] == 4
    assert samples[("t_seconds_bucket", "+Inf")] == 5
    assert samples[("t_seconds_count", None)] == 5
    assert samples[("t_seconds_sum", None)] == pytest.approx(5.565)
    with pytest.raises(ValueError, match="increasing"):
        Histogram(buckets=(1.0, 0.5))


def test_histogram_counts_every_observation_of_every_thread_once() -> None:
    """Observations queued without a lock and counted in folds: from 8 threads
    at once, fewer and more than a fold's worth each, all counted, none twice."""
    h = Histogram("t_seconds", "test", buckets=(0.25, 0.5))
    per_thread = [FOLD_AT // 3 + 7 * i for i in range(8)]

    def observe(n: int) -> None:
        for k in range(n):
            h.observe((0.1, 0.3, 0.9)[k % 3])

    threads = [threading.Thread(target=observe, args=(n,)) for n in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = Counter(slot for n in per_thread for slot in (k % 3 for k in range(n)))
    samples = {(name, labels.get("le")): value for name, labels, value in h.samples()}
    assert samples[("t_seconds_bucket", "0.25")] == expected[0]
    assert samples[("t_seconds_bucket", "0.5")] == expected[0] + expected[1]
    assert samples[("t_seconds_count", None)] == sum(per_thread)
    assert samples[("t_seconds_sum", None)] == pytest.approx(
        sum((0.1, 0.3, 0.9)[slot] * n for slot, n in expected.items()))
    h.observe(0.3)                                      # one short of a fold: counted
    assert dict(((name, labels.get("le")), v) for name, labels, v in h.samples())[
        ("t_seconds_count", None)] == sum(per_thread) + 1


def test_timed_handler_and_context() -> None:
    h = Histogram()
    assert timed(lambda m: m * 2, h)(21) == 42
    with pytest.raises(KeyError):
        timed(lambda m: {}[m], h)("missing")
    with h.time():
        pass
    assert dict((name, v) for name, _, v in h.samples())["posa_request_seconds_count"] == 3


# ----------------------------------------------------------------- monitor
def test_health_names_the_registered_peers(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        monitor = Monitor(a, b)
        health = monitor.health()
        assert health["ok"] and health["status"] == "serving"
        assert health["names"] == ["net/a", "net/b"] and health["uptime"] >= 0
        registry.register("net/moved", ["tcp://127.0.0.1:9"], credential="c")
        monitor.add(SimpleNamespace(name="net/moved", registry=registry,
                                    address="tcp://127.0.0.1:8"))
        monitor.add(SimpleNamespace(name="net/gone", registry=registry,
                                    address="tcp://127.0.0.1:7"))
        health = monitor.health()
        assert not health["ok"] and health["names"] == ["net/a", "net/b"]
        assert any("net/moved is registered at tcp://127.0.0.1:9" in p for p in health["problems"])
        assert any("net/gone" in p and "no live registration" in p for p in health["problems"])
    monitor = Monitor()
    monitor.draining = True
    health = monitor.health()
    assert not health["ok"] and health["status"] == "draining"


def test_metrics_read_the_objects_given(registry: posa.LocalRegistry) -> None:
    gatekeeper = Gatekeeper(Codec(), in_flight=InFlight())
    histogram = Histogram()
    with posa.Peer("net/b", registry=registry, gatekeeper=gatekeeper,
                   handler=timed(lambda m: m.body, histogram)) as b, \
            posa.Peer("net/a", registry=registry) as a:
        for i in range(3):
            assert a.request("net/b", i, timeout=5) == i
        gatekeeper.rejections["malformed"] += 2
        queue = SimpleNamespace(name='odd "name"\\', depths=lambda: {"backlog": 7},
                                stats={"events": 4, "flag": True})
        values = parse_metrics(Monitor(a, b, registry, histogram, queue).metrics())
    assert values["posa_up"] == 1
    assert values['posa_messages_received_total{name="net/b"}'] == 3
    assert values['posa_messages_received_total{name="net/a"}'] == 0
    assert values['posa_rejections_total{name="net/b",reason="malformed"}'] == 2
    assert values['posa_requests_in_flight{name="net/b"}'] == 0
    assert values["posa_registry_names"] == 2
    assert values['posa_request_seconds_count'] == 3
    assert values['posa_request_seconds_bucket{le="+Inf"}'] == 3
    assert values['posa_queue_depth{name="odd \\"name\\"\\\\",queue="backlog"}'] == 7
    assert values['posa_events_total{name="odd \\"name\\"\\\\"}'] == 4
    assert not any("flag" in key for key in values)


def test_a_service_is_read_with_its_peer(registry: posa.LocalRegistry) -> None:
    with posa.Peer("svc/x", registry=registry) as peer:
        service = SimpleNamespace(peer=peer, stats={"requests": 5})
        values = parse_metrics(Monitor(service).metrics())
        assert values["posa_requests_total"] == 5
        assert values['posa_messages_received_total{name="svc/x"}'] == 0
        assert Monitor(service).health()["names"] == ["svc/x"]


def test_each_series_once_and_listener_refusals_by_address(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/b", registry=registry,
                   listen=["tcp://127.0.0.1:0", "inproc://net-b"]) as b:
        tcp = b.addresses[0]
        host, port = tcp.removeprefix("tcp://").rsplit(":", 1)
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"HELO not posa")
        wait_until(lambda: b.transport_rejections().get("garbage") == 3)
        b.gatekeeper.rejections["malformed"] += 1
        service = SimpleNamespace(peer=b, name="net/b", in_flight=lambda: 7,
                                  stats={"requests": 1})
        values = parse_metrics(Monitor(service).metrics())    # no series twice
    assert values['posa_requests_in_flight{name="net/b"}'] == 7      # the service's
    assert values[f'posa_rejections_total{{name="net/b",listener="{tcp}",reason="garbage"}}'] == 3
    assert values['posa_rejections_total{name="net/b",reason="malformed"}'] == 1
    assert not any("inproc" in key for key in values)      # nothing refused there


# ------------------------------------------------------------- ops server
def test_ops_server_answers_health_and_metrics(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a:
        monitor = Monitor(a)
        with OpsServer(monitor) as server:
            assert server.host == "127.0.0.1" and server.port > 0
            status, kind, body = get(server.url + "/health")
            assert status == 200 and kind == "application/json"
            assert json.loads(body)["names"] == ["net/a"]
            status, kind, body = get(server.url + "/metrics?x=1")
            assert status == 200 and kind.startswith("text/plain; version=0.0.4")
            assert parse_metrics(body)["posa_up"] == 1
            assert get(server.url + "/nothing")[0] == 404
            monitor.draining = True
            status, _, body = get(server.url + "/health")
            assert status == 503 and json.loads(body)["status"] == "draining"
            assert parse_metrics(get(server.url + "/metrics")[2])["posa_up"] == 0
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(b"NONSENSE\r\n\r\n")     # the server's own refusals count
                assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
            values = parse_metrics(get(server.url + "/metrics")[2])
            assert values[f'posa_rejections_total{{listener="{server.url}",'
                          f'reason="bad-request"}}'] == 1
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.url + "/health", timeout=2)


def test_ops_server_port_in_use_says_what_to_do() -> None:
    with OpsServer(Monitor()) as server:
        with pytest.raises(posa.PosaError, match="choose another --ops-port"):
            OpsServer(Monitor(), port=server.port)


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid", "192.0.2.1"])
def test_ops_server_on_a_host_not_here_says_to_fix_the_host(host: str) -> None:
    """It used to say 'choose another --ops-port' for any failure, the host's too."""
    with pytest.raises(posa.PosaError, match="give --ops-host an address of this machine"):
        OpsServer(Monitor(), host=host, port=0)


# ------------------------------------------------------------------ shutdown
class Closeable:
    def __init__(self, name: str, log: list[str], busy: int = 0) -> None:
        self.name, self.log, self.busy = name, log, busy

    def stop_accepting(self) -> None:
        self.log.append(f"stop {self.name}")

    def in_flight(self) -> int:
        return self.busy

    def close(self) -> None:
        self.log.append(f"close {self.name} busy={self.busy}")


def run_in_thread(fn: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(**kwargs)))
    thread.start()
    return thread, result


def test_shutdown_stops_drains_then_closes_in_order() -> None:
    log: list[str] = []
    first, second = Closeable("first", log, busy=1), Closeable("second", log)
    stop = threading.Event()
    monitor = Monitor()
    server = OpsServer(monitor)
    thread, result = run_in_thread(serve_until_signalled, closeables=[first, second],
                                   grace=30, monitor=monitor, server=server, stop=stop)
    stop.set()
    wait_until(lambda: len(log) == 2)
    assert monitor.draining and log == ["stop first", "stop second"]
    first.busy = 0                  # the last request is answered
    thread.join(10)
    assert result == [0]
    assert log == ["stop first", "stop second", "close first busy=0", "close second busy=0"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/health", timeout=2)


def test_shutdown_gives_up_waiting_after_the_grace_period() -> None:
    log: list[str] = []
    stuck = Closeable("stuck", log, busy=3)
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert serve_until_signalled([stuck], grace=0.2, stop=stop) == 0
    assert 0.2 <= time.monotonic() - started < 5
    assert log == ["stop stuck", "close stuck busy=3"]


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.005)           # polling state another thread changes, bounded


def test_sigterm_starts_it_and_a_second_signal_hurries() -> None:
    log: list[str] = []
    stuck = Closeable("stuck", log, busy=1)
    before = signal.getsignal(signal.SIGTERM)

    def kill_twice() -> None:
        wait_until(lambda: signal.getsignal(signal.SIGTERM) is not before)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: log)     # draining has begun
        os.kill(os.getpid(), signal.SIGTERM)
    killer = threading.Thread(target=kill_twice)
    killer.start()
    started = time.monotonic()
    try:
        assert serve_until_signalled([stuck], grace=60) == 0
    finally:
        killer.join()
    assert time.monotonic() - started < 30
    assert log == ["stop stuck", "close stuck busy=1"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_peer_closes_and_unregisters_on_shutdown(registry: posa.LocalRegistry) -> None:
    peer = posa.Peer("net/a", registry=registry, gatekeeper=Gatekeeper(
        Codec(), in_flight=InFlight()))
    stop = threading.Event()
    stop.set()
    assert serve_until_signalled([peer], grace=1, stop=stop) == 0
    with pytest.raises(posa.NameNotFound):
        registry.lookup("net/a")


SERVICE = """
import sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import posa
from posa.admission.quotas import InFlight
from posa.ops import Histogram, Monitor, OpsServer, serve_until_signalled

class EchoService:
    '''Answers on worker threads (DEFERRED); refuses new work once stopping.'''

    def __init__(self, registry):
        self.tracker = InFlight(max_per_sender=100000, max_total=100000)
        self.accepting = True
        self.lock = threading.Lock()
        self.stats = {"answered": 0, "refused": 0}
        self.latency = Histogram()
        self.workers = ThreadPoolExecutor(4)
        self.peer = posa.Peer("svc/echo", registry=registry, listen="tcp://127.0.0.1:0",
                              handler=self.handle)

    def handle(self, msg):                  # on the reactor thread
        if not self.accepting:
            self.stats["refused"] += 1
            raise posa.Rejected("svc/echo is shutting down; ask again elsewhere")
        self.tracker.enter(msg)
        self.workers.submit(self.work, msg, time.perf_counter())
        return posa.DEFERRED

    def work(self, msg, started):
        time.sleep(0.002)                   # the work
        self.peer.reply(msg, msg.body)
        with self.lock:
            self.stats["answered"] += 1
        self.latency.observe(time.perf_counter() - started)
        self.tracker.leave(msg)

    def stop_accepting(self):               # between two handler calls, on the reactor
        def stop():
            self.accepting = False
        self.peer.reactor.call(stop)

    def in_flight(self):
        return len(self.tracker)

    def close(self):
        self.peer.close()
        self.workers.shutdown()

registry = posa.RegistryClient(sys.argv[1])
service = EchoService(registry)
monitor = Monitor(service, service.latency)
server = OpsServer(monitor)
print("READY", server.url, flush=True)
serve_until_signalled([service], grace=10, monitor=monitor, server=server)
registry.close()
print("DONE", service.stats["answered"], service.stats["refused"], flush=True)
"""


def test_sigterm_under_load_answers_every_accepted_request() -> None:
    dispatcher, address = start_dispatcher()
    service = Proc.python(SERVICE, address)
    registry = posa.RegistryClient(address, cache=False)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        def resolve(name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
            registration = registry.lookup(name)
            return registration.addresses, registration.epoch
        sender = posa.delivery.sender.Sender(f"cli/{n}", resolve=resolve)
        try:
            for i in range(100_000):
                if stop.is_set():
                    return
                try:
                    assert sender.request("svc/echo", [n, i], timeout=10).body == [n, i]
                    outcome = "answered"
                except posa.Rejected:
                    outcome = "refused"
                except (posa.NameNotFound, posa.Timeout, posa.TransportError):
                    return                  # the service is gone
                with lock:
                    outcomes[outcome] += 1
        finally:
            sender.close()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        ops_url = service.expect("READY")
        for thread in clients:
            thread.start()
        wait_until(lambda: outcomes["answered"] >= 200, timeout=60)
        metrics = parse_metrics(get(ops_url + "/metrics")[2])
        assert metrics["posa_request_seconds_count"] > 0
        assert service.terminate(30) == 0
        answered, refused = map(int, service.expect("DONE").split())
        stop.set()
        for thread in clients:
            thread.join(60)
        assert answered >= 200
        assert +outcomes == +Counter(answered=answered, refused=refused)
        with pytest.raises(posa.NameNotFound):
            registry.lookup("svc/echo")
    finally:
        stop.set()
        for thread in clients:
            if thread.is_alive():
                thread.join(60)
        registry.close()
        service.close()
        dispatcher.close()
