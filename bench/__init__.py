"""posa's benchmark suite: posa and what a user would pick instead, in one run.

    python -m bench [--reps N] [--scale F] [--only a,b] [--no-anchors] [--out DIR]

Every row runs in processes of its own, with the message of the anchors in
``../shared/anchors`` (``msgpack({"seq": i, "body": b"x" * 83})``, ~100 B),
READY handshakes and loops bounded in count and time.  Rep 1 of every row
runs, then rep 2, ... (round robin), and each anchor runs right before the
first posa row compared with it, so that ratios are taken between rows that
ran seconds apart.  The report (``docs/benchmarks.md``) gives medians
[min-max] and, for every goal, the median of the per-rep ratios.

Plug-in shape: how an area adds its benchmarks
----------------------------------------------
An area is a module ``bench/<area>.py`` named in ``AREAS`` below.  It defines

``BENCHES: list[Bench]``
    its rows.  ``Bench.run(ctx, n) -> dict[str, float | bool]`` measures one
    rep with ``n`` messages (the row's ``n`` times ``--scale``) and returns its
    metrics.  It starts every process through ``ctx`` (a ``bench.runner.Context``):

    - ``ctx.spawn("bench.<area>", "ROLE", hold=False, **kwargs)`` runs
      ``role_ROLE(**kwargs)`` of that module in a new process (see
      ``bench.common`` for ``ready()``, ``emit()``, ``wait_release()``);
      ``.wait_ready()`` returns what the role passed to ``ready()``,
      ``.result()`` the dict it passed to ``emit()``;
    - ``ctx.dispatcher()`` the address of a ``posa dispatcher`` process shared
      by the run, ``ctx.start_dispatcher(state=PATH)`` one of the row's own;
    - ``ctx.address(scheme)`` a listen address for a transport scheme,
      ``ctx.tmpdir`` a directory removed after the run, ``ctx.scale``;
    - ``ctx.anchor_runner(needs)`` the anchors' ``runner.py`` module, to run an
      anchor's processes in a row of your own (``needs``: ``"Pyro5"``, ``"nats"``;
      a missing one skips the row with a message).

    Every process a row started is stopped by PID when the row ends.
    ``Bench.columns`` names the metrics its table shows (``ONEWAY``, ``RR``,
    ``LOOKUP``, ``FANOUT``, ``GAP`` below, or a tuple of your own); the first
    is the row's headline metric.  ``Bench.versus`` names a row to show a
    ratio against when no goal names the row; ``Bench.beside`` names more
    anchors to run before the row and show ratios against.
``GOALS: list[Goal]``
    the acceptance goals it checks: a ratio of two rows' metrics
    (``num`` / ``den``, each ``(row key, metric)``; ``den`` an anchor's key
    from ``bench.anchors.ANCHORS`` or another posa row), or a bound on one
    metric (``den=None``).  The runner runs every anchor a goal names.

Nothing else is needed: the runner imports the module, runs its rows in the
round robin, checks its goals and reports them.  An area module that does not
exist yet is reported as a pending slot.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Bench", "Goal", "Column", "AREAS", "ONEWAY", "RR", "LOOKUP", "FANOUT", "GAP"]

# The areas in report order: (module under bench/, title, what it must measure).
AREAS: tuple[tuple[str, str, str], ...] = (
    ("transport", "1. Transports (frame level)",
     "one-way and request-reply per transport against raw pyzmq, asyncio and SimpleQueue"),
    ("peer", "2. Peers (Forwarder-Receiver)",
     "Peer.send, Peer.request, posa.aio and migration blackout"),
    ("dispatcher", "3. Dispatcher (Client-Dispatcher-Server)",
     "lookups, cached lookups, Client.call, lookups among 100k names"),
    ("channel", "4. Event channel",
     "1 publisher -> channel -> 4 subscriber processes, against NATS with 4 subscribers "
     "and raw pyzmq PUB->SUB"),
    ("work", "5. Work queue",
     "work-queue throughput against the anchors its engineer chooses"),
    ("security", "6. Security",
     "authentication on against off (goal >= 0.7x)"),
    ("aio", "7. asyncio",
     "1 task against 10 tasks sharing one posa.aio.Peer, with the event loop's lag"),
    ("scale", "8. Scale (concurrent callers)",
     "request-reply and uncached lookups with 1/4/16/64 concurrent callers, posa against "
     "Pyro5 and NATS request-reply"),
    ("cores", "8b. More than one core",
     "a service on one server process against two, called by two client processes"),
    ("idle", "8c. Idle connections",
     "memory per idle connection and lookup p99 beside 2,000 idle clients, against Pyro5"),
    ("gateway", "9. HTTP gateway",
     "request-reply over keep-alive HTTP against Pyro5's HTTP gateway; SSE delivery"),
    ("natsrows", "10. NATS",
     "posa over nats:// against nats-py; NatsRegistry lookups against the dispatcher's"),
)

# Column sets: (metric, header, format) with format one of rate, us, ms, ratio, int, bool.
Column = tuple[str, str, str]
ONEWAY: tuple[Column, ...] = (("msgs_per_s", "msgs/s", "rate"),
                              ("rx_msgs_per_s", "receiver-side msgs/s", "rate"),
                              ("complete", "complete", "bool"))
RR: tuple[Column, ...] = (("p50_us", "p50 µs", "us"), ("p99_us", "p99 µs", "us"),
                          ("calls_per_s", "calls/s", "rate"))
LOOKUP: tuple[Column, ...] = (("lookups_per_s", "lookups/s", "rate"),
                              ("p50_us", "p50 µs", "us"), ("p99_us", "p99 µs", "us"))
FANOUT: tuple[Column, ...] = (("per_sub_msgs_per_s", "per-sub msgs/s (median sub)", "rate"),
                              ("slowest_sub_msgs_per_s", "slowest sub", "rate"),
                              ("aggregate_msgs_per_s", "aggregate delivered/s", "rate"),
                              ("complete", "complete", "bool"))
GAP: tuple[Column, ...] = (("max_gap_ms", "longest gap in a migration, ms", "ms"),
                           ("steady_gap_ms", "longest gap without migration, ms", "ms"),
                           ("msgs_per_s", "msgs/s", "rate"),
                           ("exact", "all delivered once, in order", "bool"))


@dataclass(frozen=True)
class Bench:
    """One row: ``run(ctx, n)`` measures one rep and returns its metrics."""

    key: str                        # unique over the suite; used by --only and goals
    label: str                      # what the row measures, as the report shows it
    run: Callable[[Any, int], dict[str, Any]]
    n: int                          # messages (or calls) at --scale 1
    columns: tuple[Column, ...]
    versus: str | None = None       # a row or anchor to show a ratio against when no
                                    # goal names this row (same metric: the first column's)
    beside: tuple[str, ...] = ()    # further anchors run (and compared) beside this row
    area: str = ""                  # filled in by the runner from the module's name
    note: str = ""                  # one line under the table, if the row needs it


@dataclass(frozen=True)
class Goal:
    """An acceptance goal: ``num / den  op  target`` (or ``num  op  target``)."""

    key: str                        # unique; a short id
    issue: str                      # the issue or area whose goal this is
    text: str                       # the goal in words, e.g. "Peer.send >= 0.7x raw ..."
    num: tuple[str, str]            # (row key, metric)
    den: tuple[str, str] | None     # (row or anchor key, metric), None: absolute bound
    op: str                         # ">=", ">", "<=" or "<"
    target: float
    unit: str = "x"                 # how the value reads: "x" for a ratio, or e.g. "ms"

    def met(self, value: float) -> bool:
        return {">=": value >= self.target, ">": value > self.target,
                "<=": value <= self.target, "<": value < self.target}[self.op]
