"""A clean stop on SIGTERM: stop accepting, drain in-flight work, close.

``serve_until_signalled(closeables, grace=...)`` blocks until SIGTERM/SIGINT,
then turns health to "draining", and for each closeable, in order:
``stop_accepting()`` if it has one; then, until ``grace`` runs out, wait while
``in_flight()`` (or its gatekeeper's ``in_flight``) is non-zero; then
``close()`` (a peer's close unregisters its name).  A second signal cuts the
drain short.  A failing step is logged and the shutdown goes on.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from posa.ops.monitor import Monitor, in_flight_counter
from posa.ops.server import OpsServer

__all__ = ["serve_until_signalled"]

log = logging.getLogger("posa.ops")


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

def _drain(closeable: Any, deadline: float, hurry: threading.Event) -> None:
    in_flight = in_flight_counter(closeable)
    if in_flight is None:
        return
    while in_flight() and not hurry.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("%s: %d request(s) still in flight after the grace period",
                        closeable, in_flight())
            return
        hurry.wait(min(remaining, 0.01))
