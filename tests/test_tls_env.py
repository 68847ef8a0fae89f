"""``tls://`` files named by the environment (``POSA_TLS_CA``, ``POSA_TLS_CERT``,
``POSA_TLS_KEY``) that are missing or not PEM: a setting to fix, said at once
naming the variable and the file, never waited out as an unreachable dispatcher.

Nothing listens at the address: the files fail before any connect. Each call
gets a long timeout and is waited on with a deadline far under it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from posa import transport
from posa.errors import PosaError, Timeout, TransportError
from posa.naming.client import RegistryClient
from posa.transport.tls import TlsSettings
from posa.transport.tls.settings import TlsFilesError
from tests.support import ROOT, free_port

LONG = 60.0         # the timeout each call is given
AT_ONCE = 20.0      # the deadline it is waited on with (a failure, not a measurement)


@pytest.fixture
def from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tls://`` made anew from the environment (undone after the test)."""
    monkeypatch.setattr(transport, "_loaded", dict(transport._loaded))
    transport._loaded.pop("tls", None)
    for variable in ("POSA_TLS_CA", "POSA_TLS_CERT", "POSA_TLS_KEY", "POSA_TLS_CLIENT_CERT"):
        monkeypatch.delenv(variable, raising=False)


def _bad_files(tmp_path: Path) -> dict[str, str]:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"missing": str(tmp_path / "no-such-ca.pem"), "garbage": str(garbage)}


def _raised_at_once(call: Callable[[], object]) -> BaseException:
    """What ``call()`` raised, waited for with a deadline far under its timeout."""
    raised: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(AT_ONCE), "still waiting: the setting was retried as a network fault"
    assert raised, "the call did not fail"
    return raised[0]


@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_a_registry_client_says_a_bad_posa_tls_ca_at_once(
        case: str, tmp_path: Path, from_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bad_files(tmp_path)[case]
    monkeypatch.setenv("POSA_TLS_CA", path)
    client = RegistryClient(f"tls://127.0.0.1:{free_port()}", timeout=LONG)
    try:
        exc = _raised_at_once(lambda: client.lookup("lab/anyone"))
    finally:
        client.close()
    assert isinstance(exc, TlsFilesError) and not isinstance(exc, Timeout), exc
    assert isinstance(exc, TransportError) and isinstance(exc, ValueError)
    assert "POSA_TLS_CA" in str(exc) and path in str(exc)


def test_a_bad_posa_tls_cert_is_said_naming_it(tmp_path: Path, from_env: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bad_files(tmp_path)["garbage"]
    monkeypatch.setenv("POSA_TLS_CERT", path)
    with pytest.raises(TlsFilesError, match="POSA_TLS_CERT") as raised:
        TlsSettings.from_env()
    assert path in str(raised.value)


def test_settings_given_in_code_with_a_bad_ca_fail_a_lookup_at_once(tmp_path: Path) -> None:
    path = _bad_files(tmp_path)["missing"]
    client = RegistryClient(f"tls://127.0.0.1:{free_port()}", timeout=LONG,
                            options=transport.Options(tls=TlsSettings(ca=path)))
    try:
        exc = _raised_at_once(lambda: client.lookup("lab/anyone"))
    finally:
        client.close()
    assert isinstance(exc, TlsFilesError) and path in str(exc), exc


def test_posa_request_with_a_bad_posa_tls_ca_exits_at_once(tmp_path: Path) -> None:
    path = _bad_files(tmp_path)["missing"]
    env = dict(os.environ, POSA_TLS_CA=path, PYTHONPATH=str(ROOT))
    env.pop("POSA_TLS_CERT", None)
    env.pop("POSA_TLS_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "posa", "request", "lab/anyone", "{}", "--timeout", str(LONG),
         "--dispatcher", f"tls://127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=AT_ONCE, cwd=ROOT)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "POSA_TLS_CA" in done.stderr and path in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_every_tls_files_error_is_a_posa_error() -> None:
    assert issubclass(TlsFilesError, PosaError)
