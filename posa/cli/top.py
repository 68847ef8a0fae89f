"""``posa top``: a live terminal view of a dispatcher, redrawn with plain ANSI.

Every ``--interval`` seconds it reads the dispatcher's names and services (its
registry, page by page) and, with ``--ops URL`` (the dispatcher's ``--ops-port``),
its ``/metrics``: messages received and sent per second, requests in flight,
refusals by reason.  Names that came and went since the last frame are
counted.  ``--once`` prints one frame and exits (``--json``: the frame as one
JSON object), for scripts and tests.
"""
from __future__ import annotations

import argparse
import re
import time
import urllib.request
from collections.abc import Iterable
from typing import Any

from posa.cli.options import add_client_parser, registry_from_args, to_json, with_authenticator
from posa.cli.values import seconds
from posa.errors import PosaError

__all__ = ["add_parser", "parse_metrics"]

CLEAR = "\x1b[H\x1b[2J"          # cursor home, clear the screen
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_SHOWN = 20                       # names listed in a frame (the rest counted)


def add_parser(subparsers: Any) -> None:
    """Add ``posa top``."""
    p = add_client_parser(subparsers, "top", "a live view of a dispatcher: names, "
                          "services, message rates, refusals",
                          "posa top --ops http://127.0.0.1:9100 --interval 2",
                          budget=False)
    p.add_argument("--ops", metavar="URL", default=None,
                   help="the dispatcher's operations server (its --ops-port), for rates "
                   "and refusals from /metrics")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                   help="seconds between frames (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(run=with_authenticator(_top))


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {metric: [(labels, value)]} (comments skipped)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        try:
            found.setdefault(match.group(1), []).append((labels, float(match.group(3))))
        except ValueError:
            continue
    return found


def _metrics(url: str | None, timeout: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    if url is None:
        return {}
    if not url.startswith(("http://", "https://")):
        raise PosaError(f"--ops {url!r} is not a URL; give it as http://HOST:PORT, e.g. "
                        "http://127.0.0.1:9100")
    target = url.rstrip("/") + ("" if url.rstrip("/").endswith("/metrics") else "/metrics")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as answer:
            return parse_metrics(answer.read().decode("utf-8", "replace"))
    except OSError as exc:
        raise PosaError(f"cannot read {target}: {exc}; give --ops the dispatcher's "
                        "operations server (posa dispatcher --ops-port PORT)") from None
    except ValueError as exc:       # not a URL urllib knows: no scheme, a stray space
        raise PosaError(f"--ops {url!r} is not a URL ({exc}); give it as "
                        "http://HOST:PORT, e.g. http://127.0.0.1:9100") from None


def _sum(samples: Iterable[tuple[dict[str, str], float]]) -> float:
    return sum(value for _, value in samples)


def snapshot(args: argparse.Namespace, registry: Any) -> dict[str, Any]:
    """One frame's data: names, services and (with ``--ops``) counters."""
    names = [r for page in registry.pages("**") for r in page]
    metrics = _metrics(args.ops, args.timeout)
    refusals: dict[str, float] = {}
    for labels, value in metrics.get("posa_rejections_total", []):
        reason = labels.get("reason", "?")
        refusals[reason] = refusals.get(reason, 0.0) + value
    return {"dispatcher": args.dispatcher, "time": time.time(),
            "names": [{"name": r.name, "addresses": list(r.addresses), "epoch": r.epoch,
                       "expires_in": round(r.expires_in, 1)} for r in names],
            "services": registry.services(),
            "received": _sum(metrics.get("posa_messages_received_total", [])),
            "sent": _sum(metrics.get("posa_messages_sent_total", [])),
            "in_flight": _sum(metrics.get("posa_requests_in_flight", [])),
            "refusals": refusals, "metrics": bool(metrics)}


def render(frame: dict[str, Any], last: dict[str, Any] | None) -> str:
    """The text of one frame; rates and name changes against the ``last`` one."""
    names = {n["name"] for n in frame["names"]}
    lines = [f"posa top  {frame['dispatcher']}  "
             + time.strftime("%H:%M:%S", time.localtime(frame["time"]))]
    changes = ""
    if last is not None:
        before = {n["name"] for n in last["names"]}
        changes = f"  (+{len(names - before)} -{len(before - names)})"
    lines.append(f"names {len(names)}{changes}   services {len(frame['services'])}")
    if frame["metrics"]:
        rates = ""
        if last is not None and frame["time"] > last["time"]:
            span = frame["time"] - last["time"]
            rates = (f"   {(frame['received'] - last['received']) / span:.1f}/s in, "
                     f"{(frame['sent'] - last['sent']) / span:.1f}/s out")
        refused = ", ".join(f"{reason} {count:.0f}" for reason, count
                            in sorted(frame["refusals"].items())) or "none"
        lines.append(f"messages {frame['received']:.0f} in, {frame['sent']:.0f} out{rates}"
                     f"   in flight {frame['in_flight']:.0f}")
        lines.append(f"refusals {refused}")
    lines += ["", f"{'NAME':32} {'EPOCH':>5} {'EXPIRES':>7}  ADDRESSES"]
    for entry in frame["names"][:_SHOWN]:
        lines.append(f"{entry['name']:32} {entry['epoch']:>5} {entry['expires_in']:>6.1f}s"
                     f"  {' '.join(entry['addresses'])}")
    if len(frame["names"]) > _SHOWN:
        lines.append(f"... and {len(frame['names']) - _SHOWN} more (posa names)")
    lines += ["", f"{'SERVICE':32} SERVERS"]
    for service, servers in sorted(frame["services"].items()):
        lines.append(f"{service:32} {len(servers)}: {' '.join(sorted(servers))}")
    return "\n".join(lines)


def _top(args: argparse.Namespace) -> int:
    last: dict[str, Any] | None = None
    with registry_from_args(args) as registry:
        while True:
            frame = snapshot(args, registry)
            if args.once:
                print(to_json(frame) if args.json else render(frame, None))
                return 0
            print(CLEAR + render(frame, last), flush=True)
            last = frame
            time.sleep(args.interval)       # the refresh pace asked for
