"""More than one core: a service on one server process against two.

One posa process runs its reactor and its handlers under one interpreter lock,
so a server is held to about one core however many callers it has. posa's way
past that is the Client-Dispatcher-Server pattern itself: start the service's
handler in several processes under one service name; the dispatcher hands each
``Client`` a server, round robin by weight, and the client keeps it until it
fails. These rows measure that: two client processes of ``CALLERS`` caller
threads each call one service that runs in one server process, then in two.
Its handler spends ``WORK_US`` µs of CPU in Python per call (a service whose
handler is the limit, the case more processes are for) and echoes. The
clients are released together after their warm-up calls; calls/s = all
timed calls / (the last client done - the release), on the system-wide
monotonic clock both processes read. With one server the
server's core is the limit (the clients need far less); with two, both cores
serve, less what the clients take.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import posa
from bench import Bench, Column, Goal
from bench.anchors import N_RR
from bench.common import emit, make_msg, ready, wait_release
from bench.scale import concurrent_calls

__all__ = ["BENCHES", "GOALS"]

MODULE = "bench.cores"
CLIENTS = 2              # client processes
WORK_US = 200            # CPU µs the handler spends per call
CALLERS = 16             # caller threads in each
COLUMNS: tuple[Column, ...] = (("calls_per_s", "calls/s", "rate"), ("p50_us", "p50 µs", "us"),
                               ("p99_us", "p99 µs", "us"),
                               ("servers_used", "servers used", "int"))


def role_clients(dispatcher: str, service: str, n: int, callers: int) -> None:
    """Warm up, say READY, wait for the release, then make ``n`` calls over
    ``callers`` threads; emit the window on the system-wide monotonic clock."""
    with posa.Client(dispatcher=dispatcher) as client:
        server = client.channel(service)
        server.call(make_msg(0), timeout=30.0)   # one pick of a server per process

        def make_call() -> Any:
            call = server.call
            return lambda i: call(make_msg(i), timeout=30.0)

        def released() -> float:
            ready(server.server or "")
            wait_release()
            return time.monotonic()

        concurrent_calls(make_call, n, callers, released=released)


def role_busy_service(dispatcher: str, service: str, listen: str, work_us: int) -> None:
    def busy(body: Any) -> Any:
        until = time.thread_time_ns() + work_us * 1000
        while time.thread_time_ns() < until:
            pass
        return body

    with posa.RegistryClient(dispatcher) as reg:
        with posa.Server(service, busy, registry=reg, listen=listen):
            ready()
            wait_release()
            emit({})


def _service(servers: int) -> Any:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        service = f"bench/cores-{secrets.token_hex(3)}"
        procs = [ctx.spawn(MODULE, "busy_service", hold=True, dispatcher=dispatcher,
                           service=service, listen="tcp://127.0.0.1:0", work_us=WORK_US)
                 for _ in range(servers)]
        for proc in procs:
            proc.wait_ready()
        clients = [ctx.spawn(MODULE, "clients", hold=True, dispatcher=dispatcher,
                             service=service, n=n // CLIENTS, callers=CALLERS)
                   for _ in range(CLIENTS)]
        chosen = {client.wait_ready(timeout=120) for client in clients}
        for client in clients:
            client.release()
        results = [client.result(timeout=180) for client in clients]
        for proc in procs:
            proc.result(timeout=10)
        start = min(r["released_at"] for r in results)
        end = max(r["ended_at"] for r in results)
        calls = sum(r["n"] for r in results)
        return {"n": calls, "calls_per_s": calls / (end - start),
                "p50_us": max(r["p50_us"] for r in results),
                "p99_us": max(r["p99_us"] for r in results),
                "servers_used": len(chosen)}
    return run


BENCHES = [
    Bench(f"cores_servers_{servers}",
          f"Client.call over tcp, {CLIENTS} client processes × {CALLERS} callers, "
          f"handler {WORK_US} µs of CPU, on {servers} server process(es)",
          _service(servers), N_RR, COLUMNS, versus="cores_servers_1" if servers > 1 else None)
    for servers in (1, 2)
]

GOALS = [
    Goal("i21-cores", "issue 21", "a service on 2 server processes serves more calls/s "
         "than on 1 (2-core machine)", ("cores_servers_2", "calls_per_s"),
         ("cores_servers_1", "calls_per_s"), ">", 1.0),
]
