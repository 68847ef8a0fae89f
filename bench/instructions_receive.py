"""Instructions a receiving peer spends per message of one-way sends, counted by
callgrind, with the frames' sizes fixed.

    python -m bench.instructions_receive [--batch 128] [--calls 2000,12000]
                                         [--listen zmq+tcp://127.0.0.1:0]

``bench.instructions_send --side server`` counts the receiver of real sends, whose
batches are as large as the receiver lags behind (it varies by run, and several
fold with ``--calls``). Here one process, under ``valgrind --tool=callgrind``,
holds a ``Peer`` with a handler that counts (as the suite's sink) and a raw pyzmq
DEALER (or a ``posa.transport`` connection, for another ``--listen``) that
writes it frames made beforehand, in another process: the stream's envelopes
(the anchor message, ``{"seq": i, "body": 83 B}``), ``--batch`` to a ``BATCH``
frame (1: each alone, a SEND). The run is made twice, with the first and the
second number of messages (``WARMUP`` before each, in frames of the same size),
and the difference of the totals over the difference of the numbers is what one
message costs the receiver: its transport, decoding, ordering, acknowledgements
(sent to the DEALER, never read) and hand-off to the handler. A first run, not
measured, compiles what the process imports (``bench.instructions.compiled_env``
holds the compiled modules, and the standard library's too once one ran). The frames are in
the socket's queue as fast as the peer reads them: the count repeats within a
few percent, and counts at different ``--batch`` split the cost into what a
frame costs and what a message does.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading

from bench.instructions import GRIND, REPO_ROOT, collected, compiled_env, parser, per_call

WARMUP = 1000
NAME = "bench/instructions-receiver"
SENDER = "bench/instructions-feeder"
STREAM = 4242


def frames(count: int, batch: int) -> list[bytes]:
    """The frames of ``count`` messages of one stream, ``batch`` to a frame."""
    from posa.wire.codec import Codec, Kind
    codec = Codec()
    pack = codec.packer()
    out = []
    for start in range(1, count + 1, batch):
        envelopes = [pack(Kind.SEND, STREAM, i, SENDER, NAME, 0, {},
                          {"seq": i, "body": b"x" * 83})
                     for i in range(start, min(start + batch, count + 1))]
        out.append(codec.pack_batch(STREAM, SENDER, NAME, envelopes)
                   if len(envelopes) > 1 else envelopes[0])
    return out


def receive(path: str, listen: str, messages: str) -> None:
    """The measured process: a peer that counts, fed the frames in ``path`` (of
    ``messages`` messages)."""
    import posa
    from posa import transport
    with open(path, "rb") as file:
        feed: list[bytes] = pickle.load(file)
    due = int(messages)
    seen = [0]
    done = threading.Event()

    def count(msg: object) -> None:
        seen[0] += 1
        if seen[0] >= due:
            done.set()
    with posa.Peer(NAME, listen=listen, handler=count) as peer:
        address = peer.addresses[0]
        if address.startswith("zmq+"):
            import zmq
            dealer = zmq.Context.instance().socket(zmq.DEALER)
            dealer.setsockopt(zmq.SNDHWM, 0)
            dealer.connect(address[len("zmq+"):])
            send, close = dealer.send, lambda: dealer.close(linger=0)
        else:
            conn = transport.connect(address)
            send, close = conn.send, conn.close
        for frame in feed:
            send(frame)
        if not done.wait(600):
            raise SystemExit(f"the receiver counted {seen[0]} of {due} messages")
        close()


def _count(messages: int, batch: int, listen: str, env: dict[str, str], tmp: str,
           grind: list[str] = GRIND) -> int:
    """Instructions the receiving process executed for ``messages`` messages (run
    under ``grind``: none, to compile what it imports first)."""
    total = WARMUP + messages
    path = os.path.join(tmp, f"frames-{total}-{batch}")
    with open(path, "wb") as file:
        pickle.dump(frames(total, batch), file)
    run = subprocess.run(grind + [sys.executable, "-m", "bench.instructions_receive",
                                  "--role", path, listen, str(total)],
                         capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if run.returncode:
        raise SystemExit(f"the receiver failed: {run.stderr[-2000:]}")
    return collected(run.stderr, "receiver") if grind else 0


def main(argv: list[str]) -> None:
    args = parser("bench.instructions_receive", __doc__ or "", "2000,12000")
    args.add_argument("--batch", type=int, default=128,
                      help="envelopes to a frame (default 128, as BATCH_MAX; 1: lone SENDs)")
    args.add_argument("--listen", default="zmq+tcp://127.0.0.1:0",
                      help="the receiver's transport (default zmq+tcp://127.0.0.1:0)")
    opts = args.parse_args(argv)
    if opts.role:
        return receive(*opts.role)
    with compiled_env() as env, tempfile.TemporaryDirectory(prefix="posa-receive-") as tmp:
        _count(0, opts.batch, opts.listen, env, tmp, grind=[])     # (nothing measured)
        per = per_call(lambda n: _count(n, opts.batch, opts.listen, env, tmp), opts.calls)
    print(f"receiver: {per:,.0f} instructions per message ({opts.listen}, "
          f"{opts.batch} to a frame)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
