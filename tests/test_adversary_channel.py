"""The adversary of resending what a stalled subscriber's stream gave up: a
subscriber in a process of its own is SIGSTOPped and resumed again and again
while a publisher goes on; each stop lasts until its buffer at the channel
overflowed. Every event is delivered once, in order, or counted missed: never
both, never lost without a word, and the missed ones add up to what the
channel dropped for it."""
from __future__ import annotations

import signal
import time
from typing import Any

import pytest

import posa
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from tests.support import Proc, sigstop, wait_until

pytestmark = pytest.mark.timeout(120)

DEADLINE = 30.0
STOPS = 4

SUBSCRIBER = """
import json, sys, threading, time, posa
from posa.channel.subscriber import Subscriber
seqs = []
with posa.RegistryClient(sys.argv[1]) as reg, Subscriber(
        "adv/stall", registry=reg, buffer=40, inbox=2, listen="tcp://127.0.0.1:0") as sub:
    def read():
        while True:
            try:
                seqs.extend(e.seq for e in sub.receive_many(100, timeout=0.2))
            except posa.Timeout:
                pass
    threading.Thread(target=read, daemon=True).start()
    print("READY", sub.name, flush=True)
    last = int(sys.stdin.readline().split()[1])      # REPORT <last seq>
    deadline = time.monotonic() + 60
    while (not seqs or seqs[-1] < last) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("SEEN", json.dumps({"seqs": list(seqs), "missed": sub.missed,
                              "dropped": sub.dropped, "gaps": sub.gaps}), flush=True)
"""


def _publish_until(pub: Publisher, n: int, condition: Any, what: str) -> int:
    """Publish batches of 10 events of 20 kB until ``condition()``; the last seq."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {DEADLINE} s"
        n = _batch(pub, n)
    return n


def _batch(pub: Publisher, n: int) -> int:
    for _ in range(10):
        n += 1
        pub.publish("t", {"i": n, "b": "x" * 20_000})
    pub.flush(30)
    return n


def test_a_subscriber_stopped_and_resumed_again_and_again_is_told_every_loss_once(
        dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as registry, \
            EventChannel("adv/stall", registry=registry, window=8, max_batch=10,
                         send_timeout=0.5) as channel, \
            Publisher("adv/stall", registry=registry, batch=10) as pub:
        sub = Proc.python(SUBSCRIBER, dispatcher)
        try:
            name = sub.expect("READY").split()[-1]

            def dropped() -> int:
                return int(channel.stats()["subscriptions"].get(name, {}).get("dropped", 0))

            wait_until(lambda: name in channel.stats()["subscriptions"], DEADLINE,
                       "the subscription at the channel")
            n = _batch(pub, 0)
            for stop in range(STOPS):
                before, resent = dropped(), channel.counters["resent"]
                sigstop(sub.popen.pid)
                try:        # until its buffer overflowed and the stream gave up
                    n = _publish_until(pub, n, lambda b=before, r=resent: dropped() > b and (
                        channel.counters["resent"] > r), f"a drop and a give-up ({stop})")
                finally:
                    sub.popen.send_signal(signal.SIGCONT)
                n = _batch(pub, n)      # one while it runs
            n = _batch(pub, n)
            sub.tell(f"REPORT {n}")
            seen = sub.json("SEEN", timeout=90)
            stats = channel.stats()
        finally:
            sub.close()
    total, resent = stats["drops"]["drop-oldest"], stats["resent"]     # its only subscriber
    seqs = seen["seqs"]
    assert seqs == sorted(set(seqs)), "an event delivered twice or out of order"
    assert seqs[-1] == n, f"the last event ({n}) not delivered: {seqs[-5:]}"
    assert seen["missed"] == seen["dropped"] == total > 0, (seen["missed"], seen["dropped"],
                                                           total, resent)
    assert len(seqs) + seen["missed"] == n, (
        f"{n} published, {len(seqs)} delivered, {seen['missed']} told missed "
        f"({n - len(seqs) - seen['missed']} lost without a word; resent {resent})")
