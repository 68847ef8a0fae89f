"""The adversary of tcp:// reading each frame with one copy (a read buffer reused
per reading thread, per listener): raw peers write frames of 0 to 200 kB cut at
seeded random points, many connections at once, read by one thread. Every frame
arrives whole, once, in order on its connection, whatever another connection's
read left in the shared buffer."""
from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from posa.transport import Options
from posa.transport.framing import GREETING, encode_frame
from posa.transport.tcp import TcpTransport

pytestmark = pytest.mark.timeout(120)

PEERS = 8
FRAMES = 200
DEADLINE = 60.0


def _seed() -> int:
    seed = int(os.environ.get("POSA_ADVERSARY_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (POSA_ADVERSARY_SEED={seed} repeats it)")
    return seed


def _frames(rng: random.Random, k: int) -> list[bytes]:
    sizes = [rng.choice((0, 1, 3, 4, 5, 100, 65_532, 65_536, 70_000, 200_000))
             for _ in range(FRAMES)]
    return [(b"%d:%d:" % (k, i) + bytes([65 + (k + i) % 26]) * size)
            for i, size in enumerate(sizes)]


def _write_cut(sock: socket.socket, frames: list[bytes], rng: random.Random,
               taken: threading.Semaphore) -> None:
    """Write the greeting and ``frames``: about half the peers a frame per write,
    each once the reader took the last (a read of exactly one frame: a request's
    common case), the others in pieces cut at random points (1 byte to 100 kB)."""
    if rng.random() < 0.5:
        sock.sendall(GREETING)
        for frame in frames:
            sock.sendall(encode_frame(frame))
            assert taken.acquire(timeout=DEADLINE), "the reader did not take a frame"
        return
    data = GREETING + b"".join(encode_frame(f) for f in frames)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 5, 4096, 65_535, 65_537, 100_000))
        sock.sendall(data[pos:pos + step])
        pos += step


def _read_all(ends: dict[int, Any], expected: dict[int, list[bytes]],
              taken: list[threading.Semaphore]) -> None:
    """Read every connection from this one thread until each got its frames."""
    got: dict[int, list[bytes]] = {k: [] for k in ends}
    deadline = time.monotonic() + DEADLINE
    while any(len(got[k]) < len(expected[k]) for k in ends):
        remaining = deadline - time.monotonic()
        assert remaining > 0, {k: len(v) for k, v in got.items()}
        for k, end in ends.items():
            for _ in range(1000):
                frame = end.recv_nowait()
                if frame is None:
                    break
                assert type(frame) is bytes, f"a frame of type {type(frame).__name__}"
                got[k].append(frame)
                taken[k].release()
        if not any(end.pending() for end in ends.values()):
            select.select([end.fileno() for end in ends.values()],
                          [], [], min(remaining, 0.5))
    for k in ends:
        assert got[k] == expected[k], f"connection {k}: frames differ at " + str(next(
            i for i, (a, b) in enumerate(zip(got[k], expected[k])) if a != b))


@pytest.fixture
def rng() -> Iterator[random.Random]:
    yield random.Random(_seed())


def test_connections_read_by_one_thread_get_their_cut_frames_whole(
        rng: random.Random) -> None:
    """Raw listeners answer the greeting and write cut frames to 8 connections
    read by this thread (one shared read buffer)."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(PEERS)]
    expected = {k: _frames(rng, k) for k in range(PEERS)}
    seeds = [rng.random() for _ in range(PEERS)]
    taken = [threading.Semaphore(0) for _ in range(PEERS)]

    def serve(k: int) -> None:
        sock, _ = servers[k].accept()
        with sock:
            sock.recv(len(GREETING), socket.MSG_WAITALL)
            _write_cut(sock, expected[k], random.Random(seeds[k]), taken[k])
            sock.recv(1)        # until the test closes its end

    threads = [threading.Thread(target=serve, args=(k,), daemon=True) for k in range(PEERS)]
    for thread in threads:
        thread.start()
    options = Options(max_frame_size=1 << 20)
    ends = {k: TcpTransport().connect(f"tcp://127.0.0.1:{s.getsockname()[1]}", options)
            for k, s in enumerate(servers)}
    try:
        _read_all(dict(ends), expected, taken)
    finally:
        for end in ends.values():
            end.close()
        for thread in threads:
            thread.join(DEADLINE)
        for server in servers:
            server.close()


def test_a_listener_gets_every_cut_frame_of_many_raw_peers_whole(
        rng: random.Random) -> None:
    """8 raw peers write cut frames to one listener at once (its one read buffer)."""
    options = Options(max_frame_size=1 << 20)
    listener = TcpTransport().listen("tcp://127.0.0.1:0", options)
    port = int(listener.address.rsplit(":", 1)[1])
    expected = {k: _frames(rng, k) for k in range(PEERS)}
    seeds = [rng.random() for _ in range(PEERS)]
    taken = [threading.Semaphore(0) for _ in range(PEERS)]

    def peer(k: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            _write_cut(sock, expected[k], random.Random(seeds[k]), taken[k])
            sock.recv(len(GREETING), socket.MSG_WAITALL)
            sock.recv(1)        # until the listener closes

    threads = [threading.Thread(target=peer, args=(k,), daemon=True) for k in range(PEERS)]
    for thread in threads:
        thread.start()
    try:
        got: dict[int, list[bytes]] = {k: [] for k in range(PEERS)}
        total = sum(map(len, expected.values()))
        deadline = time.monotonic() + DEADLINE
        for _ in range(total):
            _, frame = listener.recv(max(0.1, deadline - time.monotonic()))
            assert type(frame) is bytes, f"a frame of type {type(frame).__name__}"
            k = int(frame.split(b":", 1)[0])
            got[k].append(frame)
            taken[k].release()
        assert got == expected, [k for k in got if got[k] != expected[k]]
        assert not listener.rejections, listener.rejections
    finally:
        listener.close()
        for thread in threads:
            thread.join(DEADLINE)
