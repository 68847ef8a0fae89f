"""Operating a posa process: health, metrics, and a clean stop on SIGTERM.

``Monitor``        health and Prometheus metrics of the objects it is given
                   (peers, gatekeepers, dispatchers, registries, histograms):
                   it reads their counters when asked, and keeps no globals.
``OpsServer``      ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text
                   format 0.0.4) over HTTP: one event loop on its own thread,
                   bound to 127.0.0.1 unless told otherwise, with limits (header
                   deadline and size, connections, idle and write timeouts) that
                   slow or hostile clients cannot get past; its refusals are
                   counted in its ``rejections``.
``Histogram``      a latency histogram (``observe``, ``time()``, ``timed``).
``trace_context(headers)``, ``trace_headers()``
                   W3C trace context: run a block inside a trace taken from
                   headers (a message's, an HTTP request's); the headers a
                   message sent now would carry.  Messages carry the active
                   trace by themselves (``posa.runtime.trace``).
``serve_until_signalled(closeables, grace=...)``
                   block until SIGTERM/SIGINT, then stop accepting, drain
                   in-flight work within ``grace`` seconds, close (a peer's close
                   unregisters its name) and return 0 for the exit status.

One module per concept: ``histogram``, ``monitor`` (what a monitored object
may offer), ``process`` (the standard ``process_*`` metrics), ``request``
(HTTP request heads and answers, sans-IO), ``hygiene`` (the server's limits,
connection phases and eviction, sans-IO), ``server``, ``shutdown`` (the
protocol a closeable follows).  They
are internal; this package names what is public.  The command-line options
(``--ops-port``, ``--grace``) live with the ``posa`` command (``posa.cli``).
"""
from __future__ import annotations

from posa.ops.histogram import DEFAULT_BUCKETS, Histogram, timed
from posa.ops.monitor import Monitor
from posa.ops.server import OpsServer
from posa.ops.shutdown import serve_until_signalled
from posa.runtime.trace import context as trace_context
from posa.runtime.trace import headers as trace_headers

__all__ = ["Monitor", "OpsServer", "Histogram", "timed", "serve_until_signalled",
           "DEFAULT_BUCKETS", "trace_context", "trace_headers"]
