"""Role processes: started in a process group of their own, read line by line with
deadlines, signalled as a group, and always reaped (atexit too).

A role also ends itself when its stdin closes (tests/chaos/role.py), so a runner that
dies without its ``finally`` leaves nothing running either.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import ROOT, stopped, wait_until

__all__ = ["RoleProcess", "reap_all"]

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def reap_all() -> None:
    """SIGKILL every role process group still running, and reap them."""
    with _LIVE_LOCK:
        live = list(_LIVE)
        _LIVE.clear()
    for popen in live:
        _killpg(popen, signal.SIGKILL)
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            pass


atexit.register(reap_all)


def _killpg(popen: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class RoleProcess:
    """``python -m tests.chaos.role ARGS``, stdout read into a queue of lines."""

    def __init__(self, args: list[str], directory: Path, label: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.label = label
        self.stderr_path = directory / f"{label}.err"
        with open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.role", *args], cwd=ROOT, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(self.popen)
        self.killed = False
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stash: list[str] = []
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"chaos-reader-{label}")
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str | None:
        """The first line starting with ``prefix`` (others are kept for later
        calls); None if none came within ``timeout`` or the process ended."""
        for i, line in enumerate(self._stash):
            if line.startswith(prefix):
                return self._stash.pop(i)
        deadline = time.monotonic() + timeout
        while not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                self._eof = True
            elif line.startswith(prefix):
                return line
            else:
                self._stash.append(line)
        return None

    def tell(self, command: dict[str, Any]) -> bool:
        """Write one command line; False if the process no longer reads."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(command).encode() + b"\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group; a SIGSTOP returns once the role is
        stopped (or gone): see ``tests.support.sigstop``."""
        if sig == signal.SIGKILL:
            self.killed = True
        _killpg(self.popen, sig)
        if sig == signal.SIGSTOP:
            wait_until(self._stopped_or_gone, 10.0, f"{self.label} stopped by SIGSTOP")

    def _stopped_or_gone(self) -> bool:
        try:
            return not self.running() or stopped(self.popen.pid)
        except AssertionError:
            return True     # it exited meanwhile

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_tail(self, size: int = 1500) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def close(self) -> None:
        """Kill (if still running), reap, and stop reading."""
        if self.running():
            self.signal(signal.SIGKILL)
        self.wait(10)
        with _LIVE_LOCK:
            _LIVE.discard(self.popen)
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        self._reader.join(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
