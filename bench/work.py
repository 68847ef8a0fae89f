"""Area 5, work distribution: the work queue's scaling curve and master-slave speed-up.

- Work queue: a ``WorkQueue`` process and 1, 2 or 4 ``Worker`` processes
  (``prefetch`` items per request), names resolved by the run's dispatcher.
  Once every worker is up, the queue process puts n trivial items (an int
  each; ``work`` returns it) and times until ``join`` sees them all done, so
  the rate covers hand-out, the work call, acknowledgement and bookkeeping.
  The machine may have fewer cores than processes: the curve shows where the
  queue process, not the workers, sets the pace.  The durable rows run the
  same with the queue's items in a SQLite store (``store=``, WAL) on the run's
  temporary directory: ``synchronous=NORMAL`` (the default: survives the
  process being killed) and ``FULL`` (an fsync per transaction: survives a
  power cut), each against the in-memory row.
- Master-slave: the TSP example's job (40 cities, n random tours in 8
  subtasks) run by a ``Master`` process on 1, then 2 ``Slave`` processes; one
  small job first, untimed, so that lanes and connections exist.  The rows
  report tours/s and the job's time; the 2-slave row's ratio is the speed-up.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Callable
from types import ModuleType
from typing import Any

import posa
from bench import Bench, Column, Goal
from bench.common import HARD_LIFETIME_S, MAX_MEASURE_S, emit, now, ready, wait_release
from posa.work.masterslave import Master, Slave
from posa.work.queue import WorkQueue
from posa.work.sqlitestore import SqliteStore
from posa.work.worker import Item, Worker

MODULE = "bench.work"
N_ITEMS = 50_000
N_TOURS = 100_000
PREFETCH = 16
TSP_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "tsp.py")

QUEUE_COLUMNS: tuple[Column, ...] = (("items_per_s", "items/s", "rate"),
                                     ("workers", "worker processes", "int"),
                                     ("complete", "complete", "bool"))
TSP_COLUMNS: tuple[Column, ...] = (("tours_per_s", "tours/s", "rate"),
                                   ("elapsed_ms", "job time, ms", "ms"),
                                   ("slaves", "slave processes", "int"),
                                   ("same", "same tour as sequential", "bool"))


def _tsp() -> ModuleType:
    """The TSP example (examples/tsp.py), imported from its file."""
    spec = importlib.util.spec_from_file_location("posa_example_tsp", TSP_PATH)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the TSP example from {TSP_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------- process roles
def role_queue(dispatcher: str, name: str, listen: str, n: int, store: str = "",
               sync: str = "NORMAL") -> None:
    """Waits for the runner's go (a line on stdin), puts n items, joins them, reports,
    and stays up until released, so that the workers can stop cleanly first."""
    with posa.RegistryClient(dispatcher) as reg:
        with WorkQueue(name, registry=reg, listen=listen, max_in_flight=10_000,
                       capacity=max(100_000, n),
                       store=SqliteStore(store, synchronous=sync) if store else None) as queue:
            ready()
            wait_release()
            items = {f"i{i}": i for i in range(n)}
            t0 = now()
            queue.put(items)
            metrics = queue.join(HARD_LIFETIME_S - 10)
            elapsed = now() - t0
            done = metrics.get("done", 0)
            emit({"done": done, "elapsed": elapsed})
            wait_release()


def role_worker(dispatcher: str, name: str, queue: str, listen: str, prefetch: int) -> None:
    def work(item: Item) -> Any:
        return item.data

    with posa.RegistryClient(dispatcher) as reg:
        worker = Worker(name, queue, work, registry=reg, listen=listen, prefetch=prefetch)
        worker.start()
        ready()
        wait_release()
        worker.close()
        emit(dict(worker.stats))


def role_slave(dispatcher: str, name: str, listen: str) -> None:
    tsp = _tsp()
    with posa.RegistryClient(dispatcher) as reg:
        slave = Slave(name, tsp.sample, registry=reg, listen=listen)
        try:
            ready()
            wait_release()
        finally:
            slave.close()
        emit({})


def role_master(dispatcher: str, slaves: str, tours: int) -> None:
    tsp = _tsp()
    job = tsp.make_job(cities=40, tours=tours)
    expected = tsp.solve(job)
    with posa.RegistryClient(dispatcher) as reg:
        with Master(slaves, registry=reg, split=tsp.split, merge=tsp.merge,
                    timeout=MAX_MEASURE_S * 4) as master:
            master.execute(tsp.make_job(cities=40, tours=800))     # lanes, connections
            t0 = now()
            outcome = master.execute(job)
            elapsed = now() - t0
    emit({"elapsed": elapsed, "same": outcome.result == expected,
          "answers": outcome.answers})


# ------------------------------------------------------------------ the rows
def _queue(workers: int, sync: str = "") -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        name = f"bench/queue-{secrets.token_hex(3)}"
        store = os.path.join(ctx.tmpdir, f"{name.rsplit('/', 1)[1]}.db") if sync else ""
        queue = ctx.spawn(MODULE, "queue", hold=True, dispatcher=dispatcher, name=name,
                          listen=ctx.address("tcp"), n=n, store=store, sync=sync or "NORMAL")
        queue.wait_ready()
        procs = [ctx.spawn(MODULE, "worker", hold=True, dispatcher=dispatcher,
                           name=f"{name}/w{i}", queue=name, listen=ctx.address("tcp"),
                           prefetch=PREFETCH) for i in range(workers)]
        for proc in procs:
            proc.wait_ready()
        assert queue.p.stdin is not None
        queue.p.stdin.write("go\n")
        queue.p.stdin.flush()
        result = queue.wait_result(timeout=HARD_LIFETIME_S)
        processed = sum(proc.result()["processed"] for proc in procs)
        queue.result()
        return {"items_per_s": result["done"] / result["elapsed"] if result["elapsed"] else 0.0,
                "workers": workers,
                "complete": result["done"] == n and processed >= n}
    return run


def _tsp_row(slaves: int) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        group = f"bench/tsp-{secrets.token_hex(3)}"
        procs = [ctx.spawn(MODULE, "slave", hold=True, dispatcher=dispatcher,
                           name=f"{group}/s{i}", listen=ctx.address("tcp"))
                 for i in range(slaves)]
        for proc in procs:
            proc.wait_ready()
        result = ctx.spawn(MODULE, "master", dispatcher=dispatcher, slaves=f"{group}/*",
                           tours=n).result(timeout=HARD_LIFETIME_S)
        for proc in procs:
            proc.result()
        elapsed = result["elapsed"]
        return {"tours_per_s": n / elapsed if elapsed else 0.0, "elapsed_ms": elapsed * 1000,
                "slaves": slaves, "same": result["same"]}
    return run


BENCHES = [
    Bench("work_queue_1", f"WorkQueue → 1 Worker process, trivial items, prefetch {PREFETCH}",
          _queue(1), N_ITEMS, QUEUE_COLUMNS),
    Bench("work_queue_2", f"WorkQueue → 2 Worker processes, trivial items, prefetch {PREFETCH}",
          _queue(2), N_ITEMS, QUEUE_COLUMNS, versus="work_queue_1"),
    Bench("work_queue_4", f"WorkQueue → 4 Worker processes, trivial items, prefetch {PREFETCH}",
          _queue(4), N_ITEMS, QUEUE_COLUMNS, versus="work_queue_1",
          note="items/s from put() until join() saw every item done; ratio against 1 worker"),
    Bench("work_queue_1_durable", f"WorkQueue (SQLite store, synchronous=NORMAL) → 1 Worker "
          f"process, prefetch {PREFETCH}", _queue(1, "NORMAL"), N_ITEMS, QUEUE_COLUMNS,
          versus="work_queue_1"),
    Bench("work_queue_1_full", f"WorkQueue (SQLite store, synchronous=FULL) → 1 Worker "
          f"process, prefetch {PREFETCH}", _queue(1, "FULL"), N_ITEMS, QUEUE_COLUMNS,
          versus="work_queue_1_durable",
          note="durable rows: one transaction per worker request (16 acks + 16 leases); "
               "FULL adds an fsync to each; ratios against in-memory and NORMAL"),
    Bench("work_tsp_1", "Master → 1 Slave process, TSP example (40 cities, 8 subtasks)",
          _tsp_row(1), N_TOURS, TSP_COLUMNS),
    Bench("work_tsp_2", "Master → 2 Slave processes, TSP example (40 cities, 8 subtasks)",
          _tsp_row(2), N_TOURS, TSP_COLUMNS, versus="work_tsp_1",
          note="n = tours sampled; the ratio against 1 slave is the speed-up"),
]

GOALS: list[Goal] = [          # the scaling curve and the speed-up are reported, not judged
    Goal("work-durable", "issue 17", "durable WorkQueue (SQLite, NORMAL) items/s ≥ 0.5× "
         "in-memory", ("work_queue_1_durable", "items_per_s"), ("work_queue_1", "items_per_s"),
         ">=", 0.5),
    Goal("work-durable-rq", "issue 17", "durable WorkQueue (SQLite, NORMAL) items/s ≥ 5× RQ "
         "(SimpleWorker, redis-server)", ("work_queue_1_durable", "items_per_s"),
         ("rq_simple", "items_per_s"), ">=", 5.0),
]
