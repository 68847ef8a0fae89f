"""The anchor of the durable work-queue row: RQ on redis-server, a non-forking worker.

The row starts its own ``redis-server`` (Debian's; ``bench/setup.sh`` installs
it) on a free loopback port with persistence off (``--save '' --appendonly
no``), then a worker process, ``rq.SimpleWorker`` (it runs each job in its own
process instead of forking a child per job, as posa's ``Worker`` does), and a
producer process that enqueues n trivial jobs at once (``Queue.enqueue_many``,
one pipeline; each job returns its int, as the WorkQueue rows' ``work`` does).
items/s is n / (the producer's first enqueue -> the worker's return from
``work(max_jobs=n)``), as the WorkQueue rows time ``put`` until ``join``.
Redis keeps the jobs in memory here: RQ's row is not durable across a crash of
redis-server, posa's ``store=`` row is (SQLite, WAL).
"""
from __future__ import annotations

import shutil
from typing import Any

from bench.common import HARD_LIFETIME_S, emit, now, ready
from bench.process import free_port, start_listening

MODULE = "bench.work_rq"
QUEUE = "bench"


def job(i: int) -> int:
    """The job RQ's worker runs (found by its dotted name)."""
    return i


def _redis(port: int) -> Any:
    from redis import Redis

    return Redis(host="127.0.0.1", port=port)


# ------------------------------------------------------------- process roles
def role_worker(port: int, n: int) -> None:
    from rq import Queue, SimpleWorker

    class Reporting(SimpleWorker):
        def teardown(self) -> None:
            # work(max_jobs=n) is done: report before RQ's teardown, whose stop of its
            # pubsub thread can wait out that thread's 60 s poll (rq 3.0, redis-py 8.2);
            # the runner stops this process by PID at the row's end
            t_end = now()
            self.refresh()      # the counts live in redis
            emit({"t_end": t_end, "processed": self.successful_job_count,
                  "failed": self.failed_job_count})
            super().teardown()

    conn = _redis(port)
    worker = Reporting([Queue(QUEUE, connection=conn)], connection=conn)
    ready()
    worker.work(max_jobs=n, logging_level="ERROR")


def role_producer(port: int, n: int) -> None:
    from rq import Queue

    queue = Queue(QUEUE, connection=_redis(port))
    t_start = now()
    queue.enqueue_many([Queue.prepare_data(f"{MODULE}.job", (i,)) for i in range(n)])
    emit({"t_start": t_start, "t_put": now() - t_start})


# ------------------------------------------------------------------ the row
def start_redis(ctx: Any) -> int:
    """A redis-server of this row, persistence off; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        from bench.runner import Skip
        raise Skip("redis-server is not installed: apt-get install redis-server "
                   "(bash bench/setup.sh does it as root)")
    port = free_port()
    start_listening([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no"], port, "redis-server",
                    group=ctx.group)
    return port


def rq_items(ctx: Any, n: int) -> dict[str, Any]:
    """The anchor row (``bench.anchors.ANCHORS["rq_simple"]``)."""
    import importlib.util
    import sys

    for module, package in (("rq", "rq"), ("redis", "redis")):
        if importlib.util.find_spec(module) is None:
            from bench.runner import Skip
            raise Skip(f"{sys.executable} cannot import {module}: pip install {package} "
                       "(bash bench/setup.sh does it)")
    port = start_redis(ctx)
    worker = ctx.spawn(MODULE, "worker", port=port, n=n)
    worker.wait_ready(timeout=60)
    sent = ctx.spawn(MODULE, "producer", port=port, n=n).result(timeout=HARD_LIFETIME_S)
    done = worker.wait_result(timeout=HARD_LIFETIME_S)
    elapsed = done["t_end"] - sent["t_start"]
    return {"items_per_s": done["processed"] / elapsed if elapsed > 0 else 0.0,
            "workers": 1, "complete": done["processed"] == n and not done["failed"]}
