"""Operating a posa process: health, metrics, and a clean stop on SIGTERM.

``Monitor``        health and Prometheus metrics of the objects it is given
                   (peers, gatekeepers, dispatchers, registries, histograms):
                   it reads their counters when asked, and keeps no globals.
``OpsServer``      ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text
                   format 0.0.4) over HTTP, on its own thread, bound to
                   127.0.0.1 unless told otherwise.
``Histogram``      a latency histogram (``observe``, ``time()``, ``timed``).
``serve_until_signalled(closeables, grace=...)``
                   block until SIGTERM/SIGINT, then stop accepting, drain
                   in-flight work within ``grace`` seconds, close (a peer's close
                   unregisters its name) and return 0 for the exit status.

What a monitored object may offer (each is optional; see docs/operations.md):

    name                   label of its samples
    stats                  {event: count} -> posa_messages_<event>_total for
                           received/sent, else posa_<event>_total
    rejections             Counter -> posa_rejections_total{reason}
    gatekeeper             its rejections and in_flight are read too
    depths()               {queue: depth} -> posa_queue_depth{queue}
    registry, name, address(es)   health checks that the name is registered here
    names("**")            a registry: posa_registry_names
    peer                   a service wrapping a peer: the peer is read too

Shutdown protocol of a closeable, in order: ``stop_accepting()`` if it has one;
then, until ``grace`` runs out, wait while ``in_flight()`` (or its gatekeeper's
``in_flight``) is non-zero; then ``close()``.
"""
from __future__ import annotations

import argparse
import bisect
import http.server
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from posa.errors import PosaError
from posa.wire.codec import Message

__all__ = ["Monitor", "OpsServer", "Histogram", "timed", "serve_until_signalled",
           "add_arguments", "DEFAULT_BUCKETS"]

log = logging.getLogger("posa.ops")

DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAT_NAMES = {"received": "posa_messages_received_total",
               "sent": "posa_messages_sent_total"}


class Histogram:
    """Observations counted in cumulative buckets (seconds by default).

    ``observe`` may be called from any thread."""

    def __init__(self, name: str = "posa_request_seconds",
                 help: str = "time from a request's arrival to its answer, seconds",
                 buckets: Sequence[float] = DEFAULT_BUCKETS,
                 labels: Mapping[str, str] | None = None) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and not empty")
        self.name = name
        self.help = help
        self.buckets = tuple(float(b) for b in buckets)
        self.labels = dict(labels or {})
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        slot = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[slot] += 1
            self._sum += value

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe how long the ``with`` block takes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out = []
        running = 0
        for bound, count in zip(self.buckets + (float("inf"),), counts):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append((self.name + "_bucket", {**self.labels, "le": le}, float(running)))
        out.append((self.name + "_sum", dict(self.labels), total))
        out.append((self.name + "_count", dict(self.labels), float(running)))
        return out


def timed(handler: Callable[[Message], Any], histogram: Histogram) -> Callable[[Message], Any]:
    """``handler`` that observes its own duration in ``histogram`` (for
    ``Peer.serve``; a handler that returns ``DEFERRED`` should call
    ``histogram.observe`` itself when it replies)."""
    def run(msg: Message) -> Any:
        start = time.perf_counter()
        try:
            return handler(msg)
        finally:
            histogram.observe(time.perf_counter() - start)
    return run


# -------------------------------------------------------------------- monitor
class Monitor:
    """Health and metrics of the objects given to it. Thread-safe to read."""

    def __init__(self, *sources: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._sources: list[Any] = []
        self._clock = clock
        self.started = clock()
        self.draining = False
        self.add(*sources)

    def add(self, *sources: Any) -> None:
        """Watch more objects (a service's ``peer`` is watched with it)."""
        for source in sources:
            if source not in self._sources:
                self._sources.append(source)
            inner = getattr(source, "peer", None)
            if inner is not None and inner not in self._sources:
                self._sources.append(inner)

    def health(self) -> dict[str, Any]:
        """``{"ok", "status", "names", "uptime", "problems"}``: ok is False while
        draining or when a watched peer's name is not registered at its address."""
        names: list[str] = []
        problems: list[str] = []
        for source in self._sources:
            name, registry = getattr(source, "name", None), getattr(source, "registry", None)
            if not isinstance(name, str) or registry is None or not hasattr(source, "address"):
                continue
            try:
                registration = registry.lookup(name)
            except PosaError as exc:
                problems.append(f"{name}: {exc}")
                continue
            mine = set(getattr(source, "addresses", None) or (source.address,))
            if mine & set(registration.addresses):
                names.append(name)
            else:
                problems.append(f"{name} is registered at {', '.join(registration.addresses)}"
                                f", not here ({', '.join(sorted(mine))})")
        status = "draining" if self.draining else "serving"
        return {"ok": not self.draining and not problems, "status": status,
                "names": sorted(names), "uptime": round(self._clock() - self.started, 3),
                "problems": problems}

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as ``(metric, labels, value)``."""
        yield "posa_up", {}, 0.0 if self.draining else 1.0
        yield "posa_uptime_seconds", {}, self._clock() - self.started
        for source in list(self._sources):
            if isinstance(source, Histogram):
                yield from source.samples()
                continue
            name = getattr(source, "name", None)
            who = {"name": name} if isinstance(name, str) else {}
            stats = getattr(source, "stats", None)
            if isinstance(stats, Mapping):
                for key, value in list(stats.items()):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        yield _STAT_NAMES.get(key, f"posa_{_metric_part(key)}_total"), who, value
            for holder in (source, getattr(source, "gatekeeper", None)):
                rejections = getattr(holder, "rejections", None)
                if isinstance(rejections, Mapping):
                    for reason, count in list(rejections.items()):
                        yield "posa_rejections_total", {**who, "reason": str(reason)}, count
            count = _in_flight(source)
            if count is not None:
                yield "posa_requests_in_flight", who, float(count())
            depths = getattr(source, "depths", None)
            if callable(depths):
                for queue, depth in depths().items():
                    yield "posa_queue_depth", {**who, "queue": str(queue)}, depth
            if callable(getattr(source, "names", None)) and hasattr(source, "lookup"):
                try:
                    yield "posa_registry_names", who, float(len(source.names("**")))
                except PosaError as exc:
                    log.info("metrics: the registry did not answer: %s", exc)

    def metrics(self) -> str:
        """The samples in the Prometheus text format (0.0.4)."""
        grouped: dict[str, list[str]] = {}
        for metric, labels, value in self.samples():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            line = f"{metric}{{{label_text}}} {_number(value)}" if labels else \
                f"{metric} {_number(value)}"
            grouped.setdefault(_family(metric), []).append(line)
        described = {h.name: ("histogram", h.help) for h in self._sources
                     if isinstance(h, Histogram)}
        lines = []
        for family, samples in grouped.items():
            kind, text = described.get(family) or _describe(family)
            lines.append(f"# HELP {family} {text}")
            lines.append(f"# TYPE {family} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


_HELP = {
    "posa_up": ("gauge", "1 while the process serves, 0 while it drains for shutdown"),
    "posa_uptime_seconds": ("gauge", "seconds since the monitor started"),
    "posa_messages_received_total": ("counter", "messages handed to the application"),
    "posa_messages_sent_total": ("counter", "messages sent to a recipient"),
    "posa_rejections_total": ("counter", "frames or connections refused, by reason"),
    "posa_requests_in_flight": ("gauge", "requests admitted and not yet answered"),
    "posa_queue_depth": ("gauge", "items waiting in a queue"),
    "posa_registry_names": ("gauge", "live registrations in a registry"),
}


def _family(metric: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if metric.endswith(suffix):
            return metric[:-len(suffix)]
    return metric


def _describe(family: str) -> tuple[str, str]:
    if family in _HELP:
        return _HELP[family]
    return "counter", f"count of {family[5:-6].replace('_', ' ')}"


def _metric_part(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text)).lower()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0                      # a slow client cannot hold the thread longer

    def do_GET(self) -> None:
        monitor = self.server.monitor
        path = self.path.split("?", 1)[0]
        if path == "/health":
            health = monitor.health()
            self._answer(200 if health["ok"] else 503, "application/json",
                         json.dumps(health).encode())
        elif path == "/metrics":
            self._answer(200, "text/plain; version=0.0.4; charset=utf-8",
                         monitor.metrics().encode())
        else:
            self._answer(404, "text/plain; charset=utf-8",
                         b"not found: ask for /health or /metrics\n")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(http.server.HTTPServer):
    monitor: Monitor

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("ops: a request from %s failed", client_address, exc_info=True)


class OpsServer:
    """Serves ``monitor`` over HTTP on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, monitor: Monitor, *, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise PosaError(f"cannot serve health and metrics on {host}:{port}: "
                            f"{exc.strerror}; choose another --ops-port") from None
        self._server.monitor = monitor
        self.monitor = monitor
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="posa-ops", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()

    def __enter__(self) -> OpsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- shutdown
def serve_until_signalled(closeables: Iterable[Any], *, grace: float = 10.0,
                          monitor: Monitor | None = None, server: OpsServer | None = None,
                          signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                          stop: threading.Event | None = None,
                          ready: Callable[[], None] | None = None) -> int:
    """Block until one of ``signals`` (or ``stop`` is set), then shut down:
    health turns to "draining", each closeable stops accepting, in-flight work
    drains for at most ``grace`` seconds (a second signal cuts it short), every
    closeable is closed in order, the ops server stops. Returns 0 (exit status).

    Signal handlers can only be installed from the main thread; elsewhere only
    ``stop`` ends the wait. ``ready`` is called once they are in place: announce
    readiness there, so a signal sent right after the announcement is handled."""
    closeables = list(closeables)
    stop = stop or threading.Event()
    hurry = threading.Event()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        (hurry if stop.is_set() else stop).set()
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
        log.warning("stopping: draining in-flight work for at most %g s", grace)
        if monitor is not None:
            monitor.draining = True
        deadline = time.monotonic() + grace
        for closeable in closeables:
            _call(closeable, "stop_accepting")
        for closeable in closeables:
            _drain(closeable, deadline, hurry)
        for closeable in closeables:
            _call(closeable, "close")
    finally:
        if server is not None:
            server.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0


def _call(closeable: Any, method: str) -> None:
    fn = getattr(closeable, method, None)
    if fn is None:
        return
    try:
        fn()
    except Exception:
        log.exception("%s.%s() failed during shutdown; going on", closeable, method)


def _in_flight(source: Any) -> Callable[[], int] | None:
    """How to count ``source``'s requests in flight: its ``in_flight()``, or the
    length of its (or its gatekeeper's) ``in_flight`` tracker; None if neither."""
    own = getattr(source, "in_flight", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    tracker = own if own is not None else getattr(getattr(source, "gatekeeper", None),
                                                  "in_flight", None)
    return tracker.__len__ if tracker is not None else None


def _drain(closeable: Any, deadline: float, hurry: threading.Event) -> None:
    in_flight = _in_flight(closeable)
    if in_flight is None:
        return
    while in_flight() and not hurry.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("%s: %d request(s) still in flight after the grace period",
                        closeable, in_flight())
            return
        hurry.wait(min(remaining, 0.01))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ops-port``, ``--ops-host`` and ``--grace`` to a subcommand."""
    group = parser.add_argument_group("operations")
    group.add_argument("--ops-port", type=int, default=None, metavar="PORT",
                       help="serve /health and /metrics over HTTP on this port "
                       "(0 picks one; default: off)")
    group.add_argument("--ops-host", default="127.0.0.1", metavar="HOST",
                       help="address for --ops-port (default 127.0.0.1)")
    group.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                       help="on SIGTERM, wait this long for in-flight work (default 10)")
