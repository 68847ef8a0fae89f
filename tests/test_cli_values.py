"""Option values out of range are refused as the ``posa`` command line is parsed.

A negative, zero, not-a-number, infinite or huge value of a numeric option
exits with 2 and a line naming the option and what it takes, before anything
starts: never a traceback from a layer below (``ValueError`` from ``Options``,
``OverflowError`` from ``bind`` or from a thread's wait), nor a service that
runs with a setting that means nothing (``--grace -5``, a registration rate of
``nan`` taken for "no limit", a lease of 1e308 that killed the lease thread).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from posa.cli import main
from tests.test_cli_verbs import run_posa

pytestmark = pytest.mark.timeout(60)

BAD = [
    (["dispatcher", "--lease", "1e308"], "--lease"),
    (["dispatcher", "--lease", "nan"], "--lease"),
    (["dispatcher", "--grace", "-5"], "--grace"),
    (["dispatcher", "--max-connections", "0"], "--max-connections"),
    (["dispatcher", "--max-connections-per-source", "-1"], "--max-connections-per-source"),
    (["dispatcher", "--first-frame-timeout", "-1"], "--first-frame-timeout"),
    (["dispatcher", "--idle-timeout", "nan"], "--idle-timeout"),
    (["dispatcher", "--ops-port", "-1"], "--ops-port"),
    (["dispatcher", "--ops-port", "70000"], "--ops-port"),
    (["dispatcher", "--registration-rate", "-1"], "--registration-rate"),
    (["dispatcher", "--registration-rate", "nan"], "--registration-rate"),
    (["dispatcher", "--max-names", "0"], "--max-names"),
    (["channel", "ev/x", "--history-age", "nan"], "--history-age"),
    (["channel", "ev/x", "--history", "-1"], "--history"),
    (["channel", "ev/x", "--grace", "nan"], "--grace"),
    (["request", "lab/x", "1", "--timeout", "-1"], "--timeout"),
    (["request", "lab/x", "1", "--timeout", "nan"], "--timeout"),
    (["request", "lab/x", "1", "--timeout", "inf"], "--timeout"),
    (["request", "lab/x", "1", "--timeout", "1e308"], "--timeout"),
    (["names", "--timeout", "0"], "--timeout"),
    (["ping", "--count", "0"], "--count"),
    (["ping", "--count", "-1"], "--count"),
    (["sub", "ev/x", "--count", "-1"], "--count"),
    (["top", "--interval", "-1", "--once"], "--interval"),
    (["queue", "work/q", "--visibility", "-1"], "--visibility"),
    (["queue", "work/q", "--max-attempts", "0"], "--max-attempts"),
    (["queue", "work/q", "--capacity", "-1"], "--capacity"),
    (["worker", "--queue", "work/q", "--timeout", "-1", "--", "true"], "--timeout"),
    (["worker", "--queue", "work/q", "--concurrency", "x", "--", "true"], "--concurrency"),
    (["gateway", "--max-body", "-1"], "--max-body"),
    (["gateway", "--max-body", "0"], "--max-body"),
    (["gateway", "--max-wait", "nan"], "--max-wait"),
    (["gateway", "--header-timeout", "-1"], "--header-timeout"),
    (["gateway", "--sse-buffer", "0"], "--sse-buffer"),
    (["gateway", "--max-connections", "0"], "--max-connections"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_value_out_of_range_is_refused_naming_the_option(
        argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: takes " in err and f"got {argv[argv.index(flag) + 1]!r}" in err


@pytest.mark.parametrize(("argv", "value"), [
    (["dispatcher", "--grace", "0"], 0.0),
    (["dispatcher", "--first-frame-timeout", "0"], 0.0),
    (["dispatcher", "--ops-port", "0"], 0),
    (["dispatcher", "--registration-rate", "0"], 0.0),
    (["ping", "--interval", "0"], 0.0),
    (["request", "lab/x", "--timeout", "0.5"], 0.5),
])
def test_the_documented_edge_values_are_taken(argv: list[str], value: float) -> None:
    from posa.cli import build_parser
    args = build_parser().parse_args(argv)
    flag = next(a for a in argv if a.startswith("--"))
    assert getattr(args, flag[2:].replace("-", "_")) == value


def test_a_real_dispatcher_given_a_huge_lease_exits_2_without_a_traceback() -> None:
    done = run_posa("dispatcher", "--listen", "tcp://127.0.0.1:0", "--lease", "1e308")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "argument --lease" in done.stderr


@pytest.mark.parametrize("limit", [{"max_body": -1}, {"max_body": 0}, {"sse_buffer": 1.5},
                                   {"max_wait": math.nan}, {"header_timeout": -1.0},
                                   {"body_timeout": math.inf}, {"max_connections": True}])
def test_gateway_edge_limits_that_mean_nothing_are_refused(limit: dict[str, Any]) -> None:
    from posa.gateway.limits import EdgeLimits
    with pytest.raises(ValueError, match=rf"EdgeLimits.{next(iter(limit))} must be"):
        EdgeLimits(**limit)


def test_a_dispatcher_that_cannot_keep_its_state_file_does_not_start(tmp_path: Path) -> None:
    """It used to start, log an error, and accept registrations a restart would lose."""
    state = tmp_path / "missing" / "dir" / "state.bin"
    done = run_posa("dispatcher", "--listen", "tcp://127.0.0.1:0", "--state", str(state),
                    timeout=30.0)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "listening" not in done.stdout
    assert f"cannot keep the dispatcher state in {state}" in done.stderr
    assert "give --state a file in a directory this process may write" in done.stderr


@pytest.mark.parametrize("peer", ["foo://x", "127.0.0.1:7000"])
def test_a_dispatcher_given_a_peer_no_transport_serves_does_not_start(peer: str) -> None:
    """It used to start and fail every lookup it forwarded, saying why only then."""
    done = run_posa("dispatcher", "--listen", "tcp://127.0.0.1:0", "--peer", peer,
                    timeout=30.0)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "listening" not in done.stdout and "Traceback" not in done.stderr
    assert f"federated dispatcher {peer!r}" in done.stderr


@pytest.mark.parametrize("ops", ["127.0.0.1:9100", "notaurl", "http://[bad"])
def test_top_given_an_ops_address_that_is_not_a_url_says_how_to_write_it(ops: str) -> None:
    """``--ops notaurl`` and ``http://[bad`` raised ValueError from urllib as a traceback."""
    from tests.support import start_dispatcher
    dispatcher, address = start_dispatcher()
    try:
        done = run_posa("top", "--once", "--dispatcher", address, "--ops", ops)
    finally:
        dispatcher.close()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"--ops {ops!r} is not a URL" in done.stderr and "http://HOST:PORT" in done.stderr


def test_a_dispatcher_given_an_acl_file_that_is_not_text_does_not_start(tmp_path: Path
                                                                       ) -> None:
    """A binary --acl file raised UnicodeDecodeError as a traceback."""
    acl = tmp_path / "acl"
    acl.write_bytes(b"\xff\xfe send ** **\n")
    done = run_posa("dispatcher", "--listen", "tcp://127.0.0.1:0", "--acl", str(acl),
                    timeout=30.0)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "listening" not in done.stdout
    assert f"the ACL file {acl} is not UTF-8 text" in done.stderr


@pytest.mark.parametrize("kind", ["missing", "binary", "symlink"])
def test_a_gateway_given_a_tokens_file_it_cannot_take_says_why(tmp_path: Path,
                                                               kind: str) -> None:
    """A missing file, a symbolic link or binary content raised FileNotFoundError,
    OSError (ELOOP) or UnicodeDecodeError as a traceback."""
    pytest.importorskip("aiohttp")
    real = tmp_path / "tokens"
    real.write_bytes(b"\xff\xfe token me\n" if kind == "binary" else b"token me\n")
    real.chmod(0o600)
    given = {"missing": tmp_path / "nope", "binary": real, "symlink": tmp_path / "link"}[kind]
    if kind == "symlink":
        given.symlink_to(real)
    done = run_posa("gateway", "--listen", "http://127.0.0.1:0", "--dispatcher",
                    "tcp://127.0.0.1:9", "--tokens", str(given), timeout=30.0)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "tokens file" in done.stderr


@pytest.mark.parametrize("flag", ["--tls-ca", "--tls-cert", "--tls-key"])
def test_a_tls_file_that_is_missing_is_said_at_once(
        tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It was found only at each connection: a one-shot command timed out (exit 4)."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(SystemExit) as exited:
        main(["names", "--dispatcher", "tls://127.0.0.1:9", flag, str(missing)])
    assert exited.value.code == 2
    assert f"argument {flag}: no file {str(missing)!r}" in capsys.readouterr().err


def test_a_ca_file_without_a_certificate_is_said_at_once(tmp_path: Path) -> None:
    """A real command: exit 2 at once, not 4 after its whole --timeout."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    done = run_posa("names", "--dispatcher", "tls://127.0.0.1:9", "--tls-ca", str(ca),
                    "--timeout", "30")
    assert done.returncode == 2, done.stderr
    assert f"argument --tls-ca: {str(ca)!r} holds no CA certificate" in done.stderr


def test_a_body_nested_too_deep_to_read_is_bad_usage(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """json.loads raised RecursionError as a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(["send", "lab/x", "[" * 20000 + "]" * 20000, "--dispatcher", "tcp://127.0.0.1:9"])
    assert exited.value.code == 2
    assert "the message body nests too deep to read" in capsys.readouterr().err
