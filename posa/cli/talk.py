"""``posa send``, ``request``, ``call``, ``ping``: talk to names and services.

Each sends as the anonymous sender through a forwarder of its own that is
flushed before the command exits, so ``send`` returns only once the recipient
(every member of a group) acknowledged the message.  The whole command runs
within ``--timeout`` (``posa.cli``).  With ``--keys`` (or ``POSA_KEYS``) every
frame is sealed and every answer checked; an authentication failure on either
side raises ``Unauthorized`` at once (exit 5), saying which key is missing.

``send`` to an event channel is refused (exit 2): a channel drops what is not
one of its operations, so the message would be acknowledged and lost; ``posa
pub`` publishes.  A name that matches nothing but is a service says to use
``posa call``.
"""
from __future__ import annotations

import argparse
import time
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
from posa.cli.values import count, seconds_or_zero
from posa.delivery.group import send_to_group
from posa.delivery.sender import Sender
from posa.errors import NameNotFound, PosaError, Unauthorized
from posa.naming.pages import registrations
from posa.naming.registration import Registry, resolver
from posa.wire.names import is_pattern, validate_name, validate_pattern

__all__ = ["add_parser"]

DISPATCHER = "posa/dispatcher"


def add_parser(subparsers: Any) -> None:
    """Add ``posa send``, ``request``, ``call`` and ``ping``."""
    p = add_client_parser(subparsers, "send", "send a one-way message (JSON body) to a name "
                          "or to every member of a group, and wait for acknowledgement",
                          "posa send 'netmgmt/site-a/*' '{\"op\": \"link-down\"}'")
    p.add_argument("name", help="a name, or a group pattern such as 'netmgmt/*'")
    p.add_argument("body", help="the body as JSON, e.g. '{\"op\": \"routes\"}'")
    p.set_defaults(run=with_authenticator(_send))
    p = add_client_parser(subparsers, "request",
                          "send a request (JSON body) to a name and print the reply",
                          "posa request netmgmt/admin '{\"op\": \"routes\"}' --json")
    p.add_argument("name")
    p.add_argument("body", nargs="?", default="null", help="the body as JSON (default null)")
    p.set_defaults(run=with_authenticator(_request))
    p = add_client_parser(subparsers, "call", "call a service (any of its servers, failing "
                          "over) and print the reply", "posa call lab/echo '\"hi\"' --json")
    p.add_argument("service")
    p.add_argument("body", nargs="?", default="null", help="the body as JSON (default null)")
    p.set_defaults(run=with_authenticator(_call))
    p = add_client_parser(subparsers, "ping", "send a name requests and print the round-trip "
                          "times (posa/dispatcher answers; a peer's handler answers the "
                          "request, body null, header ping: true)",
                          "posa ping lab/echo --count 3", budget=False)
    p.add_argument("name", nargs="?", default=DISPATCHER)
    p.add_argument("--count", type=count, default=3, metavar="N", help="requests (default 3)")
    p.add_argument("--interval", type=seconds_or_zero, default=0.5, metavar="S",
                   help="seconds between requests (default 0.5)")
    p.set_defaults(run=with_authenticator(_ping))


def _sender(args: argparse.Namespace, registry: Registry) -> Sender:
    return Sender("", resolve=resolver(registry), authenticator=args.authenticator)


def _not_found(registry: Any, name: str, exc: NameNotFound) -> NameNotFound:
    """``exc``, or one that says ``name`` is a service (``posa call`` it)."""
    try:
        if name in registry.services():
            return NameNotFound(f"{name!r} is a service, not a name: call it with "
                                f"posa call {name} JSON")
    except PosaError:
        pass
    return exc


def _send(args: argparse.Namespace) -> int:
    body = json_body(args.body)
    with registry_from_args(args) as registry:
        if is_pattern(args.name):
            validate_pattern(args.name)
            members = [r.name for r in registrations(registry, args.name)]
            if not members:
                raise NameNotFound(f"no live name matches the group {args.name!r}")
        else:
            validate_name(args.name)
            try:
                kind = registry.lookup(args.name).meta.get("kind")
            except NameNotFound as exc:
                raise _not_found(registry, args.name, exc) from None
            if kind == "channel":
                usage(f"{args.name!r} is an event channel: it drops a message that is not "
                      f"one of its operations; publish to it: posa pub {args.name} TOPIC "
                      "JSON")
            members = [args.name]
        sender = _sender(args, registry)
        try:
            if is_pattern(args.name):
                send_to_group(sender.forwarder(), args.name, members, body, None,
                              time.monotonic() + left(args))
            else:
                sender.send(args.name, body, timeout=left(args))
            sender.flush(left(args))
        finally:
            sender.close()
    if args.json:
        print(to_json({"sent": args.name, "to": members}))
    return 0


def _print_reply(args: argparse.Namespace, body: Any) -> None:
    print(to_json(body) if args.json else (body if isinstance(body, str) else to_json(body)))


def _request(args: argparse.Namespace) -> int:
    body = json_body(args.body)
    with registry_from_args(args) as registry:
        sender = _sender(args, registry)
        try:
            reply = sender.request(args.name, body, timeout=left(args))
        except NameNotFound as exc:
            raise _not_found(registry, args.name, exc) from None
        finally:
            sender.close()
    _print_reply(args, reply.body)
    return 0


def _call(args: argparse.Namespace) -> int:
    from posa.dispatch.services import Client
    body = json_body(args.body)
    with registry_from_args(args) as registry:
        client = Client(registry=registry, timeout=args.timeout,
                        authenticator=args.authenticator)
        try:
            reply = client.call(validate_name(args.service), body, timeout=left(args))
        except NameNotFound as exc:
            raise NameNotFound(f"{exc}; list the services: posa services") from None
        finally:
            client.close()
    _print_reply(args, reply)
    return 0


def _ping(args: argparse.Namespace) -> int:
    from posa.naming.protocol import OPS
    body, headers = ((OPS.request("ping"), None) if args.name == DISPATCHER
                     else (None, {"ping": True}))
    times: list[float] = []
    error: PosaError | None = None
    with registry_from_args(args) as registry:
        sender = _sender(args, registry)
        try:
            for seq in range(1, args.count + 1):
                if seq > 1:
                    time.sleep(args.interval)       # the pace asked for
                started = time.monotonic()
                try:
                    sender.request(args.name, body, timeout=args.timeout, headers=headers)
                except (NameNotFound, Unauthorized):
                    raise
                except PosaError as exc:
                    error = exc
                    _ping_line(args, seq, None, str(exc))
                    continue
                times.append((time.monotonic() - started) * 1000)
                _ping_line(args, seq, times[-1], None)
        finally:
            sender.close()
    _ping_summary(args, times)
    if not times and error is not None:
        raise error
    return 0


def _ping_line(args: argparse.Namespace, seq: int, ms: float | None, error: str | None
               ) -> None:
    if args.json:
        print(to_json({"seq": seq, "name": args.name, "ms": None if ms is None
                       else round(ms, 3), **({"error": error} if error else {})}), flush=True)
    elif ms is None:
        print(f"{args.name}: seq={seq} no answer: {error}", flush=True)
    else:
        print(f"{args.name}: seq={seq} time={ms:.3f} ms", flush=True)


def _ping_summary(args: argparse.Namespace, times: list[float]) -> None:
    if args.json:
        return
    line = f"--- {args.name}: {args.count} sent, {len(times)} answered"
    if times:
        line += (f", rtt min/avg/max = {min(times):.3f}/{sum(times) / len(times):.3f}/"
                 f"{max(times):.3f} ms")
    print(line)
