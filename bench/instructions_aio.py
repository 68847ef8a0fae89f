"""Instructions per request of ``posa.aio.Peer.request`` from many tasks, by callgrind.

    python -m bench.instructions_aio [--side server|client|both] [--calls 1024,7168]
                                     [--tasks 64]

As ``bench.instructions`` (whose counting this shares), for the suite's
``scale_aio_64`` row: the echo peer is the same plain ``posa.Peer`` in a process
of its own, and the client is one ``posa.aio.Peer`` whose ``--tasks`` tasks
(default 64) take the next call from one shared count until the warm-up calls
(500) and then the timed ones are made.  The difference of the two runs'
totals divided by the difference of the call counts is what one request costs
each process with that many requests in flight together.  The measured side
runs tens of times slower under callgrind, so the other side answers sooner
than it would beside it; the counts compare trees measured alike.
"""
from __future__ import annotations

import asyncio
import sys

from bench.instructions import BODY, NAME, WARMUP, parser, play, report, role_server

MODULE = "bench.instructions_aio"


def role_client(dispatcher: str, calls: int, tasks: int) -> None:
    """One ``posa.aio.Peer``, ``tasks`` tasks: warm-up calls, then ``calls`` more."""
    import posa
    import posa.aio

    async def run() -> None:
        async with posa.aio.Peer("bench/instructions-aio", registry=reg,
                                 listen="tcp://127.0.0.1:0") as peer:
            request = peer.request

            async def caller(left: list[int]) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await request(NAME, BODY, timeout=30.0)

            for n in (WARMUP, calls):
                left = [n]
                await asyncio.gather(*(caller(left) for _ in range(tasks)))

    with posa.RegistryClient(dispatcher) as reg:
        asyncio.run(run())


def main(argv: list[str]) -> None:
    cli = parser(MODULE, __doc__ or "", "1024,7168")
    cli.add_argument("--tasks", type=int, default=64,
                     help="tasks sharing the client's peer (default 64)")
    args = cli.parse_args(argv)
    if args.role:
        return play(args.role, {"server": role_server, "client": role_client})
    report(MODULE, args, "request", [str(args.tasks)])


if __name__ == "__main__":
    main(sys.argv[1:])
