"""Where a command's settings come from: flag > environment > context > default.

A *context* is a named set of settings (the dispatcher's address, a key file, a
key id, TLS files), kept in ``$XDG_CONFIG_HOME/posa/contexts.json`` (default
``~/.config/posa/contexts.json``) with the name of the one in use, as ``nats
context`` keeps its own.  ``posa context add/use/ls/rm`` edit the file (module
``posa.cli.context``); ``--context NAME`` picks one for one command, else
``POSA_CONTEXT``, else the one ``posa context use`` selected.

For each setting the first of these that gives it wins: the command's flag, its
environment variable (``POSA_DISPATCHER``, ``POSA_KEYS``, ``POSA_KEY_ID``,
``POSA_TLS_CA``, ``POSA_TLS_CERT``, ``POSA_TLS_KEY``), the context, the default
(``posa.cli.DEFAULT_DISPATCHER``; no keys, no TLS).  ``apply`` resolves them on
the parsed arguments before a command that reaches a dispatcher runs: the dispatcher into
``args.dispatcher``, the others into the environment the security and TLS code
reads (only where the flag and the variable left them unset). With a tls://
dispatcher, TLS files so set that are missing or not PEM are said then
(``TlsFilesError``, naming the variable and the file), before the command connects
anywhere: not a timeout of each connect.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from posa.cli import DEFAULT_DISPATCHER
from posa.errors import NameNotFound, PosaError

__all__ = ["FIELDS", "config_path", "load", "save", "selected", "apply", "ContextError",
           "ContextsFileError"]

# context field -> the environment variable it stands in for
FIELDS = {"dispatcher": "POSA_DISPATCHER", "keys": "POSA_KEYS", "key_id": "POSA_KEY_ID",
          "tls_ca": "POSA_TLS_CA", "tls_cert": "POSA_TLS_CERT", "tls_key": "POSA_TLS_KEY"}


class ContextError(NameNotFound):
    """A context that does not exist (exit 3)."""


class ContextsFileError(PosaError):
    """A contexts file that cannot be read, or is not one (exit 1)."""


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/posa/contexts.json`` (``~/.config`` without the variable)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "posa" / "contexts.json"


def load() -> dict[str, Any]:
    """The contexts file as ``{"current": NAME | None, "contexts": {NAME: {...}}}``."""
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": None, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise ContextsFileError(f"cannot read the contexts file {path}: {exc}; fix or "
                           "remove it (posa context add writes a new one)") from None
    if (not isinstance(data, dict) or not isinstance(data.get("contexts"), dict)
            or not isinstance(data.get("current"), (str, type(None)))):
        raise ContextsFileError(f"the contexts file {path} is not a posa contexts file "
                           '({"current": NAME, "contexts": {...}}); fix or remove it')
    data.setdefault("current", None)
    return data


def save(data: dict[str, Any]) -> Path:
    """Write the contexts file (mode 600: it names key files), atomically."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    temporary.replace(path)
    return path


def selected(name: str | None) -> tuple[str | None, dict[str, Any]]:
    """The context to use and its settings: ``name`` (``--context``), else
    ``$POSA_CONTEXT``, else the current one; ``ContextError`` for an unknown name."""
    wanted = name or os.environ.get("POSA_CONTEXT") or None
    data = load() if wanted or config_path().exists() else {"current": None, "contexts": {}}
    wanted = wanted or data["current"]
    if wanted is None:
        return None, {}
    contexts = data["contexts"]
    if wanted not in contexts:
        known = ", ".join(sorted(contexts)) or "none yet"
        raise ContextError(f"no context {wanted!r} (known: {known}); add it with "
                           f"posa context add {wanted} --dispatcher ADDRESS")
    context = contexts[wanted]
    if not isinstance(context, dict) or not all(
            isinstance(value, str) for value in context.values()):
        raise ContextsFileError(
            f"context {wanted!r} in {config_path()} is not a set of settings "
            f"({{\"dispatcher\": ADDRESS, ...}}, each a string); fix it, or posa "
            f"context rm {wanted} and add it again")
    return wanted, dict(context)


def apply(args: argparse.Namespace) -> None:
    """Resolve the settings of the parsed ``args`` in place: flag, environment,
    context, default (see the module's text). Only for a command that reaches a
    dispatcher (it has ``--dispatcher``): ``posa dispatcher`` itself, ``keygen``
    and ``context`` take nothing from a context."""
    if not hasattr(args, "dispatcher"):
        return
    name, context = selected(getattr(args, "context", None))
    if args.dispatcher is not None:
        source = "--dispatcher"
    elif os.environ.get("POSA_DISPATCHER"):
        args.dispatcher, source = os.environ["POSA_DISPATCHER"], "POSA_DISPATCHER"
    elif context.get("dispatcher"):
        args.dispatcher, source = context["dispatcher"], f"the context {name!r}"
    else:
        args.dispatcher, source = DEFAULT_DISPATCHER, "the default"
    _check_dispatcher(str(args.dispatcher), source)
    for field, variable in FIELDS.items():
        value = context.get(field)
        if field == "dispatcher" or not value or getattr(args, field, None):
            continue
        if not os.environ.get(variable):
            os.environ[variable] = str(value)
    if "tls://" in str(args.dispatcher):    # the first connect is over tls://
        from posa.transport.tls.settings import TlsSettings
        TlsSettings.from_env()          # loads the files: raises TlsFilesError


def _check_dispatcher(address: str, source: str) -> None:
    """Exit with 2 (bad usage) at once if ``address`` (from ``source``) is not a
    transport URI or a list of them, or names a scheme no transport serves: said
    now, not as a timeout of the first lookup."""
    from posa.cli.options import usage
    from posa.errors import TransportError
    from posa.transport import get, schemes, split
    for part in (item.strip() for item in address.split(",") if item.strip()):
        try:
            scheme = split(part)[0]
            if scheme not in schemes():     # (a built-in one is not loaded here: tls://
                get(scheme)                 # loads its POSA_TLS_* files, said below)
        except TransportError as exc:
            usage(f"the dispatcher address {address!r} (from {source}) will not do: {exc}")
