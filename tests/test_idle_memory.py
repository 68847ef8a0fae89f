"""Idle connections are cheap: a tcp client connection holds no read buffer of
its own (reads go to one buffer per reading thread), so memory per idle
connection stays within the 8 KB that issue 21 asks of a client."""
from __future__ import annotations

import tracemalloc

from posa import transport

N = 50


def test_an_idle_tcp_connection_costs_under_8_kb_of_python_memory() -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    conns = []
    try:
        warm = transport.connect(listener.address)   # module state, the thread's buffer
        warm.send(b"warm")
        route, _ = listener.recv(10.0)
        listener.send(route, b"back")
        assert warm.recv(10.0) == b"back"
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(N):
                conn = transport.connect(listener.address)
                conns.append(conn)
                conn.recv_nowait()          # a read of nothing, as an idle client does
            per_connection = (tracemalloc.get_traced_memory()[0] - before) / N
        finally:
            tracemalloc.stop()
        print(f"{per_connection:.0f} bytes per idle connection")
        assert per_connection < 8 * 1024, f"{per_connection:.0f} bytes per idle connection"
        conns.append(warm)
    finally:
        for conn in conns:
            conn.close()
        listener.close()
