"""``posa context add/use/ls/rm``: named settings, as ``nats context`` keeps them.

    posa context add prod --dispatcher tcp://10.0.0.5:7000 --keys ~/.posa/prod.keys
    posa context use prod          every command now talks to prod
    posa names --context lab       one command elsewhere
    posa context ls                the contexts, the one in use marked *

The file and the order in which settings win: ``posa.cli.settings``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from posa.cli.options import to_json
from posa.cli.settings import FIELDS, ContextError, config_path, load, save
from posa.wire.names import validate_name

__all__ = ["add_parser"]

_EXAMPLE = """example:
  posa context add prod --dispatcher tcp://10.0.0.5:7000 --keys ~/.posa/prod.keys
  posa context use prod
  posa names --context lab"""


def add_parser(subparsers: Any) -> None:
    """Add ``posa context`` and its subcommands."""
    top = subparsers.add_parser(
        "context", help="named settings (dispatcher, keys, TLS), like nats context",
        description="Keep named settings in $XDG_CONFIG_HOME/posa/contexts.json. "
        "A setting's flag wins over its variable (POSA_DISPATCHER, POSA_KEYS, ...), "
        "which wins over the context, which wins over the default.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = top.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("add", help="add or replace a context",
                         epilog="example: posa context add prod --dispatcher "
                         "tcp://10.0.0.5:7000 --keys prod.keys --use")
    p.add_argument("name")
    p.add_argument("--dispatcher", metavar="ADDRESS", required=True)
    p.add_argument("--keys", metavar="FILE", help="key file (stored as an absolute path)")
    p.add_argument("--key-id", metavar="ID")
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        p.add_argument(flag, metavar="PEM", help="stored as an absolute path")
    p.add_argument("--use", action="store_true", help="and use it from now on")
    p.set_defaults(run=_add)
    p = verbs.add_parser("use", help="use a context from now on",
                         epilog="example: posa context use prod")
    p.add_argument("name")
    p.set_defaults(run=_use)
    p = verbs.add_parser("rm", help="remove a context", epilog="example: posa context rm lab")
    p.add_argument("name")
    p.set_defaults(run=_rm)
    p = verbs.add_parser("ls", help="list the contexts (* marks the one in use)",
                         epilog="example: posa context ls --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_ls)


def _add(args: argparse.Namespace) -> int:
    validate_name(args.name)
    data = load()
    entry: dict[str, str] = {}
    for field in FIELDS:
        value = getattr(args, field)
        if value:
            entry[field] = value if field in ("dispatcher", "key_id") else \
                str(Path(value).expanduser().resolve())
    data["contexts"][args.name] = entry
    if args.use or data["current"] is None:
        data["current"] = args.name
    path = save(data)
    print(f"context {args.name} saved in {path}"
          + (" (in use)" if data["current"] == args.name else ""))
    return 0


def _known(data: dict[str, Any], name: str) -> None:
    if name not in data["contexts"]:
        known = ", ".join(sorted(data["contexts"])) or "none yet"
        raise ContextError(f"no context {name!r} (known: {known}); add it with "
                           f"posa context add {name} --dispatcher ADDRESS")


def _use(args: argparse.Namespace) -> int:
    data = load()
    _known(data, args.name)
    data["current"] = args.name
    save(data)
    print(f"using context {args.name}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    data = load()
    _known(data, args.name)
    del data["contexts"][args.name]
    if data["current"] == args.name:
        data["current"] = None
    save(data)
    return 0


def _ls(args: argparse.Namespace) -> int:
    data = load()
    if args.json:
        print(to_json({"current": data["current"], "contexts": data["contexts"],
                       "file": str(config_path())}))
        return 0
    for name, entry in sorted(data["contexts"].items()):
        mark = "*" if name == data["current"] else " "
        if not isinstance(entry, dict):
            print(f"{mark} {name}\t(not a set of settings: posa context rm {name})")
            continue
        print(f"{mark} {name}\t{entry.get('dispatcher', '')}"
              + (f"\tkeys {entry['keys']}" if entry.get("keys") else ""))
    return 0
