"""``posa pub`` and ``posa sub``: an event channel from the shell, as ``nats pub/sub``.

``pub`` publishes one event and returns once the channel acknowledged it (the
channel has it in its history; exit 2 if the name is not an event channel).
``sub`` is a live tail: it prints every event of the topics asked for (a topic
is a prefix; none: all) as it arrives, one line each (``--json``: an object
with ``seq``, ``topic``, ``body``), from ``--from-seq N`` of the channel's
history if asked, until Ctrl-C or ``--count N`` events.  A hole in the stream
(events the channel dropped for this subscriber) is said on stderr.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from posa.cli.options import (
    add_client_parser,
    json_body,
    left,
    registry_from_args,
    to_json,
    usage,
    with_authenticator,
)
from posa.cli.values import count, natural
from posa.wire.names import validate_name

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    """Add ``posa pub`` and ``posa sub``."""
    p = add_client_parser(subparsers, "pub", "publish an event (JSON body) to an event "
                          "channel and wait until the channel has it",
                          "posa pub events/netmgmt link/down '{\"link\": \"r1-r2\"}'")
    p.add_argument("channel")
    p.add_argument("topic", help="the event's topic, e.g. link/down")
    p.add_argument("body", nargs="?", default="null", help="the body as JSON (default null)")
    p.set_defaults(run=with_authenticator(_pub))
    p = add_client_parser(subparsers, "sub", "print a channel's events as they arrive "
                          "(a live tail), from its history with --from-seq",
                          "posa sub events/netmgmt link/ --from-seq 1 --count 10 --json",
                          budget=False)
    p.add_argument("channel")
    p.add_argument("topics", nargs="*", metavar="TOPIC",
                   help="topic prefixes to receive (default: every topic)")
    p.add_argument("--from-seq", type=natural, default=None, metavar="N",
                   help="replay the channel's history from seq N first")
    p.add_argument("--count", type=count, default=None, metavar="N",
                   help="exit after N events (default: until Ctrl-C)")
    p.set_defaults(run=with_authenticator(_sub))


def _channel(registry: Any, name: str) -> None:
    """Exit 2 unless ``name`` is a live event channel (NameNotFound if not live)."""
    if registry.lookup(validate_name(name)).meta.get("kind") != "channel":
        usage(f"{name!r} is not an event channel; send it a message: posa send {name} JSON")


def _pub(args: argparse.Namespace) -> int:
    from posa.channel.publisher import Publisher
    body = json_body(args.body)
    with registry_from_args(args) as registry:
        _channel(registry, args.channel)
        publisher = Publisher(args.channel, registry=registry, timeout=left(args),
                              authenticator=args.authenticator)
        try:
            publisher.publish(args.topic, body, timeout=left(args))
            publisher.flush(left(args))
        finally:
            publisher.close(timeout=left(args))
    if args.json:
        print(to_json({"published": args.channel, "topic": args.topic}))
    return 0


def _sub(args: argparse.Namespace) -> int:
    from posa.channel.subscriber import Subscriber
    with registry_from_args(args) as registry:
        _channel(registry, args.channel)
        with Subscriber(args.channel, topics=args.topics or [""], from_seq=args.from_seq,
                        registry=registry, timeout=args.timeout,
                        authenticator=args.authenticator) as subscriber:
            print(f"# subscribed to {args.channel}", file=sys.stderr, flush=True)
            seen = 0
            while args.count is None or seen < args.count:
                event = subscriber.receive()
                if event.gap is not None:
                    print(f"# gap before seq {event.seq}: {event.gap}", file=sys.stderr)
                if args.json:
                    print(to_json({"seq": event.seq, "topic": event.topic,
                                   "body": event.body}), flush=True)
                else:
                    print(f"[#{event.seq}] {event.topic}\t{to_json(event.body)}", flush=True)
                seen += 1
    return 0
