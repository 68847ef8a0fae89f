"""Runs one scenario: starts its processes, executes its steps, injects its faults,
ends every process, and hands the histories to the checker.

Every wait has a deadline: a role that does not print ``READY`` in time, or a
command that does not finish in time, is recorded as a problem (the scenario is
then cut short, as what follows would wait on a hung process) and the checker
reports it with the rest. Whatever happens, every process is killed and reaped
before ``run`` returns.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.chaos.checker import Violation, check
from tests.chaos.history import History
from tests.chaos.procs import RoleProcess
from tests.chaos.scenario import Scenario
from tests.support import free_port

__all__ = ["run", "START_TIMEOUT", "COMMAND_TIMEOUT"]

START_TIMEOUT = 30.0      # a role prints READY within this (a loaded machine included)
COMMAND_TIMEOUT = 60.0    # a command finishes within this, whatever its faults
QUIT_TIMEOUT = 30.0       # a role closes its peers and exits within this

_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}


class _Hung(Exception):
    """A process did not do what it must within its deadline: stop the scenario."""


class Runner:
    def __init__(self, scenario: Scenario, directory: Path) -> None:
        self.scenario, self.dir = scenario, directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scenario.json").write_text(json.dumps(scenario.to_json(), indent=1))
        self.hist = History(directory / "runner.jsonl", node="runner", inc=0)
        self.dispatcher = f"tcp://127.0.0.1:{free_port()}"
        self.procs: dict[str, RoleProcess] = {}
        self.retired: list[RoleProcess] = []
        self.inc: dict[str, int] = {}
        self.pending: dict[int, tuple[str, int]] = {}
        self.stopped: set[str] = set()

    def problem(self, kind: str, detail: str) -> None:
        self.hist.record("problem", kind=kind, detail=detail[-3000:])

    # -- processes -----------------------------------------------------------------
    def spawn(self, names: list[str]) -> None:
        """Start the nodes ``names`` (each a new incarnation) and wait for each to be ready."""
        for name in names:
            self.inc[name] = self.inc.get(name, 0) + 1
            node = self.scenario.node(name)
            self.procs[name] = RoleProcess(
                ["--dir", str(self.dir), "--node", json.dumps(node), "--inc",
                 str(self.inc[name]), "--dispatcher", self.dispatcher],
                self.dir, f"{name}-{self.inc[name]}")
        for name in names:
            proc = self.procs[name]
            ready = "posa dispatcher" if name == "d" else "READY"
            if proc.expect(ready, START_TIMEOUT) is None:
                self.problem("start-failed", f"{name} (incarnation {self.inc[name]}) did not "
                             f"start within {START_TIMEOUT} s; stderr: {proc.stderr_tail()}")
                raise _Hung(name)
            self.hist.record("up", target=name, target_inc=self.inc[name], pid=proc.popen.pid)

    def fault(self, name: str, kind: str) -> None:
        proc = self.procs[name]
        if kind == "restart":
            self.hist.record("fault", fault="restart", target=name, target_inc=self.inc[name] + 1)
            self.retired.append(proc)
            self.spawn([name])
            return
        self.hist.record("fault", fault=kind, target=name, target_inc=self.inc[name])
        proc.signal(_SIGNALS[kind])
        if kind == "kill":
            proc.wait(10)
        elif kind == "stop":
            self.stopped.add(name)
        else:
            self.stopped.discard(name)

    # -- steps ---------------------------------------------------------------------
    def step(self, step: dict[str, Any]) -> None:
        do = step["do"]
        if do == "cmd":
            name, cmd = step["node"], step["cmd"]
            self.pending[cmd["id"]] = (name, self.inc[name])
            self.procs[name].tell(cmd)
            if step["wait"]:
                self.join(name, cmd["id"])
        elif do == "join":
            self.join(step["node"], step["id"])
        elif do == "fault":
            self.fault(step["node"], step["fault"])
        elif do == "pause":
            time.sleep(step["seconds"])     # how long a fault lasts, not a synchronisation
        elif do == "episode":
            self.hist.record("episode", name=step["name"])

    def join(self, name: str, ident: int) -> None:
        node, inc = self.pending.pop(ident)
        if inc != self.inc[node]:
            return          # that incarnation was killed: its command died with it
        if self.procs[node].expect(f"DONE {ident}", COMMAND_TIMEOUT) is None:
            self.problem("hung", f"{node} (incarnation {inc}) did not finish command "
                         f"{ident} within {COMMAND_TIMEOUT} s")
            raise _Hung(node)

    def finish(self) -> None:
        """Every process running again; a last flush of every peer; then all quit."""
        for name in sorted(self.stopped):
            self.fault(name, "cont")
        flushes = []
        for node in self.scenario.nodes:
            for peer in node.get("peers", []):
                ident = 10_000 + len(flushes)
                self.step({"do": "cmd", "node": node["name"], "wait": False,
                           "cmd": {"id": ident, "op": "flush", "peer": peer["name"],
                                   "timeout": 15.0}})
                flushes.append((node["name"], ident))
        for name, ident in flushes:
            self.join(name, ident)
        self.hist.record("final")
        for name, proc in self.procs.items():
            if name != "d":
                proc.tell({"op": "quit"})
        for name, proc in self.procs.items():
            if name != "d" and proc.wait(QUIT_TIMEOUT) is None:
                self.problem("did-not-exit", f"{name} did not close its peers and exit "
                             f"within {QUIT_TIMEOUT} s")
        self.procs["d"].signal(signal.SIGTERM)
        if self.procs["d"].wait(QUIT_TIMEOUT) is None:
            self.problem("did-not-exit", f"the dispatcher did not exit within {QUIT_TIMEOUT} s")

    def crashes(self) -> None:
        """A process that ended by itself, not by the runner's hand or its quit."""
        for proc in [*self.procs.values(), *self.retired]:
            code = proc.popen.poll()
            if code not in (None, 0) and not proc.killed:
                self.problem("crashed", f"{proc.label} exited with {code}; "
                             f"stderr: {proc.stderr_tail()}")

    def run(self) -> None:
        nodes = [n["name"] for n in self.scenario.nodes]
        try:
            self.spawn(["d"])
            self.spawn([n for n in nodes if n != "d"])
            for step in self.scenario.steps:
                self.step(step)
            self.finish()
        except _Hung:
            pass
        finally:
            self.crashes()
            for proc in [*self.procs.values(), *self.retired]:
                proc.close()
            self.hist.close()


def run(scenario: Scenario, directory: Path) -> list[Violation]:
    """Run ``scenario`` with its files in ``directory``; the violations found."""
    Runner(scenario, directory).run()
    return check(directory)
