"""Seeded mixes over nats:// on a real nats-server: a random number of threads on
connections sharing one client, random frame sizes (written from the sending
thread, written by the pump, cut by the pump), a random kernel send buffer, and
the server SIGSTOPped and SIGCONTed at random points of the stream. Every frame
of every connection must arrive whole, once, in order. A failure names its seed:
run that seed alone with ``-k SEED``."""
from __future__ import annotations

import random
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from posa.transport import Options
from posa.transport.testing.support import DEADLINE, Endpoints
from tests.natsserver import NatsCluster
from tests.test_nats_transport_faults import assert_prefixes, senders, untag

pytestmark = pytest.mark.timeout(120)

SEEDS = (7001, 7002, 7003)
SIZES = (0, 1, 100, 4000, 20_000, 200_000, (1 << 20) + 1)


def body_of(seed: int) -> dict[int, int]:
    """Frame index -> body size, the same for every connection of a seed."""
    rng = random.Random(seed)
    return {i: rng.choice(SIZES) if rng.random() < 0.2 else rng.randrange(300)
            for i in range(400)}


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeded_mix_of_threads_sizes_buffers_and_pauses_delivers_every_frame(
        seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    sizes = body_of(seed)
    threads_n, frames = rng.randint(2, 5), rng.randint(100, 250)
    sndbuf = rng.choice((65536, 262144, None))
    pauses = sorted(rng.sample(range(frames * threads_n), 3))
    print(f"seed {seed}: {threads_n} threads x {frames} frames, SO_SNDBUF {sndbuf}, "
          f"SIGSTOP at sends {pauses}")

    def body(i: int) -> bytes:
        return bytes([65 + i % 26]) * sizes[i]

    options = Options(max_frame_size=4 << 20, high_water_mark=rng.choice((8, 64, 1000)),
                      send_timeout=30.0)
    progress = threading.Condition()
    sent = [0]
    outcome: Counter[str] = Counter()

    with NatsCluster(tmp_path, size=1) as lone, Endpoints() as ends:
        server = lone.servers[0]
        listener = ends.listen(lone.urls, Options(max_frame_size=4 << 20))
        connections = [ends.connect(listener.address, options)
                       for _ in range(threads_n)]
        if sndbuf is not None:
            link = connections[0]._link     # type: ignore[attr-defined]
            tcp = link.client.sock
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(
            listener.recv(3 * DEADLINE)[1] for _ in range(threads_n * frames)))
        reader.start()
        threads = senders(connections, frames, body, outcome, progress, sent)
        try:
            for at in pauses:
                with progress:
                    progress.wait_for(lambda at=at: sent[0] >= at or sum(outcome.values())
                                      == threads_n, DEADLINE)
                server.signal(signal.SIGSTOP)
                with progress:          # the senders go on into the buffers, or block
                    progress.wait_for(lambda at=at: sent[0] >= at + 50 or sum(
                        outcome.values()) == threads_n, 0.5)
                server.signal(signal.SIGCONT)
        finally:
            server.signal(signal.SIGCONT)
            for thread in threads:
                thread.join(3 * DEADLINE)
            reader.join(3 * DEADLINE)
        assert outcome == {"sent": threads_n}, f"seed {seed}: {outcome}"
        assert_prefixes(got, threads_n, body)
        assert Counter(untag(f)[0] for f in got) == {k: frames for k in range(threads_n)}, \
            f"seed {seed}: frames missing"
        assert listener.recv_nowait() is None
