"""Any program as a work-queue executor: one process per item.

The executor side of Burns' container interfaces: a ``Worker`` whose
``work`` is a ``Command`` runs a program of the user's for every item, so the
work can be written in any language (``posa worker --queue NAME -- COMMAND
ARGS...`` is this, from the shell).

The contract with the program (docs/work.md, "Any program as a worker"):

- the item's data comes on stdin: bytes as they are, any other data as JSON
  (a string too: ``"text"``, with its quotes); or, if an argument is ``{}``,
  as the path of a file holding the same bytes (removed afterwards), also in
  the environment as ``WORK_ITEM_FILE``; ``WORK_ITEM_KEY`` and
  ``WORK_ITEM_ATTEMPT`` are always set;
- exit status 0 completes the item, with stdout as its result (text if it is
  UTF-8, else bytes); any other status fails it, with the status and the tail
  of stderr as the reason, and the queue retries it (``max_attempts``) and then
  dead-letters it;
- a program still running ``timeout`` seconds after it started is killed with
  its whole process group (SIGKILL), which fails the item.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from posa.work.worker import Item

__all__ = ["Command", "CommandFailed", "item_bytes"]

PLACEHOLDER = "{}"


class CommandFailed(RuntimeError):
    """The program exited with a non-zero status or ran out of time (its
    message, with the tail of stderr, becomes the item's failure reason)."""


def item_bytes(data: Any) -> bytes:
    """What the program reads for ``data``: bytes as they are, else JSON."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    return json.dumps(data, ensure_ascii=False).encode()


class Command:
    """An executor that runs ``argv`` once per item (see the module's doc for
    the contract). ``timeout``: seconds a run may take (None: no limit);
    ``tail``: bytes of stderr kept in a failure reason; ``cwd`` and ``env``
    (added to this process's environment) are the program's."""

    def __init__(self, argv: Sequence[str], *, timeout: float | None = None,
                 tail: int = 2000, cwd: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("give the program to run, e.g. ['sh', '-c', 'wc -c']")
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds (or None)")
        self.argv = list(argv)
        self.timeout = timeout
        self.tail = tail
        self.cwd = cwd
        self.env = dict(env or {})
        self.as_file = PLACEHOLDER in self.argv

    def __call__(self, item: Item) -> Any:
        body = item_bytes(item.data)
        env = dict(os.environ, **self.env, WORK_ITEM_KEY=str(item.key),
                   WORK_ITEM_ATTEMPT=str(item.attempt))
        if not self.as_file:
            return self._run(self.argv, body, env)
        fd, path = tempfile.mkstemp(prefix="posa-item-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(body)
            env["WORK_ITEM_FILE"] = path
            return self._run([path if arg == PLACEHOLDER else arg for arg in self.argv],
                             b"", env)
        finally:
            os.unlink(path)

    def _run(self, argv: list[str], stdin: bytes, env: dict[str, str]) -> Any:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=self.cwd, env=env,
                                    start_new_session=True)
        except OSError as exc:
            raise CommandFailed(f"cannot start {argv[0]!r}: {exc}") from None
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = _reap(proc)
            raise CommandFailed(f"{argv[0]!r} still ran after {self.timeout:g} s: its "
                                f"process group was killed; stderr: "
                                f"{self._tail(err)}") from None
        except BaseException:
            _kill_group(proc)
            _reap(proc)
            raise
        if proc.returncode != 0:
            raise CommandFailed(f"{argv[0]!r} exited with status {proc.returncode}; "
                                f"stderr: {self._tail(err)}")
        try:
            return out.decode()
        except UnicodeDecodeError:
            return out

    def _tail(self, err: bytes) -> str:
        text = err[-self.tail:].decode(errors="replace").strip()
        return text or "(empty)"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Collect what a killed program wrote (a child that left its process
    group may hold the pipes open: give up on them after a while)."""
    try:
        return proc.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return b"", b""
