"""The ``posa`` command: its groups, exit codes, and argparse kept out of the library."""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import posa
from posa.cli import EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_UNAUTHORIZED, build_parser, main
from posa.cli import keys as cli_keys
from posa.security import Keyring
from tests.support import ROOT


def test_every_command_group_is_on_the_parser() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert {"dispatcher", "names", "services", "send", "request", "channel", "keygen",
            "progress"} <= set(commands)
    args = parser.parse_args(["dispatcher", "--ops-port", "0", "--keys", "k", "--grace", "2"])
    assert (args.ops_port, args.keys, args.grace) == (0, "k", 2.0)


@pytest.mark.parametrize(("error", "code"), [
    (posa.NameNotFound("x"), EXIT_NOT_FOUND), (posa.Timeout("x"), EXIT_TIMEOUT),
    (posa.Unauthorized("x"), EXIT_UNAUTHORIZED), (posa.Rejected("x"), 1)])
def test_errors_map_to_exit_codes(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str],
                                  error: posa.PosaError, code: int) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error
    monkeypatch.setattr(cli_keys, "_cmd_keygen", fail)
    assert main(["keygen", "netmgmt"]) == code
    assert capsys.readouterr().err == "posa: x\n"


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cli_keys.add_parser(parser.add_subparsers())
    path = tmp_path / "keys"
    for key_id in ("netmgmt", "netmgmt/agent-a"):
        args = parser.parse_args(["keygen", key_id, "--file", str(path)])
        assert args.run(args) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.from_file(path).ids() == ["netmgmt", "netmgmt/agent-a"]
    args = parser.parse_args(["keygen", "netmgmt", "--file", str(path)])
    with pytest.raises(posa.PosaError, match="already holds a key 'netmgmt'"):
        args.run(args)


def test_security_options_override_the_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys"
    assert main(["keygen", "lab", "--file", str(path)]) == 0
    monkeypatch.delenv("POSA_KEYS", raising=False)
    monkeypatch.setenv("POSA_ACL", str(tmp_path / "no-such-acl"))
    (tmp_path / "acl").write_text("send lab/** lab/**\n")
    parser = argparse.ArgumentParser()
    cli_keys.add_security_arguments(parser)
    args = parser.parse_args(["--keys", str(path), "--acl", str(tmp_path / "acl")])
    authenticator, acl = cli_keys.security_from_args(args, "lab/a")
    assert authenticator is not None and authenticator.key_id == "lab"
    assert acl is not None and acl.allows("lab/a", "lab/b")


def test_no_library_module_uses_argparse() -> None:
    users = []
    for path in sorted((ROOT / "posa").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[:2] == ("posa", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                users.append(str(relative))
    assert not users, f"argparse outside posa/cli: {sorted(users)}"


def test_python_m_posa_runs_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "posa", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "dispatcher" in done.stdout and "Exit codes" in done.stdout


def test_exit_waits_for_lingering_sockets_only_until_the_commands_deadline() -> None:
    """A one-shot command ends within --timeout: at exit the tcp reaper is given the
    command's deadline, and a socket whose other side never ends is left to it."""
    import socket
    import time

    from posa.transport.tcp.closing import Reaper
    reaper = Reaper()
    ours, theirs = socket.socketpair()
    ours.shutdown(socket.SHUT_WR)
    reaper.adopt(ours, time.monotonic() + 600)   # the other side never ends its stream
    reaper.finish(time.monotonic())              # the command's deadline: now
    thread = reaper._thread
    assert ours.fileno() != -1 and thread is not None   # not waited for
    theirs.close()                               # the other side ends: reaped
    thread.join(30)
    assert not thread.is_alive() and ours.fileno() == -1
