"""Area 4, the event channel: 1 publisher -> ``posa.EventChannel`` -> N subscribers.

Every role is a process of its own and resolves names through the run's
dispatcher: the channel (``EventChannel`` listening on zmq+tcp), four
``Subscriber`` processes (``policy="block"``, so nothing may be dropped) and
one ``Publisher`` publishing n anchor messages (``{"seq": i, "body": 83 B}``,
~100 B msgpack) on one topic, then flushing.  The publisher starts only when
every subscriber is subscribed.  A subscriber's rate is its count over the
time from the publisher's first publish to its own last receive, as the
anchors' fan-out rows (NATS with 4 subscribers, raw pyzmq PUB->4 SUB) take it.

The ``channel_fanout_N`` rows (issue 21) run the same with 1, 8 and 32
subscribers beside NATS with as many (``nats_pubsub_N``, ``bench.anchors``),
fewer events per subscriber as N grows so that a row takes seconds, and report
the channel process's thread count (``Threads`` of ``/proc/PID/status``,
sampled when every subscriber has had everything, before any leaves) and its
own CPU per event delivered (its threads' time on a CPU from the publisher's
start to the last subscriber's last event, ``/proc/PID/task/*/schedstat`` in
nanoseconds, over the events delivered), which the
row's CPU µs/op (every process, subscribers' start-up and exit included)
hides as subscribers grow.
"""
from __future__ import annotations

import os
import secrets
import statistics
from typing import Any

import posa
from bench import FANOUT, Bench, Column, Goal
from bench.anchors import FANOUT_SUBSCRIBERS, N_FANOUT
from bench.common import (
    FIRST_MSG_TIMEOUT_S,
    HARD_LIFETIME_S,
    IDLE_TIMEOUT_S,
    emit,
    make_msg,
    now,
    ready,
    wait_release,
)
from posa.errors import Timeout

MODULE = "bench.channel"
SUBSCRIBERS = 4
TOPIC = "bench/fanout"
SUB_BUFFER = 10_000          # events the channel buffers per subscriber before blocking


# ------------------------------------------------------------- process roles
def role_channel(dispatcher: str, name: str, listen: str, store: str | None = None) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.EventChannel(name, registry=reg, listen=listen, store=store):
            ready()
            wait_release()
            emit({})


def role_subscriber(dispatcher: str, channel: str, listen: str, n: int) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Subscriber(channel, topics=[TOPIC], registry=reg, listen=listen,
                             policy="block", buffer=SUB_BUFFER) as sub:
            ready()
            receive = sub.receive
            count = 0
            t_first = 0.0
            out_of_order = 0
            deadline = now() + HARD_LIFETIME_S - 5
            try:
                event = receive(FIRST_MSG_TIMEOUT_S)
                t_first = now()
                count = 1
                expected = event.body["seq"] + 1
                while count < n and now() < deadline:
                    event = receive(IDLE_TIMEOUT_S)
                    seq = event.body["seq"]
                    if seq != expected:
                        out_of_order += 1
                    expected = seq + 1
                    count += 1
            except Timeout:
                pass
            t_last = now()
            emit({"count": count, "t_first": t_first, "t_last": t_last,
                  "out_of_order": out_of_order, "gaps": sub.gaps})
            wait_release()


def role_publisher(dispatcher: str, channel: str, n: int) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Publisher(channel, registry=reg, timeout=30.0) as pub:
            publish = pub.publish
            t_start = now()
            for i in range(n):
                publish(TOPIC, make_msg(i))
            t_end = now()
            pub.flush(30.0)
            emit({"t_start": t_start, "t_end": t_end, "sent": n})
            wait_release()


# ------------------------------------------------------------------ the row
def threads_of(pid: int) -> int:
    """The number of threads of process ``pid`` now (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of the live threads of process ``pid`` (0 if gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass        # the thread ended meanwhile
    return total


def _fanout(ctx: Any, n: int, store: bool = False,
            subscribers: int = SUBSCRIBERS) -> dict[str, Any]:
    dispatcher = ctx.dispatcher()
    name = f"bench/channel-{secrets.token_hex(3)}"
    path = f"{ctx.tmpdir}/{name.replace('/', '-')}.db" if store else None
    channel = ctx.spawn(MODULE, "channel", hold=True, dispatcher=dispatcher, name=name,
                        listen=ctx.address("zmq+tcp"), store=path)
    channel.wait_ready()
    subs = [ctx.spawn(MODULE, "subscriber", hold=True, dispatcher=dispatcher, channel=name,
                      listen=ctx.address("zmq+tcp"), n=n) for _ in range(subscribers)]
    for sub in subs:
        sub.wait_ready()
    spent = cpu_ns(channel.p.pid)
    pub = ctx.spawn(MODULE, "publisher", hold=True, dispatcher=dispatcher, channel=name, n=n)
    received = [sub.wait_result(timeout=HARD_LIFETIME_S) for sub in subs]
    threads = threads_of(channel.p.pid)     # every subscriber still subscribed
    spent = cpu_ns(channel.p.pid) - spent
    sent = pub.result()
    for sub in subs:
        sub.result()
    channel.result(timeout=10)
    t_start = sent["t_start"]
    rates = [r["count"] / (r["t_last"] - t_start) if r["count"] else 0.0 for r in received]
    total = sum(r["count"] for r in received)
    t_end = max(r["t_last"] for r in received)
    return {"per_sub_msgs_per_s": statistics.median(rates),
            "slowest_sub_msgs_per_s": min(rates),
            "aggregate_msgs_per_s": total / (t_end - t_start) if t_end > t_start else 0.0,
            "complete": all(r["count"] == n and r["out_of_order"] == 0 for r in received),
            "channel_threads": threads,
            "channel_cpu_us_per_event": spent / 1000 / total if total else 0.0}


def _fanout_store(ctx: Any, n: int) -> dict[str, Any]:
    return _fanout(ctx, n, store=True)


def _fanout_of(subscribers: int) -> Any:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        return _fanout(ctx, n, subscribers=subscribers)
    return run


FANOUT_THREADS: tuple[Column, ...] = (*FANOUT, ("channel_threads", "channel threads", "int"),
                                      ("channel_cpu_us_per_event",
                                       "channel CPU µs per event delivered", "us"))

BENCHES = [
    Bench("channel_fanout", "Publisher → EventChannel → 4 Subscriber processes, block policy, "
          "zmq+tcp", _fanout, N_FANOUT, FANOUT),
    Bench("channel_fanout_store", "the same, the channel's history in SQLite (--store, WAL, "
          "synchronous=NORMAL)", _fanout_store, N_FANOUT, FANOUT),
    *(Bench(f"channel_fanout_{subs}", f"Publisher → EventChannel → {subs} Subscriber "
            "process(es), block policy, zmq+tcp", _fanout_of(subs), count, FANOUT_THREADS,
            versus=f"nats_pubsub_{subs}")
      for subs, count in FANOUT_SUBSCRIBERS),
]

CHANNEL = "event channel"
GOALS = [
    Goal("channel-nats", CHANNEL, "per-subscriber delivered msgs/s ≥ 2× NATS with 4 subscribers",
         ("channel_fanout", "per_sub_msgs_per_s"), ("nats_pubsub", "per_sub_msgs_per_s"),
         ">=", 2.0),
    Goal("channel-zmq", CHANNEL, "per-subscriber delivered msgs/s ≥ 0.5× raw pyzmq PUB→SUB",
         ("channel_fanout", "per_sub_msgs_per_s"), ("zmq_pubsub", "per_sub_msgs_per_s"),
         ">=", 0.5),
    Goal("channel-store", CHANNEL, "per-subscriber msgs/s with the history in SQLite ≥ 0.5× "
         "in memory", ("channel_fanout_store", "per_sub_msgs_per_s"),
         ("channel_fanout", "per_sub_msgs_per_s"), ">=", 0.5),
    Goal("fanout-32", "issue 21", "per-subscriber msgs/s ≥ 4× NATS at 32 subscribers",
         ("channel_fanout_32", "per_sub_msgs_per_s"), ("nats_pubsub_32", "per_sub_msgs_per_s"),
         ">=", 4.0),
]
