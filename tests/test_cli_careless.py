"""The ``posa`` command given careless input: it says what is wrong, what to do,
and exits with the code docs/cli.md's table gives, never with a traceback.

Each test runs the real command in a fresh process; none needs a dispatcher, as
each mistake is one the command can see before it reaches anything.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Proc, start_dispatcher
from tests.test_cli_verbs import run_posa

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("address", "said"), [
    ("http://127.0.0.1:7000", "no transport serves scheme 'http'"),
    ("127.0.0.1:7000", "not a transport URI"),
    ("tcp://127.0.0.1:7000,127.0.0.1:7001", "'127.0.0.1:7001' is not a transport URI"),
])
def test_a_dispatcher_address_that_cannot_be_is_bad_usage_not_a_timeout(
        address: str, said: str) -> None:
    done = run_posa("request", "demo/greeter", '"world"', "--dispatcher", address,
                    "--timeout", "1")
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "(from --dispatcher)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dispatcher_address_from_the_environment_is_named_as_such() -> None:
    done = run_posa("names", "--timeout", "1", env={"POSA_DISPATCHER": "localhost:7000"})
    assert done.returncode == 2, done.stderr
    assert "(from POSA_DISPATCHER)" in done.stderr and "tcp://" in done.stderr


def test_posa_view_without_aiohttp_says_which_extra_to_install() -> None:
    code = ("import sys; sys.modules['aiohttp'] = None\n"   # as if it were not installed
            "from posa.cli import main\n"
            "sys.exit(main(['view', '--dispatcher', 'tcp://127.0.0.1:7000']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "pip install 'posa[gateway]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [
    ("queue", "work/q", "--directory", ".", "--channel", "events/x"),
    ("worker", "--queue", "work/q"),
    ("autoscale", "--queue", "work/q", "--min", "3", "--max", "2", "--", "cat"),
])
def test_a_command_line_that_cannot_run_exits_with_2(args: tuple[str, ...]) -> None:
    done = run_posa(*args, "--dispatcher", "tcp://127.0.0.1:7000")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("posa: ") and "Traceback" not in done.stderr


def test_posa_gateway_on_a_port_in_use_says_so_without_a_traceback() -> None:
    pytest.importorskip("aiohttp")
    dispatcher, address = start_dispatcher()    # (a gateway first asks its dispatcher)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = run_posa("gateway", "--listen", f"http://127.0.0.1:{port}",
                            "--dispatcher", address)
    finally:
        dispatcher.close()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot listen on http://127.0.0.1:{port}" in done.stderr
    assert "port 0 for a free one" in done.stderr


@pytest.mark.parametrize("text", ['{"current": "lab", "contexts": {', '[1, 2]',
                                  '{"current": "lab", "contexts": {"lab": [1]}}'])
def test_a_damaged_contexts_file_is_a_posa_error_not_a_name_not_found(
        tmp_path: Path, text: str) -> None:
    (tmp_path / "posa").mkdir()
    (tmp_path / "posa" / "contexts.json").write_text(text)
    done = run_posa("names", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr            # the table: a bad contexts file
    assert "contexts.json" in done.stderr and "fix" in done.stderr


SLOW_PEER = """
import sys, threading
import posa
never = threading.Event()
def handler(msg):
    print("asked", flush=True)
    never.wait(120)
registry = posa.RegistryClient(sys.argv[1])
peer = posa.Peer("demo/slow", registry=registry, listen="tcp://127.0.0.1:0",
                 handler=handler)
print("ready", flush=True)
never.wait(120)
"""


# ``posa`` as a terminal runs it: Ctrl-C raises KeyboardInterrupt. (A process started
# from a background job of a script inherits SIGINT ignored, and Python then installs
# no handler for it: the test suite itself may run so.)
AT_A_TERMINAL = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from posa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_of_a_one_shot_command_is_not_a_success() -> None:
    """``posa request`` cut short by Ctrl-C exits with 130, as a shell's programs do:
    not 0, which a script would take for the reply."""
    dispatcher, address = start_dispatcher()
    slow = Proc.python(SLOW_PEER, address)
    request = None
    try:
        slow.expect("ready")
        request = Proc.python(AT_A_TERMINAL, "request", "demo/slow", "1", "--timeout",
                              "100", "--dispatcher", address,
                              env={"PYTHONFAULTHANDLER": "1"})
        slow.expect("asked")
        request.popen.send_signal(signal.SIGINT)
        try:
            code = request.popen.wait(30)
        except subprocess.TimeoutExpired:       # where it hangs: every thread's stack
            request.popen.send_signal(signal.SIGABRT)
            raise AssertionError(request.popen.communicate(timeout=30)[1].decode()) from None
        assert code == 130
        assert "Traceback" not in request.popen.communicate()[1].decode()
    finally:
        for proc in (request, slow, dispatcher):
            if proc is not None:
                proc.close()
