"""Helpers for tests that run real processes: start, wait for a line, always kill."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

_T = TypeVar("_T")
ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """The module ``examples/NAME.py``, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until(condition: Callable[[], _T], timeout: float = 20.0,
               what: str = "condition") -> _T:
    """Poll a cheap condition with a deadline (for counters and another process's
    state, not for events); returns its first true value."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return value


def stopped(pid: int) -> bool:
    """True once process ``pid`` is stopped (state T in /proc); AssertionError if
    it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        raise AssertionError(f"process {pid} is gone") from None
    assert state != "Z", f"process {pid} exited"
    return state in ("T", "t")


def sigstop(pid: int, *, group: bool = False, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` (its process group with ``group``) and return once it is
    stopped. A stop only takes hold when the process next leaves the kernel: a
    running one was seen to go on for over 20 ms on a loaded machine, answering
    requests a test sent after the signal."""
    (os.killpg if group else os.kill)(pid, signal.SIGSTOP)
    wait_until(lambda: stopped(pid), timeout, f"process {pid} stopped by SIGSTOP")


def nested(depth: int) -> object:
    """A value nesting ``depth`` lists: [[[...0...]]]."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stdout is read line by line with deadlines."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        environment.update(env or {})
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.PIPE, cwd=ROOT, env=environment)
        self._buffer = b""

    @classmethod
    def python(cls, code: str, *args: str, **kwargs: Any) -> Proc:
        return cls([sys.executable, "-c", textwrap.dedent(code), *args], **kwargs)

    @classmethod
    def posa(cls, *args: str, **kwargs: Any) -> Proc:
        return cls([sys.executable, "-m", "posa", *args], **kwargs)

    def line(self, timeout: float = 20.0) -> str:
        """The next line of stdout; AssertionError if none comes in time."""
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise AssertionError(f"no line from {self.args[:4]} within {timeout} s; "
                                         f"stderr: {self.stderr_now()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"{self.args[:4]} exited "
                                         f"({self.popen.wait()}) before a line; "
                                         f"stderr: {self.stderr_now()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """Skip lines until one starts with ``prefix``; returns the rest of it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.1, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def json(self, prefix: str, timeout: float = 20.0) -> Any:
        return json.loads(self.expect(prefix, timeout))

    def tell(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def stderr_now(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return "(still running)"
        return self.popen.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def close(self) -> None:
        self.kill()
        for stream in (self.popen.stdout, self.popen.stderr, self.popen.stdin):
            if stream is not None:
                stream.close()


SILENT_RECIPIENT = """
import asyncio, random, signal, socket, sys, threading, time
import posa
silent = socket.create_server(("127.0.0.1", 0))     # accepts, reads nothing, answers nothing
held = []
def accept():
    while True:
        try:
            held.append(silent.accept()[0])
        except OSError:
            return
threading.Thread(target=accept, daemon=True).start()
SILENT = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
alarms = []
signal.signal(signal.SIGALRM, lambda signo, frame: alarms.append(signo))
"""
"""The start of a script (run with ``python -c``) in which a signal handler that
returns counts SIGALRMs in ``alarms``, and ``SILENT`` is the address of a tcp
server that accepts and never reads nor answers: what a call that must keep its
deadline while signals come is made to wait for."""


def start_dispatcher(*args: str, port: int | None = None) -> tuple[Proc, str]:
    """A real ``posa dispatcher`` on loopback; returns it and its address."""
    address = f"tcp://127.0.0.1:{port or free_port()}"
    proc = Proc.posa("dispatcher", "--listen", address, *args)
    proc.expect("posa dispatcher")
    return proc, address


@contextlib.contextmanager
def wrong_ca(tmp_path: Path, prefix: str) -> Iterator[tuple[Any, Any]]:
    """Two peers on a ``LocalRegistry``: ``PREFIX/server`` on a tls:// listener
    whose certificate one CA signed (it answers requests with their body), and
    ``PREFIX/client``, which trusts another CA only (``linger`` 0): every
    handshake of the client with the server fails. Certificates by ``trustme``
    (the test is skipped without it)."""
    import pytest
    trustme = pytest.importorskip("trustme")
    import posa
    from posa.transport import Options
    from posa.transport.tls import TlsSettings
    ca, other = trustme.CA(), trustme.CA()
    server_pem, ca_pem, other_pem = (str(tmp_path / n) for n in ("s.pem", "ca.pem", "o.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        server_pem)
    ca.cert_pem.write_to_path(ca_pem)
    other.cert_pem.write_to_path(other_pem)
    with posa.LocalRegistry() as reg, posa.Peer(
            f"{prefix}/server", registry=reg, listen="tls://127.0.0.1:0",
            options=Options(tls=TlsSettings(cert=server_pem, ca=ca_pem)),
            handler=lambda m: m.body) as server, posa.Peer(
            f"{prefix}/client", registry=reg, listen="tcp://127.0.0.1:0", linger=0,
            options=Options(tls=TlsSettings(ca=other_pem))) as client:
        yield server, client


def read_only(directory: Path, code: str) -> str:
    """What ``code`` prints run where ``directory`` cannot be written: a read-only
    bind mount in a namespace of its own (as root, which writes whatever the
    mode), else the modes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if os.getuid() != 0:
        for path in directory.iterdir():
            path.chmod(0o444)
        directory.chmod(0o555)
        try:
            return subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, timeout=30, env=env, check=True).stdout
        finally:
            directory.chmod(0o755)
    script = (f'mount --bind "{directory}" "{directory}" && '
              f'mount -o remount,bind,ro "{directory}" && exec "$0" -c "$1"')
    try:
        out = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, code],
                             capture_output=True, text=True, timeout=30, env=env)
    except FileNotFoundError:
        pytest.skip("no unshare to make a read-only mount")
    if out.returncode != 0:
        pytest.skip(f"no read-only mount here: {out.stderr[-300:]}")
    return out.stdout


def run_in_a_file_that_cannot_grow(directory: Path, code: str) -> str:
    """What ``code`` prints in a process whose files may not grow at all (EFBIG)."""
    prelude = ("import resource, signal\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=30, cwd=directory, check=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout


def damage(path: Path) -> None:
    """Overwrite bytes in pages all through the SQLite file at ``path`` (as a bad disk
    or a copy made while it was written would), leaving its header whole."""
    size = path.stat().st_size
    with path.open("r+b") as file:
        for offset in range(8192, size, 4096 * 7):
            file.seek(offset)
            file.write(b"\xff" * 64)


def second_owner_says(kind: str, dispatcher: str, store: Path) -> str:
    """What a second ``posa KIND`` (``channel``, ``queue``) says on stderr when
    started on the ``store`` a first one holds (it must exit, not serve)."""
    args = ("--dispatcher", dispatcher, "--listen", "tcp://127.0.0.1:0", "--store", str(store))
    first = Proc.posa(kind, "store/one", *args)
    try:
        first.expect(f"{kind} store/one at", timeout=30)
        second = Proc.posa(kind, "store/two", *args)
        try:
            assert second.popen.wait(30) != 0, f"a second posa {kind} on {store} went on"
            return second.stderr_now()
        finally:
            second.close()
    finally:
        first.close()
