"""``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text format 0.0.4).

A standard-library HTTP server on its own daemon thread, bound to 127.0.0.1
unless told otherwise; a slow client is cut off after 5 s, and a failed request
is logged, never raised into the process.  Health answers 503 while the
monitor drains or a watched name is not registered here.
"""
from __future__ import annotations

import http.server
import json
import logging
import threading
from typing import Any

from posa.errors import PosaError
from posa.ops.monitor import Monitor

__all__ = ["OpsServer"]

log = logging.getLogger("posa.ops")


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
        bound, self.port = self._server.server_address[:2]
        self.host = bound.decode() if isinstance(bound, bytes) else bound
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
