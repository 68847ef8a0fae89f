"""Area 2, peers: what a user of ``posa.Peer`` gets, names resolved by a real dispatcher.

Every process makes a ``RegistryClient`` to the run's dispatcher process and
peers with ``registry=reg``.  The body is the anchors' message dict; posa's
envelope codec encodes and decodes it (the receiver gets it decoded).

- One-way: a source peer sends n messages with ``Peer.send`` and flushes; the
  sink peer's handler counts them on the reactor thread.  The source's clock
  starts before its first send, so the first lookup and connect are included
  (and reported alone as ``first_send_ms``).
- Request-reply: an echo peer (``serve(lambda m: m.body)``) and a client peer
  making sequential ``Peer.request`` calls, 500 warm-up calls first; the same
  with ``posa.aio.Peer.request`` awaited in an asyncio loop.
- Migration: the sink moves twice while the source sends at full speed
  (zmq+tcp -> tcp -> zmq+tcp).  Both processes first open, use and close an
  endpoint of every transport involved, so that module imports and the ZeroMQ
  context are not timed.  The row reports the longest gap between two
  deliveries from the start of each ``migrate()`` until its grace period has
  ended, the longest gap of the steady stream before the first move for
  comparison, and whether every message arrived exactly once and in order.
"""
from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any

import posa
from bench import GAP, ONEWAY, RR, Bench, Goal
from bench.anchors import N_ONEWAY, N_RR
from bench.common import (
    FIRST_MSG_TIMEOUT_S,
    HARD_LIFETIME_S,
    emit,
    make_msg,
    now,
    oneway_metrics,
    ready,
    send_stream,
    timed_calls,
    timed_calls_async,
    wait_release,
)
from posa import transport

MODULE = "bench.peer"
MOVES = ("tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0")   # where the migrating sink goes
GRACE = 0.5                                              # seconds the old endpoint stays
ONEWAY_FIRST = ONEWAY + (("first_send_ms", "first send ms (lookup, connect)", "ms"),)


def _name(role: str) -> str:
    return f"bench/{role}-{secrets.token_hex(3)}"


# ------------------------------------------------------------- process roles
class _Counter:
    """The sink's handler: counts deliveries, keeps their times, checks the order."""

    def __init__(self, n: int, keep_times: bool = False) -> None:
        self.n = n
        self.count = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.next_seq = 0
        self.out_of_order = 0
        self.times: list[float] | None = [] if keep_times else None
        self.done = threading.Event()
        self._mark = -1                       # a count someone waits for (wait_for)
        self._mark_reached = threading.Event()

    def __call__(self, msg: posa.Message) -> None:
        t = now()
        seq = msg.body["seq"]
        if seq != self.next_seq:
            self.out_of_order += 1
        self.next_seq = seq + 1
        self.count += 1
        if self.count == 1:
            self.t_first = t
        self.t_last = t
        if self.times is not None:
            self.times.append(t)
        if self.count == self._mark:
            self._mark_reached.set()
        if self.count >= self.n:
            self.done.set()

    def wait_for(self, count: int, timeout: float) -> None:
        """Until ``count`` messages came (or ``timeout`` s passed). One waiter at a time."""
        self._mark_reached.clear()
        self._mark = count
        if self.count < count:
            self._mark_reached.wait(timeout)

    def wait(self) -> None:
        """Until n messages came, or none came for a while (bounded either way)."""
        deadline = now() + HARD_LIFETIME_S - 5
        seen = -1
        while not self.done.wait(FIRST_MSG_TIMEOUT_S if self.count == 0 else 3.0):
            if self.count == seen or now() > deadline:
                return
            seen = self.count

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "t_first": self.t_first, "t_last": self.t_last,
                "out_of_order": self.out_of_order}


def role_sink(dispatcher: str, name: str, listen: str, n: int) -> None:
    counter = _Counter(n)
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(name, registry=reg, listen=listen, handler=counter):
            ready()
            counter.wait()
            emit(counter.result())
            wait_release()      # stay up until the source has flushed (seen every ack)


def role_source(dispatcher: str, target: str, listen: str, n: int) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(_name("source"), registry=reg, listen=listen) as peer:
            _warm(listen)
            ready()
            send = peer.send
            result = send_stream(lambda i: send(target, make_msg(i), timeout=30.0), n)
            peer.flush(30.0)
            emit(result)


def role_echo(dispatcher: str, name: str, listen: str) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(name, registry=reg, listen=listen, handler=lambda msg: msg.body):
            ready()
            wait_release()
            emit({})


def role_client(dispatcher: str, target: str, listen: str, n: int) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(_name("client"), registry=reg, listen=listen) as peer:
            request = peer.request
            emit(timed_calls(lambda i: request(target, make_msg(i), timeout=5.0), n))


def role_aio_client(dispatcher: str, target: str, listen: str, n: int) -> None:
    # imported here, not above: the start-up of the other roles, which a client
    # row's CPU per operation counts, does not load asyncio
    import asyncio

    import posa.aio

    async def main() -> dict[str, Any]:
        with posa.RegistryClient(dispatcher) as reg:
            async with posa.aio.Peer(_name("aio-client"), registry=reg, listen=listen) as peer:
                request = peer.request
                return await timed_calls_async(
                    lambda i: request(target, make_msg(i), timeout=5.0), n)

    emit(asyncio.run(main()))


def _warm(listen: str) -> None:
    """Open, use and close an endpoint of ``listen``'s transport and of every
    transport a migration goes to."""
    for address in {listen, *MOVES}:
        listener = transport.listen(address)
        conn = transport.connect(listener.address)
        conn.send(b"warm")
        listener.recv(5.0)
        conn.close()
        listener.close()


def role_migrating_sink(dispatcher: str, name: str, listen: str, n: int) -> None:
    _warm(listen)
    counter = _Counter(n, keep_times=True)
    windows: list[tuple[float, float]] = []
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(name, registry=reg, listen=listen, handler=counter) as peer:
            ready()
            for k, where in enumerate(MOVES, start=1):
                counter.wait_for(n * k // (len(MOVES) + 1), HARD_LIFETIME_S / 4)
                start = now()
                peer.migrate(where, grace=GRACE)
                windows.append((start, now() + GRACE))
            counter.wait()
            assert counter.times is not None
            emit({**counter.result(), **_gaps(counter.times, windows)})
            wait_release()      # stay up until the source has flushed (seen every ack)


def _gaps(times: list[float], windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Longest gap between deliveries inside the migration windows, and before them."""
    def longest(lo: float, hi: float) -> float:
        worst = 0.0
        prev = None
        for t in times:
            if t < lo:
                prev = t
                continue
            if prev is not None:
                worst = max(worst, t - prev)
            if t > hi:
                break
            prev = t
        return worst

    first_move = windows[0][0] if windows else times[-1]
    steady_from = times[len(times) // 20] if times else 0.0   # skip the start-up 5 %
    return {"max_gap_ms": max((longest(lo, hi) for lo, hi in windows), default=0.0) * 1000,
            "steady_gap_ms": longest(steady_from, first_move) * 1000,
            "moves": len(windows)}


# ------------------------------------------------------------------ the rows
def _oneway(scheme: str) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        sink_name = _name("sink")
        sink = ctx.spawn(MODULE, "sink", hold=True, dispatcher=dispatcher, name=sink_name,
                         listen=ctx.address(scheme), n=n)
        sink.wait_ready()
        source = ctx.spawn(MODULE, "source", dispatcher=dispatcher,
                           target=sink_name, listen=ctx.address(scheme), n=n)
        received = sink.wait_result()
        sent = source.result()
        sink.result()
        result = oneway_metrics(sent, received, n)
        result["complete"] = result["complete"] and received["out_of_order"] == 0
        result["first_send_ms"] = sent["first_send_ms"]
        return result
    return run


def _request(scheme: str, role: str = "client") -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        echo_name = _name("echo")
        echo = ctx.spawn(MODULE, "echo", hold=True, dispatcher=dispatcher, name=echo_name,
                         listen=ctx.address(scheme))
        echo.wait_ready()
        result: dict[str, Any] = ctx.spawn(MODULE, role, dispatcher=dispatcher,
                                           target=echo_name, listen=ctx.address(scheme),
                                           n=n).result()
        echo.result(timeout=10)
        return result
    return run


def _migration(ctx: Any, n: int) -> dict[str, Any]:
    dispatcher = ctx.dispatcher()
    sink_name = _name("moving-sink")
    sink = ctx.spawn(MODULE, "migrating_sink", hold=True, dispatcher=dispatcher,
                     name=sink_name, listen=ctx.address("zmq+tcp"), n=n)
    sink.wait_ready()
    source = ctx.spawn(MODULE, "source", dispatcher=dispatcher, target=sink_name,
                       listen=ctx.address("zmq+tcp"), n=n)
    received = sink.wait_result()
    sent = source.result()
    sink.result()
    result = oneway_metrics(sent, received, n)
    result.update(max_gap_ms=received["max_gap_ms"], steady_gap_ms=received["steady_gap_ms"],
                  exact=received["count"] == n and received["out_of_order"] == 0
                  and received["moves"] == len(MOVES))
    return result


BENCHES = [
    Bench("peer_send_zmq", "Peer.send one-way, zmq+tcp", _oneway("zmq+tcp"), N_ONEWAY,
          ONEWAY_FIRST),
    Bench("peer_send_tcp", "Peer.send one-way, tcp", _oneway("tcp"), N_ONEWAY, ONEWAY_FIRST,
          versus="asyncio_streams"),
    Bench("peer_request_zmq", "Peer.request sequential, zmq+tcp", _request("zmq+tcp"),
          N_RR, RR),
    Bench("peer_request_tcp", "Peer.request sequential, tcp", _request("tcp"), N_RR, RR,
          beside=("tr_socket_rr",)),
    Bench("peer_aio_request", "posa.aio.Peer.request sequential, zmq+tcp",
          _request("zmq+tcp", "aio_client"), N_RR, RR),
    Bench("peer_aio_request_tcp", "posa.aio.Peer.request sequential, tcp",
          _request("tcp", "aio_client"), N_RR, RR),
    Bench("peer_migration", "Peer.send at full speed while the receiver migrates "
          "zmq+tcp→tcp→zmq+tcp", _migration, N_ONEWAY // 2, GAP,
          note=f"gap = longest time between two deliveries from the start of migrate() "
               f"until its {GRACE} s grace ended; worst of {len(MOVES)} moves. The receiver "
               f"does not freeze its garbage collector, so a full collection (9–15 ms "
               f"here) counts when it falls in the window: see docs/operations.md"),
]

PEERS = "peers"
I21 = "issue 21"
GOALS = [
    Goal("peer-send-zmq", PEERS, "Peer.send (zmq+tcp) ≥ 0.7× raw pyzmq DEALER→ROUTER (2× recv)",
         ("peer_send_zmq", "msgs_per_s"), ("zmq_dealer2_tcp", "msgs_per_s"), ">=", 0.7),
    Goal("peer-send-nats", PEERS, "Peer.send (zmq+tcp) ≥ 2× NATS publish",
         ("peer_send_zmq", "msgs_per_s"), ("nats_oneway", "msgs_per_s"), ">=", 2.0),
    Goal("peer-req-zmq", PEERS, "Peer.request (zmq+tcp) calls/s ≥ 1.1× Pyro5 proxy calls",
         ("peer_request_zmq", "calls_per_s"), ("pyro_direct", "calls_per_s"), ">=", 1.1),
    Goal("peer-req-zmq-p50", PEERS, "Peer.request (zmq+tcp) p50 ≤ Pyro5's p50",
         ("peer_request_zmq", "p50_us"), ("pyro_direct", "p50_us"), "<=", 1.0),
    Goal("peer-req-tcp", PEERS, "Peer.request (tcp) calls/s ≥ 1.1× Pyro5 proxy calls",
         ("peer_request_tcp", "calls_per_s"), ("pyro_direct", "calls_per_s"), ">=", 1.1),
    Goal("peer-req-tcp-p50", PEERS, "Peer.request (tcp) p50 ≤ Pyro5's p50",
         ("peer_request_tcp", "p50_us"), ("pyro_direct", "p50_us"), "<=", 1.0),
    Goal("peer-aio", PEERS, "posa.aio.Peer.request (zmq+tcp) calls/s ≥ 2× NATS request-reply",
         ("peer_aio_request", "calls_per_s"), ("nats_rr", "calls_per_s"), ">=", 2.0),
    Goal("peer-aio-tcp", PEERS, "posa.aio.Peer.request (tcp) calls/s ≥ 2× NATS request-reply",
         ("peer_aio_request_tcp", "calls_per_s"), ("nats_rr", "calls_per_s"), ">=", 2.0),
    Goal("i21-send-cpu", I21, "Peer.send (zmq+tcp) CPU per message ≤ 1.1× raw pyzmq's",
         ("peer_send_zmq", "cpu_us_per_op"), ("zmq_dealer2_tcp", "cpu_us_per_op"), "<=", 1.1),
    Goal("i21-send-zmq", I21, "Peer.send (zmq+tcp) ≥ 0.9× raw pyzmq DEALER→ROUTER",
         ("peer_send_zmq", "msgs_per_s"), ("zmq_dealer2_tcp", "msgs_per_s"), ">=", 0.9),
    Goal("i21-send-nats", I21, "Peer.send (zmq+tcp) ≥ 3× NATS publish",
         ("peer_send_zmq", "msgs_per_s"), ("nats_oneway", "msgs_per_s"), ">=", 3.0),
    Goal("i21-req-cpu", I21, "Peer.request (tcp) CPU per call ≤ 0.7× a Pyro5 call's",
         ("peer_request_tcp", "cpu_us_per_op"), ("pyro_direct", "cpu_us_per_op"), "<=", 0.7),
    Goal("i21-req", I21, "Peer.request (tcp) calls/s ≥ 1.5× Pyro5 proxy calls",
         ("peer_request_tcp", "calls_per_s"), ("pyro_direct", "calls_per_s"), ">=", 1.5),
    Goal("i21-req-p50", I21, "Peer.request (tcp) p50 ≤ 0.7× Pyro5's p50",
         ("peer_request_tcp", "p50_us"), ("pyro_direct", "p50_us"), "<=", 0.7),
    Goal("peer-migration", PEERS, "migration blackout under load < 50 ms",
         ("peer_migration", "max_gap_ms"), None, "<", 50.0, unit="ms"),
]
