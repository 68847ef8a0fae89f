"""Benchmark processes seen from the runner: start, handshake, result, stop by PID.

A ``Proc`` reads its process's stdout on a thread of its own, so the runner
never blocks on a pipe; ``READY`` and ``RESULT`` lines are the protocol of
``bench.common``.  ``hold=True`` gives the process a stdin pipe, which the
runner closes to release a sender that keeps its connection open
(``wait_release``).  Every ``Proc`` joins a ``ProcGroup``; ``ProcGroup.stop``
terminates each one still running (SIGTERM, then SIGKILL after 5 s), by PID.
"""
from __future__ import annotations

import json
import queue
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench.cpu import at_ready

__all__ = ["Proc", "ProcGroup", "BenchError", "free_port", "precompile", "start_listening"]


_READY_LINES = ("READY", "posa dispatcher")

# every module posa, bench and the anchors' libraries import, imported once
_IMPORT_ALL = """
import importlib, pkgutil, posa, bench
for package in (posa, bench):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):
            try:
                importlib.import_module(module.name)
            except Exception:
                pass
for name in ("Pyro5.api", "nats", "nats.js"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
"""


def precompile(python: str, env: dict[str, str], cwd: str) -> None:
    """Compile into ``env``'s ``PYTHONPYCACHEPREFIX`` what the measured processes load.

    That directory holds the compiled code of every module, the standard library's
    and the installed packages' too, so posa and bench are compiled there, and
    everything they and the anchors' libraries import is imported once: otherwise
    the first processes of a run compile those in the start-up whose CPU (or
    instructions) they count, as an installed Python never does."""
    subprocess.run([python, "-m", "compileall", "-q", "posa", "bench"], cwd=cwd,
                   env=env, stdout=subprocess.DEVNULL, check=False)
    subprocess.run([python, "-c", _IMPORT_ALL], cwd=cwd, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


class BenchError(Exception):
    """A benchmark process failed: not ready, no result, or timed out."""


class Proc:
    """One benchmark process, started at once."""

    def __init__(self, argv: Sequence[str], *, group: ProcGroup, hold: bool = False,
                 cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        self.cmd = " ".join(argv)
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self.p = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
                                  stderr=self._err, text=True, bufsize=1)
        group.procs.append(self)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"bench-stdout-{self.p.pid}")
        self._reader.start()
        self.ready_line: str | None = None
        self.output: list[str] = []       # stdout lines that are not READY / RESULT
        self._result: dict[str, Any] | None = None

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.startswith(_READY_LINES):
                at_ready(self.p.pid)      # its start-up is not counted in CPU per op
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the first stdout line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"no {prefix!r} line within {timeout} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise self.fail(f"exited (rc={self.p.wait()}) before a {prefix!r} line")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            self.output.append(line)

    def wait_ready(self, timeout: float = 30.0) -> str:
        """What the process passed to ``ready()``."""
        self.ready_line = self.wait_line("READY", timeout)
        return self.ready_line

    def wait_result(self, timeout: float = 60.0) -> dict[str, Any]:
        """The process's ``RESULT``, without releasing it: a held process goes on
        (e.g. keeps acknowledging) until ``result()`` or ``release()``."""
        if self._result is None:
            self._result = json.loads(self.wait_line("RESULT ", timeout))
        return self._result

    def release(self) -> None:
        """Close the process's stdin: a held sender may close and exit now."""
        if self.p.stdin is not None and not self.p.stdin.closed:
            try:
                self.p.stdin.close()
            except OSError:
                pass

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Release the process, wait for it to exit, return its ``RESULT``."""
        self.release()
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"did not finish within {timeout} s") from None
        self._reader.join(timeout=5)
        found = self._result
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line and line.startswith("RESULT "):
                found = json.loads(line[len("RESULT "):])
        if found is None:
            raise self.fail(f"gave no result (rc={self.p.returncode})")
        return found

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s) if it still runs."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self.release()
        if self.p.stdout is not None:
            self._reader.join(timeout=5)
            self.p.stdout.close()

    def fail(self, why: str) -> BenchError:
        """Stop the process and return an error with the tail of its stderr."""
        self.stop()
        self._err.seek(0)
        tail = self._err.read()[-2000:]
        return BenchError(f"{self.cmd}: {why}\n{tail}".rstrip())

    def close(self) -> None:
        self.stop()
        self._err.close()


class ProcGroup:
    """The processes of one scope (a row, or the whole run), stopped together."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.p.poll() is None:
                proc.p.terminate()
        for proc in procs:
            proc.close()


def free_port() -> int:
    """A free loopback TCP port (for a server a row starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_listening(argv: Sequence[str], port: int, what: str, *, group: ProcGroup,
                    timeout: float = 20.0) -> Proc:
    """Start a server that prints no READY line (nats-server, redis-server) and
    return once it accepts connections on ``port``; its start-up is not counted
    in the row's CPU. ``BenchError`` if it exits or does not listen in time."""
    proc = Proc(argv, group=group)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.p.poll() is not None:
                raise proc.fail(f"{what} did not listen on {port}") from None
            try:
                proc.p.wait(timeout=0.02)    # it exited (the next check says so) or not
            except subprocess.TimeoutExpired:
                pass
    at_ready(proc.p.pid)
    return proc
