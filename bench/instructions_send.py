"""Instructions per message of one-way ``Peer.send``, counted by callgrind.

    python -m bench.instructions_send [--side server|client|both] [--calls 10000,30000]
                                      [--listen zmq+tcp://127.0.0.1:0]

As in the suite's ``peer_send_zmq`` / ``peer_send_tcp`` rows: a dispatcher, a
receiving peer (a handler that counts) and a sending peer, each a process of its
own. The sender sends ``WARMUP`` messages and then the number measured, one at a
time with ``Peer.send``, and flushes (waits for every acknowledgement); the side
measured runs under ``valgrind --tool=callgrind`` once for each of the two numbers,
and the difference of its totals over the difference of the numbers is what one
message costs that process (``bench.instructions``, whose helpers this shares).
The measured process is the slower one, so the other side's batches and
acknowledgements come as they do when that side is the bottleneck. A count
repeats within a few percent at the same ``--calls``, but the receiver's depends
on them: the further behind it falls, the larger the batches it reads (about
26k instructions per message at 10000,30000 here, several times more at
2000,6000), so compare counts made with the same numbers only.
"""
from __future__ import annotations

import os
import sys
import threading

from bench.instructions import parser, play, report

WARMUP = 1000
NAME = "bench/instructions-sink"
BODY = {"seq": 0, "body": b"x" * 83}
LISTEN = "BENCH_SEND_LISTEN"        # the receiver's (and sender's) transport, via env


def role_server(dispatcher: str) -> None:
    """The receiving peer: counts what arrives; on ``stop CALLS`` on stdin, waits
    until it has counted every message sent (the warm-up's and the calls'), exits.
    The handler only counts, and sets an event once the count is due, as the
    suite's sink does (a condition notified per message cost the receiver more
    than a thousand instructions a message of its own)."""
    import posa
    seen, due = [0], [1 << 62]      # due: a count never reached until it is known
    done = threading.Event()

    def count(msg: object) -> None:
        seen[0] += 1
        if seen[0] >= due[0]:
            done.set()
    with posa.RegistryClient(dispatcher) as reg, posa.Peer(
            NAME, registry=reg, listen=os.environ[LISTEN], handler=count):
        print("READY", flush=True)
        due[0] = WARMUP + int(sys.stdin.readline().split()[1])
        if seen[0] < due[0] and not done.wait(timeout=300):
            raise SystemExit(f"the receiver counted {seen[0]} of {due[0]} messages")


def role_client(dispatcher: str, calls: int) -> None:
    """The sending peer: sends, flushes, exits."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Peer(
            "bench/instructions-source", registry=reg,
            listen=os.environ[LISTEN]) as peer:
        # a receiver under callgrind runs some 50x slower: its acknowledgements come
        # late, and the window resent after a second of silence would be counted as
        # its work (a rate it never sees otherwise)
        peer.sender.forwarder().ack_timeout = 600.0
        send = peer.send
        for _ in range(WARMUP + calls):
            send(NAME, BODY, timeout=60.0)
        peer.flush(120.0)


def main(argv: list[str]) -> None:
    args = parser("bench.instructions_send", __doc__ or "", "10000,30000")
    args.add_argument("--listen", default=os.environ.get(LISTEN, "zmq+tcp://127.0.0.1:0"),
                      help="the peers' transport (default zmq+tcp://127.0.0.1:0)")
    opts = args.parse_args(argv)
    if opts.role:
        return play(opts.role, {"server": role_server, "client": role_client})
    os.environ[LISTEN] = opts.listen        # (the processes' environment is this one's)
    report("bench.instructions_send", opts, f"message ({opts.listen}; server: the receiver)")


if __name__ == "__main__":
    main(sys.argv[1:])
