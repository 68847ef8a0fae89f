"""Area 1, transports: frames between processes, no envelope, no names.

Each posa transport moves the anchors' message, encoded with ``msgpack.packb``
per frame by the sender and decoded per frame by the receiver, as the anchors
do.  One-way: a ``Connection`` sends n frames to a ``Listener`` in another
process (``inproc``: two threads of one process, like the SimpleQueue anchor).
Request-reply: a client sends a frame and waits for the echo, sequentially.
A receiver takes what ``recv_nowait()`` has and blocks in ``recv()`` only
when nothing is queued, as a reactor would. The ``tls://`` rows run beside
the ``tcp://`` ones with a self-signed P-256 certificate made by ``openssl``
for the run (TLS 1.3, AES-GCM), which both processes read from ``POSA_TLS_*``.

``tr_socket_rr`` is the floor of request-reply in Python over loopback tcp,
beside which the request rows of posa and Pyro5 can be read: a blocking socket
each side, one ``sendall`` and one ``recv`` a call, msgpack both ways, no
framing (a message fits one read here: a partial one would fail to decode and
end the row), no envelope.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from bench import ONEWAY, RR, Bench, Goal
from bench.anchors import N_ONEWAY, N_RR
from bench.common import (
    FIRST_MSG_TIMEOUT_S,
    HARD_LIFETIME_S,
    IDLE_TIMEOUT_S,
    MAX_MEASURE_S,
    decode,
    emit,
    encode,
    make_msg,
    now,
    oneway_metrics,
    ready,
    timed_calls,
    wait_release,
)
from posa import transport
from posa.errors import Timeout
from posa.transport.base import Connection, Listener

MODULE = "bench.transport"
STOP = b"STOP"


# ------------------------------------------------------------- process roles
def _receive(listener: Listener, n: int) -> dict[str, Any]:
    """Take up to n frames, decoding each; (count, first and last receive time)."""
    recv_nowait, recv = listener.recv_nowait, listener.recv
    count = 0
    t_first = 0.0
    idle = 0.0
    timeout = FIRST_MSG_TIMEOUT_S
    while count < n:
        item = recv_nowait()
        if item is None:
            try:
                item = recv(timeout)
            except Timeout:
                idle = IDLE_TIMEOUT_S if count else 0.0
                break
        decode(item[1])
        count += 1
        if count == 1:
            t_first = now()
            timeout = IDLE_TIMEOUT_S
        elif count & 1023 == 0 and now() - t_first > MAX_MEASURE_S:
            break
    return {"count": count, "t_first": t_first, "t_last": now() - idle}


def _send(conn: Connection, n: int) -> dict[str, Any]:
    send = conn.send
    t_start = now()
    sent = 0
    for i in range(n):
        send(encode(i))
        sent += 1
        if sent & 1023 == 0 and now() - t_start > MAX_MEASURE_S:
            break
    return {"sent": sent, "t_start": t_start, "t_end": now()}


def role_recv(addr: str, n: int) -> None:
    listener = transport.listen(addr)
    ready(listener.address)
    result = _receive(listener, n)
    emit(result)
    listener.close()


def role_send(addr: str, n: int) -> None:
    conn = transport.connect(addr)
    result = _send(conn, n)
    emit(result)
    wait_release()      # keep the connection open until the receiver has everything
    conn.close()


def role_inproc(n: int) -> None:
    """Both ends in one process: a receiving thread and the sending main thread."""
    listener = transport.listen("inproc://bench-oneway")
    conn = transport.connect(listener.address)
    got: dict[str, Any] = {}
    receiver = threading.Thread(target=lambda: got.update(_receive(listener, n)), daemon=True)
    receiver.start()
    sent = _send(conn, n)
    receiver.join(HARD_LIFETIME_S)
    emit({**sent, **got})
    conn.close()
    listener.close()


def _serve(listener: Listener) -> int:
    """Echo every frame (decoded and encoded again) until STOP; returns the count."""
    packb, unpackb = msgpack.packb, msgpack.unpackb
    recv_nowait, recv, send = listener.recv_nowait, listener.recv, listener.send
    deadline = now() + HARD_LIFETIME_S
    served = 0
    while now() < deadline:
        item = recv_nowait()
        if item is None:
            try:
                item = recv(IDLE_TIMEOUT_S + FIRST_MSG_TIMEOUT_S)
            except Timeout:
                break
        route, frame = item
        if frame == STOP:
            break
        send(route, packb(unpackb(frame)))
        served += 1
    return served


def _call_loop(conn: Connection, n: int) -> dict[str, Any]:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    send, recv = conn.send, conn.recv

    def call(i: int) -> Any:
        send(packb(make_msg(i)))
        return unpackb(recv(5.0))

    summary = timed_calls(call, n)
    send(STOP)
    return summary


def role_rr_server(addr: str) -> None:
    listener = transport.listen(addr)
    ready(listener.address)
    emit({"served": _serve(listener)})
    listener.close()


def role_rr_client(addr: str, n: int) -> None:
    conn = transport.connect(addr)
    emit(_call_loop(conn, n))
    conn.close()


def role_inproc_rr(n: int) -> None:
    listener = transport.listen("inproc://bench-rr")
    conn = transport.connect(listener.address)
    server = threading.Thread(target=_serve, args=(listener,), daemon=True)
    server.start()
    emit(_call_loop(conn, n))
    server.join(HARD_LIFETIME_S)
    conn.close()
    listener.close()


def role_socket_server() -> None:
    """The floor's server: one connection, echoed until ``STOP``."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ready(str(server.getsockname()[1]))
        conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    packb, unpackb, recv, sendall = msgpack.packb, msgpack.unpackb, conn.recv, conn.sendall
    served = 0
    while (frame := recv(65536)) and frame != STOP:
        sendall(packb(unpackb(frame)))
        served += 1
    conn.close()
    emit({"served": served})


def role_socket_client(port: str, n: int) -> None:
    """The floor's client: ``timed_calls`` of sendall + recv on a blocking socket."""
    conn = socket.create_connection(("127.0.0.1", int(port)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    packb, unpackb, recv, sendall = msgpack.packb, msgpack.unpackb, conn.recv, conn.sendall

    def call(i: int) -> Any:
        sendall(packb(make_msg(i)))
        return unpackb(recv(65536))

    summary = timed_calls(call, n)
    sendall(STOP)
    conn.close()
    emit(summary)


def _socket_rr(ctx: Any, n: int) -> dict[str, Any]:
    server = ctx.spawn(MODULE, "socket_server")
    port = server.wait_ready()
    result: dict[str, Any] = ctx.spawn(MODULE, "socket_client", port=port, n=n).result()
    server.result(timeout=10)
    return result


# ------------------------------------------------------------------ the rows
def _tls_certificate(ctx: Any) -> None:
    """Make a certificate for 127.0.0.1 once per run; its processes use it (env)."""
    if "POSA_TLS_CERT" in ctx.env and os.path.exists(ctx.env["POSA_TLS_CERT"]):
        return
    cert, key = os.path.join(ctx.tmpdir, "tls-cert.pem"), os.path.join(ctx.tmpdir, "tls-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ctx.env.update(POSA_TLS_CERT=cert, POSA_TLS_KEY=key, POSA_TLS_CA=cert)


def _oneway(scheme: str) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        if scheme == "tls":
            _tls_certificate(ctx)
        if scheme == "inproc":
            both = ctx.spawn(MODULE, "inproc", n=n).result()
            return oneway_metrics(both, both, n)
        recv = ctx.spawn(MODULE, "recv", addr=ctx.address(scheme), n=n)
        address = recv.wait_ready()
        send = ctx.spawn(MODULE, "send", hold=True, addr=address, n=n)
        received = recv.result()
        return oneway_metrics(send.result(), received, n)
    return run


def _rr(scheme: str) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        if scheme == "tls":
            _tls_certificate(ctx)
        if scheme == "inproc":
            return ctx.spawn(MODULE, "inproc_rr", n=n).result()  # type: ignore[no-any-return]
        server = ctx.spawn(MODULE, "rr_server", addr=ctx.address(scheme))
        address = server.wait_ready()
        result: dict[str, Any] = ctx.spawn(MODULE, "rr_client", addr=address, n=n).result()
        server.result(timeout=10)
        return result
    return run


BENCHES = [
    Bench("tr_zmq_tcp", "posa zmq+tcp one-way (Connection→Listener)", _oneway("zmq+tcp"),
          N_ONEWAY, ONEWAY),
    Bench("tr_zmq_ipc", "posa zmq+ipc one-way", _oneway("zmq+ipc"), N_ONEWAY, ONEWAY,
          versus="zmq_push_ipc"),
    Bench("tr_tcp", "posa tcp one-way", _oneway("tcp"), N_ONEWAY, ONEWAY),
    Bench("tr_tls", "posa tls one-way", _oneway("tls"), N_ONEWAY, ONEWAY, versus="tr_tcp"),
    Bench("tr_inproc", "posa inproc one-way, 2 threads", _oneway("inproc"), N_ONEWAY, ONEWAY),
    Bench("tr_zmq_tcp_rr", "posa zmq+tcp request-reply (echo)", _rr("zmq+tcp"), N_RR, RR,
          versus="zmq_dealer_rr"),
    Bench("tr_zmq_ipc_rr", "posa zmq+ipc request-reply (echo)", _rr("zmq+ipc"), N_RR, RR,
          versus="zmq_dealer_rr"),
    Bench("tr_tcp_rr", "posa tcp request-reply (echo)", _rr("tcp"), N_RR, RR,
          versus="asyncio_echo"),
    Bench("tr_tls_rr", "posa tls request-reply (echo)", _rr("tls"), N_RR, RR,
          versus="tr_tcp_rr"),
    Bench("tr_inproc_rr", "posa inproc request-reply (echo), 2 threads", _rr("inproc"),
          N_RR, RR),
    Bench("tr_socket_rr", "Python blocking-socket echo over tcp, msgpack, no framing "
          "(the floor)", _socket_rr, N_RR, RR, versus="pyro_direct",
          note="the least a request-reply in Python does over loopback tcp: read the "
               "request rows of posa and Pyro5 beside it"),
]

FOUNDATION = "foundation (transports)"
GOALS = [
    Goal("tr-zmq", FOUNDATION, "zmq+tcp one-way ≥ 0.8× raw pyzmq DEALER→ROUTER (2× recv)",
         ("tr_zmq_tcp", "msgs_per_s"), ("zmq_dealer2_tcp", "msgs_per_s"), ">=", 0.8),
    Goal("tr-tcp", FOUNDATION, "tcp one-way ≥ 1.0× asyncio length-prefixed streams",
         ("tr_tcp", "msgs_per_s"), ("asyncio_streams", "msgs_per_s"), ">=", 1.0),
    Goal("tr-tls", FOUNDATION, "tls one-way ≥ 0.7× tcp one-way",
         ("tr_tls", "msgs_per_s"), ("tr_tcp", "msgs_per_s"), ">=", 0.7),
    Goal("tr-tls-rr", FOUNDATION, "tls request-reply ≥ 0.7× tcp request-reply",
         ("tr_tls_rr", "calls_per_s"), ("tr_tcp_rr", "calls_per_s"), ">=", 0.7),
    Goal("tr-inproc", FOUNDATION, "inproc (2 threads) ≥ 0.5× queue.SimpleQueue (2 threads)",
         ("tr_inproc", "msgs_per_s"), ("simplequeue", "msgs_per_s"), ">=", 0.5),
]
