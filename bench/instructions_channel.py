"""Instructions per event of an event channel's fan-out, counted by callgrind.

    python -m bench.instructions_channel [--side subscriber|channel|publisher|all]
                                         [--events 2000,8000] [--subscribers 8]

As in the suite's ``channel_fanout_N`` rows: a dispatcher, an ``EventChannel``
(zmq+tcp), ``Subscriber`` processes (``policy="block"``) and a ``Publisher`` of
the anchor message (``{"seq": i, "body": 83 B}``) on one topic, each a process of
its own; a subscriber's buffer at the channel holds every event of the run, so
that, as in the rows, the block policy never holds the publisher back (its waits
would make the counts vary from run to run). The side measured runs under
``valgrind --tool=callgrind``, once for the first number of events and once for
the second (``WARMUP`` events before each), and the difference of its two totals
over the difference of the event counts is what one event costs it: for a
subscriber, receiving one event (one subscriber runs, the measured one); for the
channel, one event delivered to each of ``--subscribers`` subscribers, reported
per event delivered (per event published over the subscriber count); for the
publisher, publishing one (with as many subscribers). Start-up, warm-up and exit
cancel out (``bench.instructions``, which this shares its helpers with). The
measured process is the slowest, so deliveries come in large batches, as in the
rows. The channel's count varies from run to run (its threads' waits and wake-ups
differ), a subscriber's and the publisher's within a few percent.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from bench.instructions import (
    GRIND,
    REPO_ROOT,
    collected,
    compiled_env,
    per_call,
    play,
    start_dispatcher,
    stop,
)

WARMUP = 1000
NAME = "bench/instructions-channel"
TOPIC = "bench/fanout"
BODY = b"x" * 83
SIDES = ("subscriber", "channel", "publisher")


def role_channel(dispatcher: str) -> None:
    """The channel: serves until a line arrives on stdin."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.EventChannel(
            NAME, registry=reg, listen="zmq+tcp://127.0.0.1:0"):
        print("READY", flush=True)
        sys.stdin.readline()


def role_subscriber(dispatcher: str, events: int) -> None:
    """A subscriber: subscribed, says READY, receives ``events`` events, exits."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Subscriber(
            NAME, topics=[TOPIC], registry=reg, listen="zmq+tcp://127.0.0.1:0",
            policy="block", buffer=max(events, 10_000)) as sub:
        print("READY", flush=True)
        receive = sub.receive
        expected = 0
        for _ in range(events):
            seq = receive(600.0).body["seq"]
            if seq != expected:
                raise SystemExit(f"event {seq} came where {expected} was due")
            expected = seq + 1


def role_publisher(dispatcher: str, events: int) -> None:
    """The publisher: publishes ``events`` events, waits for the channel's
    acknowledgement of all, exits."""
    import posa
    with posa.RegistryClient(dispatcher) as reg, posa.Publisher(
            NAME, registry=reg, timeout=600.0) as pub:
        publish = pub.publish
        for i in range(events):
            publish(TOPIC, {"seq": i, "body": BODY})
        pub.flush(600.0)


def _started(argv: list[str], env: dict[str, str], stdin: bool = False
             ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO_ROOT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        raise SystemExit(f"{argv[-3]} did not start: {proc.communicate()[1]}")
    return proc


def _count(side: str, events: int, subscribers: int, env: dict[str, str]) -> int:
    """Instructions the ``side`` process executed in a run of ``events`` events."""
    me = [sys.executable, "-m", "bench.instructions_channel", "--role"]
    dispatcher, address, _ = start_dispatcher(env)
    total = str(WARMUP + events)
    subs: list[subprocess.Popen[str]] = []
    try:
        channel = _started((GRIND if side == "channel" else []) + me + ["channel", address],
                           env, stdin=True)
        for i in range(subscribers):
            grind = GRIND if side == "subscriber" and i == 0 else []
            subs.append(_started(grind + me + ["subscriber", address, total], env))
        publisher = subprocess.run(
            (GRIND if side == "publisher" else []) + me + ["publisher", address, total],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True)
        errs = [sub.communicate(timeout=1200)[1] for sub in subs]
        if any(sub.returncode for sub in subs):
            raise SystemExit(f"a subscriber failed: {errs}")
        _, channel_err = channel.communicate("stop\n", timeout=120)
    finally:
        for sub in subs:
            if sub.poll() is None:
                sub.kill()
        stop(dispatcher)
    stderr = {"channel": channel_err, "subscriber": errs[0] if errs else "",
              "publisher": publisher.stderr}[side]
    return collected(stderr, side)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions_channel",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=(*SIDES, "all"), default="all")
    parser.add_argument("--events", default="2000,8000",
                        help="the two numbers of timed events (default 2000,8000)")
    parser.add_argument("--subscribers", type=int, default=8,
                        help="subscribers when the channel or the publisher is measured "
                             "(default 8; one when a subscriber is)")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return play(args.role, {"channel": role_channel, "subscriber": role_subscriber,
                                "publisher": role_publisher})
    with compiled_env() as env:
        for side in SIDES if args.side == "all" else (args.side,):
            k = 1 if side == "subscriber" else args.subscribers
            per_event = per_call(lambda n, side=side, k=k: _count(  # type: ignore[misc]
                side, n, k, env), args.events)
            if side == "channel":
                print(f"channel: {per_event / k:,.0f} instructions per event delivered "
                      f"({k} subscribers; {per_event:,.0f} per event published)")
            else:
                print(f"{side}: {per_event:,.0f} instructions per event"
                      + (f" ({k} subscribers)" if side == "publisher" else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
