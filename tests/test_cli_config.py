"""Where the ``posa`` command's settings come from, and shell completion.

Contexts live in ``$XDG_CONFIG_HOME/posa/contexts.json`` (each test sets
XDG_CONFIG_HOME to a fresh directory). A setting's flag wins over its
environment variable, which wins over the context, which wins over the default:
checked on the resolved arguments for every setting, and end to end with real
``posa names`` processes against a real dispatcher, where a losing setting
points at a port with nothing listening.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from posa.cli import DEFAULT_DISPATCHER, build_parser, settings
from posa.cli.completion import script
from tests.support import ROOT, Proc, free_port, start_dispatcher
from tests.test_cli_verbs import run_posa

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A fresh XDG_CONFIG_HOME, no POSA_* variable; the environment restored after
    (``settings.apply`` writes the settings it resolved into it)."""
    saved = dict(os.environ)
    for variable in [v for v in os.environ if v.startswith("POSA_")]:
        del os.environ[variable]
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path)
    try:
        yield tmp_path
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def dispatcher() -> Iterator[str]:
    proc, address = start_dispatcher()
    try:
        yield address
    finally:
        proc.close()


def resolved(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    settings.apply(args)
    return args


def test_flag_beats_environment_beats_context_beats_default(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolved("names").dispatcher == DEFAULT_DISPATCHER
    settings.save({"current": "ctx", "contexts": {
        "ctx": {"dispatcher": "tcp://ctx:1", "keys": "/ctx.keys", "key_id": "ctx",
                "tls_ca": "/ctx.pem"},
        "other": {"dispatcher": "tcp://other:1"}}})
    args = resolved("names")
    assert args.dispatcher == "tcp://ctx:1"
    assert (os.environ["POSA_KEYS"], os.environ["POSA_KEY_ID"],
            os.environ["POSA_TLS_CA"]) == ("/ctx.keys", "ctx", "/ctx.pem")
    assert resolved("names", "--context", "other").dispatcher == "tcp://other:1"
    assert resolved("--context", "other", "names").dispatcher == "tcp://other:1"
    monkeypatch.setenv("POSA_CONTEXT", "other")
    assert resolved("names").dispatcher == "tcp://other:1"
    monkeypatch.setenv("POSA_DISPATCHER", "tcp://env:1")
    monkeypatch.setenv("POSA_KEYS", "/env.keys")
    assert resolved("names").dispatcher == "tcp://env:1"
    assert os.environ["POSA_KEYS"] == "/env.keys"
    args = resolved("names", "--dispatcher", "tcp://flag:1", "--keys", "/flag.keys")
    assert args.dispatcher == "tcp://flag:1" and args.keys == "/flag.keys"
    for verb in ("channel x", "queue x", "worker --queue x", "progress x", "sub x",
                 "gateway", "view"):
        assert resolved(*verb.split()).dispatcher == "tcp://env:1", verb
    del os.environ["POSA_KEY_ID"]       # the dispatcher itself takes nothing from a context
    resolved("dispatcher")
    assert "POSA_KEY_ID" not in os.environ


def test_an_unknown_context_is_not_found(config: Path) -> None:
    with pytest.raises(settings.ContextError, match="no context 'nope'.*posa context add"):
        resolved("names", "--context", "nope")
    done = run_posa("names", "--context", "nope", env={"XDG_CONFIG_HOME": str(config)})
    assert done.returncode == 3 and "posa context add nope" in done.stderr


@pytest.mark.parametrize("text", ['{"contexts": {"a": 5}, "current": "a"}',
                                  '{"contexts": {"a": {"dispatcher": 5}}, "current": "a"}',
                                  '{"contexts": {"a": {}}, "current": ["a"]}'])
def test_a_contexts_file_of_the_wrong_shape_is_said_and_can_be_mended(
        config: Path, text: str) -> None:
    """A context that is not a set of string settings (an edited file): the command
    says which and how to mend it (exit 1, as the table says
    for a bad contexts file), never a traceback; ls and rm still work."""
    env = {"XDG_CONFIG_HOME": str(config)}
    (config / "posa").mkdir()
    (config / "posa" / "contexts.json").write_text(text)
    done = run_posa("names", env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "contexts.json" in done.stderr
    if '"current": "a"' in text:
        assert "posa context rm a" in done.stderr
        listed = run_posa("context", "ls", env=env)
        assert listed.returncode == 0 and "a" in listed.stdout, listed.stderr
        assert run_posa("context", "rm", "a", env=env).returncode == 0


def test_contexts_added_used_and_listed(config: Path, dispatcher: str) -> None:
    env = {"XDG_CONFIG_HOME": str(config)}
    dead = f"tcp://127.0.0.1:{free_port()}"
    assert run_posa("context", "add", "live", "--dispatcher", dispatcher, "--keys", "k",
                    env=env).returncode == 0
    assert run_posa("context", "add", "dead", "--dispatcher", dead, env=env).returncode == 0
    path = config / "posa" / "contexts.json"
    assert path.stat().st_mode & 0o777 == 0o600
    listed = json.loads(run_posa("context", "ls", "--json", env=env).stdout)
    assert listed["current"] == "live"          # the first one added is in use
    assert listed["contexts"]["live"]["keys"] == str(ROOT / "k")    # made absolute
    assert run_posa("context", "rm", "live", env=env).returncode == 0
    assert run_posa("context", "add", "live", "--dispatcher", dispatcher,
                    env=env).returncode == 0
    assert run_posa("context", "use", "live", env=env).returncode == 0
    assert "* live" in run_posa("context", "ls", env=env).stdout
    assert run_posa("context", "use", "nope", env=env).returncode == 3
    # the context in use is asked, the environment wins over it, the flag over both
    assert "posa/dispatcher" in run_posa("names", env=env).stdout
    loser = {**env, "POSA_DISPATCHER": dead}
    assert run_posa("names", "--timeout", "1", env=loser).returncode == 4
    assert run_posa("names", "--dispatcher", dispatcher, env=loser).returncode == 0
    assert run_posa("names", "--context", "live", env=env).returncode == 0
    assert run_posa("names", "--context", "dead", "--timeout", "1", env=env).returncode == 4


def test_bash_completion_script_completes_commands(tmp_path: Path) -> None:
    done = run_posa("completion", "bash")
    assert done.returncode == 0
    path = tmp_path / "posa.bash"
    path.write_text(done.stdout)
    bash = shutil.which("bash")
    assert bash is not None
    assert subprocess.run([bash, "-n", str(path)], capture_output=True).returncode == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (f"source {path}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 "_posa; printf '%s\\n' \"${COMPREPLY[@]}\"")
        out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("posa", "pu") == ["pub"]
    assert complete("posa", "context", "u") == ["use"]
    assert "--from-seq" in complete("posa", "sub", "--fr")
    assert complete("posa", "--context", "x", "wat") == ["watch"]
    zsh = script(build_parser(), "zsh")
    assert zsh.startswith("#compdef posa\n") and "bashcompinit" in zsh
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=zsh, text=True).returncode == 0


def test_services_take_the_dispatcher_from_the_environment(dispatcher: str,
                                                          config: Path) -> None:
    reply = Proc.posa("reply", "cfg/echo", env={"POSA_DISPATCHER": dispatcher})
    try:
        reply.expect("replying as cfg/echo")
        done = run_posa("request", "cfg/echo", '"x"', env={"POSA_DISPATCHER": dispatcher})
        assert (done.returncode, done.stdout) == (0, "x\n"), done.stderr
    finally:
        reply.close()


def test_the_gateway_takes_its_dispatcher_from_the_environment_and_the_context(
        config: Path, dispatcher: str) -> None:
    """``posa gateway`` had its own --dispatcher defaulting to tcp://127.0.0.1:7000:
    POSA_DISPATCHER and the context were ignored (the context's keys were not)."""
    pytest.importorskip("aiohttp")
    from tests.support import Proc
    env = {"XDG_CONFIG_HOME": str(config)}
    for settings_env in ({"POSA_DISPATCHER": dispatcher}, env):
        if settings_env is env:     # no variable now: the context, once added, gives it
            assert run_posa("context", "add", "gw", "--dispatcher", dispatcher, env=env
                            ).returncode == 0
        gateway = Proc.posa("gateway", "--listen", "http://127.0.0.1:0", env=settings_env)
        try:
            line = gateway.expect("posa gateway at", timeout=30.0)
            peer = line.rsplit("(peer ", 1)[1].rstrip(")")
            listed = run_posa("names", peer, "--dispatcher", dispatcher)
            assert listed.returncode == 0 and peer in listed.stdout, listed.stderr
        finally:
            gateway.close()
