"""Multi-process mode: a real dispatcher, a real event channel, agents in 4+ processes.

    python -m examples.netagents --multi

starts, each as a process of its own and in this order:

    posa dispatcher --listen tcp://127.0.0.1:0      the registry, over the network
    posa channel events/netmgmt --dispatcher ADDR   the alerts' event channel
    examples.netagents.node ... (x 4)               the agents: three processes of
                                                    several agents, and the agent
                                                    that will move, alone in one

then plays the same scenario as the all-in-one mode from this process (the
administrator).  The agent that moves does so to another process *and*
another transport: a fifth process takes it over (``handover.py``) and the
old one exits.  On Ctrl-C, SIGTERM or the end, it stops every process it
started, agents first and the dispatcher last, and leaves none behind.
"""
from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from posa import RegistryClient

from .admin import AdminClient
from .alerts import CHANNEL, AlertFeed
from .network import Network, build, peer_name, scenario
from .node import SECRET_VARIABLE
from .scenario import Driver, View, report

__all__ = ["run", "Child", "Children"]

STOP_TIMEOUT = 10.0     # seconds a process has to exit after SIGTERM before SIGKILL


class Child:
    """A process this launcher started; its output lines are read by a thread."""

    def __init__(self, label: str, args: list[str], view: View, env: dict[str, str]) -> None:
        self.label = label
        self.view = view
        self.lines: queue.Queue[str | None] = queue.Queue()
        # a session of its own: a Ctrl-C at the terminal reaches the launcher
        # only, which stops its children in order
        self.popen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=env, text=True, start_new_session=True)
        self.pid = self.popen.pid
        threading.Thread(target=self._read, name=f"netagents-{label}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.view.say(f"[{self.label}] {line.rstrip()}")
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The first line starting with ``prefix``; ``RuntimeError`` if the process
        ends or says nothing of the kind within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.label} said no {prefix!r} within {timeout} s") \
                    from None
            if line is None:
                raise RuntimeError(f"{self.label} exited ({self.popen.wait()}) before "
                                   f"saying {prefix!r}; see its messages above")
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)


class Children:
    """Every process started, stopped in reverse order of starting."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.started: list[Child] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **{SECRET_VARIABLE:
                                                               secrets.token_hex(16)})
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)

    def start(self, label: str, args: list[str]) -> Child:
        """Start ``python args...`` (wait for its readiness with ``Child.expect``)."""
        child = Child(label, [sys.executable, *args], self.view, self.env)
        self.started.append(child)
        self.view.say(f"started {label} (pid {child.pid})")
        return child

    def stop_all(self) -> None:
        """SIGTERM to every process still running, by groups in reverse order of
        starting (all agents at once); SIGKILL to one that outstays ``STOP_TIMEOUT``."""
        agents = [c for c in self.started if c.label.startswith("agents")]
        for group in (agents, *[[c] for c in reversed(self.started) if c not in agents]):
            for child in group:
                child.signal(signal.SIGTERM)
            for child in group:
                if child.wait(STOP_TIMEOUT) is None:
                    self.view.say(f"{child.label} (pid {child.pid}) did not stop: killing it")
                    child.signal(signal.SIGKILL)
                    child.wait(STOP_TIMEOUT)
                if child.popen.stdin is not None:
                    child.popen.stdin.close()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.started]


def agent_groups(network: Network, mover: str) -> list[list[str]]:
    """The agents' processes: the others in three groups, the mover alone."""
    others = [r for r in network.routers if r != mover]
    return [others[i::3] for i in range(3)] + [[mover]]


def run(*, seed: int = 1, pace: float = 1.0, out: TextIO = sys.stdout,
        view: Callable[[Network, TextIO], View] = lambda network, out: View(out)) -> int:
    """Run the scenario over processes; 0 if every check passed, 1 if one failed.
    ``view`` makes what shows it (``web.WebView`` draws it in a browser too)."""
    network = build(seed)
    mover = next(s.router for s in scenario(network) if s.router is not None)
    shown = view(network, out)
    return _play(network, mover, shown, seed, pace)


def _play(network: Network, mover: str, view: View, seed: int, pace: float) -> int:
    view.say(f"netagents: {len(network.routers)} routers in 2 sites, {len(network.links)} "
             f"links (seed {seed}); a dispatcher, a channel and agents in processes")
    children = Children(view)
    closers: list[Any] = []
    result: dict[str, Any] | None = None
    code = 0
    try:
        line = children.start("dispatcher", ["-m", "posa", "dispatcher", "--listen",
                                             "tcp://127.0.0.1:0"]).expect("posa dispatcher")
        dispatcher = line.split(" listening on ")[1].split()[0]
        children.start("channel", ["-m", "posa", "channel", CHANNEL, "--dispatcher",
                                   dispatcher]).expect("channel")
        registry = RegistryClient(dispatcher)
        closers.append(registry)
        view.attach(registry)
        closers.append(AlertFeed(registry, view.alert))
        node = ["-m", "examples.netagents.node", "--dispatcher", dispatcher, "--seed",
                str(seed), "--exit-with-stdin"]
        hosts: dict[str, Child] = {}
        for i, group in enumerate(agent_groups(network, mover), 1):   # start together
            listen = "zmq+tcp://127.0.0.1:0" if i == 2 else "tcp://127.0.0.1:0"
            child = children.start(f"agents-{i}", [*node, "--listen", listen, *group])
            hosts.update((router, child) for router in group)
        for child in set(hosts.values()):
            child.expect("ready")
        admin = AdminClient(registry)
        closers.append(admin)

        def migrate(router: str) -> dict[str, Any]:
            """Start a process that takes ``router`` over; wait for the old one to exit."""
            before = registry.lookup(peer_name(router))
            new = children.start(f"agents-{len(children.started) - 1}",
                                 [*node, "--listen", "zmq+tcp://127.0.0.1:0",
                                  "--take-over", router])
            new.expect("ready")
            old = hosts[router]
            code = old.wait(STOP_TIMEOUT)
            view.say(f"{old.label} (pid {old.pid}) handed {router} over and exited "
                     f"with {code}")
            hosts[router] = new
            after = registry.lookup(peer_name(router))
            return {"from": before.addresses[0], "to": after.addresses[0],
                    "epochs": [before.epoch, after.epoch], "pids": [old.pid, new.pid]}

        result = Driver(network, admin, view, migrate, pace=pace).run()
    except KeyboardInterrupt:
        view.say("interrupted: stopping every process")
    except RuntimeError as exc:
        view.say(f"FAILED: {exc}")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):    # a second Ctrl-C must not cut
            signal.signal(sig, signal.SIG_IGN)         # the clean-up short
        for closer in reversed(closers):
            closer.close()
        children.stop_all()
    if result is None:
        return code
    result.update(mode="multi-process", processes=children.pids)
    report(view, result)
    view.done(result)
    return 0 if result["ok"] else 1
