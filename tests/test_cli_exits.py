"""The exit codes of the ``posa`` command: one table, walked.

docs/cli.md prints the table and ``posa.cli.EXITS`` holds it; the first test
keeps them equal, the second runs, for every row, a real command against real
processes (a dispatcher, one with keys, ``posa reply`` peers, a listener that
never answers, a peer stopped with SIGSTOP) that must exit with that code.
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from posa.cli import EXITS
from tests.support import ROOT, Proc, sigstop, start_dispatcher
from tests.test_cli_verbs import run_posa

pytestmark = pytest.mark.timeout(120)
Scenario = Callable[[], subprocess.CompletedProcess[str]]


def documented() -> dict[int, str]:
    """The exit-code table of docs/cli.md: code -> meaning."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("## Exit codes"):]
    return {int(code): meaning for code, meaning in
            re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE)}


def test_the_documented_table_is_the_table() -> None:
    assert documented() == dict(EXITS)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Scenario]]:
    keys = tmp_path_factory.mktemp("keys") / "dispatcher.keys"
    assert run_posa("keygen", "posa/dispatcher", "--file", str(keys)).returncode == 0
    procs: list[Proc] = []
    silent = socket.socket()            # accepts connections (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        dispatcher, address = start_dispatcher()
        procs.append(dispatcher)
        keyed, keyed_address = start_dispatcher("--keys", str(keys))
        procs.append(keyed)
        for name, command in (("exit/fail", ["--", "sh", "-c", "exit 7"]),
                              ("part/a", []), ("part/b", [])):
            procs.append(Proc.posa("reply", name, "--dispatcher", address, *command))
            procs[-1].expect("replying as")
        stopped = procs[-1]

        def partial() -> subprocess.CompletedProcess[str]:
            sigstop(stopped.popen.pid)   # registered, never acknowledges
            try:
                return run_posa("send", "part/*", "1", "--timeout", "2",
                                "--dispatcher", address)
            finally:
                stopped.popen.send_signal(signal.SIGCONT)

        def posa(*args: str, at: str = address) -> Scenario:
            return lambda: run_posa(*args, "--dispatcher", at)

        yield {
            0: posa("names"),
            1: posa("request", "exit/fail", "1"),
            2: posa("send", "exit/fail", "{not json"),
            3: posa("names", "nothing/here"),
            4: posa("names", "--timeout", "1",
                    at=f"tcp://127.0.0.1:{silent.getsockname()[1]}"),
            5: posa("names", "--timeout", "30", at=keyed_address),
            6: partial,
        }
    finally:
        silent.close()
        for proc in procs:
            proc.close()


def test_every_exit_code_of_the_table_is_reached(scenarios: dict[int, Scenario]) -> None:
    assert set(scenarios) == {code for code, _ in EXITS}, "a row without a scenario"
    for code, scenario in sorted(scenarios.items()):
        done = scenario()
        assert done.returncode == code, (code, done.stdout, done.stderr)
        assert code == 0 or done.stderr.startswith("posa: "), (code, done.stderr)

