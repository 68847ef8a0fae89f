"""``TlsSettings``: the certificates and rules of ``tls://``, and the contexts made of them.

A listener needs ``cert`` and ``key`` (PEM files: its certificate chain and private
key); with ``require_client_cert`` it also needs ``ca``, the CAs whose client
certificates it accepts (mutual TLS). A connecting side verifies the listener's
certificate against ``ca`` (or the system's CAs when ``ca`` is None) and checks
that it names the host of the address (``check_hostname``, on by default;
``server_hostname`` names another host to check, e.g. when connecting by IP); it
presents ``cert`` and ``key`` when it has them. Both sides speak TLS 1.2 or later,
with renegotiation and compression off.

The contexts are built once per settings object (loading a key costs about a
millisecond) and shared by every endpoint using it. A client keeps the TLS session
of each target (host, port and name checked) and offers it when it connects there
again, so a reconnect skips the certificate exchange; the listener's context keeps
the ticket keys that make that possible for as long as the process runs.

``TlsSettings.from_env()`` reads ``POSA_TLS_CA``, ``POSA_TLS_CERT`` and
``POSA_TLS_KEY`` (and ``POSA_TLS_CLIENT_CERT=required``), and loads the files they
name there and then: one that is missing or not PEM is said naming the variable.
Files that do not load raise ``TlsFilesError``, a ``TransportError`` that is also a
``ValueError``: a setting to fix, which a loop that connects again does not retry.
"""
from __future__ import annotations

import functools
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from posa.errors import TransportError

__all__ = ["TlsSettings", "TlsFilesError", "identity_of"]

_ENV_CA, _ENV_CERT, _ENV_KEY = "POSA_TLS_CA", "POSA_TLS_CERT", "POSA_TLS_KEY"
_ENV_CLIENT_CERT = "POSA_TLS_CLIENT_CERT"
_MAX_SESSIONS = 4096                    # targets whose session a client remembers


class TlsFilesError(TransportError, ValueError):
    """The files of ``tls://`` cannot be loaded: a setting to fix, not a fault of
    the network (a ``ValueError`` too, so loops that connect again do not retry it)."""


@dataclass(frozen=True)
class TlsSettings:
    """Certificates and rules for ``tls://`` endpoints; see the module docstring."""

    cert: str | None = None             # PEM: this side's certificate (chain)
    key: str | None = None              # PEM: its private key (None: in ``cert``)
    ca: str | None = None               # PEM: CAs to verify the other side with
    require_client_cert: bool = False   # listeners: mutual TLS
    check_hostname: bool = True         # clients: the certificate must name the host
    server_hostname: str | None = None  # clients: check this name instead of the host
    handshake_timeout: float = 10.0     # s a listener gives a handshake to complete
    _sessions: dict[tuple[str, int, str], tuple[ssl.SSLContext, ssl.SSLSession]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False,
                                  repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise ValueError("TlsSettings: a key without a certificate; give cert= too")
        if self.require_client_cert and self.ca is None:
            raise ValueError("TlsSettings: require_client_cert needs ca=, the CAs whose "
                             "client certificates the listener accepts")
        if self.handshake_timeout <= 0:
            raise ValueError("TlsSettings.handshake_timeout must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsSettings:
        """Settings from ``POSA_TLS_CA``, ``POSA_TLS_CERT``, ``POSA_TLS_KEY`` and
        ``POSA_TLS_CLIENT_CERT=required`` (unset ones stay at their defaults)."""
        env = os.environ if environ is None else environ
        try:
            settings = cls(cert=env.get(_ENV_CERT) or None, key=env.get(_ENV_KEY) or None,
                           ca=env.get(_ENV_CA) or None,
                           require_client_cert=env.get(_ENV_CLIENT_CERT, "") == "required")
        except ValueError as exc:
            raise TransportError(f"{exc} (from the environment: POSA_TLS_CA, "
                                 "POSA_TLS_CERT, POSA_TLS_KEY, POSA_TLS_CLIENT_CERT; "
                                 "or --tls-ca, --tls-cert, --tls-key, --tls-client-cert)"
                                 ) from None
        _check_env_files(settings)
        return settings

    def server_context(self) -> ssl.SSLContext:
        """The listeners' context (built once). Raises ``TransportError`` if the
        files cannot be loaded."""
        return _server_context(self)

    def client_context(self) -> ssl.SSLContext:
        """The connecting side's context (built once). Raises ``TransportError``."""
        return _client_context(self)

    def session(self, host: str, port: int, name: str,
                context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session kept for this target, to offer when connecting again with
        ``context`` (a session made under another context cannot be offered: the
        context cache may have built a new one meanwhile)."""
        kept = self._sessions.get((host, port, name))
        return kept[1] if kept is not None and kept[0] is context else None

    def keep_session(self, host: str, port: int, name: str, context: ssl.SSLContext,
                     session: ssl.SSLSession | None) -> None:
        """Remember ``session``, made under ``context``, for the target (the oldest
        is forgotten at 4096)."""
        if session is None:
            return
        with self._lock:
            sessions = self._sessions
            if len(sessions) >= _MAX_SESSIONS:
                del sessions[next(iter(sessions))]
            sessions[(host, port, name)] = (context, session)


def _hardened(purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


@functools.lru_cache(maxsize=64)
def _server_context(settings: TlsSettings) -> ssl.SSLContext:
    if settings.cert is None:
        raise TransportError("a tls:// listener needs a certificate and its key: "
                             "TlsSettings(cert=..., key=...), or POSA_TLS_CERT and "
                             "POSA_TLS_KEY (posa ... --tls-cert/--tls-key)")
    context = _hardened(ssl.Purpose.CLIENT_AUTH)
    _load(context, settings)
    if settings.ca is not None:       # a client certificate is verified if one comes
        context.verify_mode = (ssl.CERT_REQUIRED if settings.require_client_cert
                               else ssl.CERT_OPTIONAL)
    return context


@functools.lru_cache(maxsize=64)
def _client_context(settings: TlsSettings) -> ssl.SSLContext:
    context = _hardened(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = settings.check_hostname
    _load(context, settings)
    return context


def _load(context: ssl.SSLContext, settings: TlsSettings) -> None:
    what = "the CA file"
    try:
        if settings.ca is not None:
            context.load_verify_locations(cafile=settings.ca)
        what = "the certificate and key"
        if settings.cert is not None:
            context.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        files = settings.ca if what == "the CA file" else f"{settings.cert}, {settings.key}"
        raise TlsFilesError(f"cannot load {what} for tls:// ({files}): "
                             f"{getattr(exc, 'strerror', None) or exc}; give PEM files "
                             "(TlsSettings, or --tls-ca/--tls-cert/--tls-key)") from None


def _check_env_files(settings: TlsSettings) -> None:
    """Load the files the environment names into a bare context, so that one that
    is missing or not PEM is said now, naming its variable, not at each connect."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    variable, path = _ENV_CA, settings.ca
    try:
        if settings.ca is not None:
            context.load_verify_locations(cafile=settings.ca)
        variable, path = _ENV_CERT, settings.cert
        if settings.cert is not None:
            context.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        if variable == _ENV_CERT and settings.key is not None:
            variable, path = f"{_ENV_CERT} or {_ENV_KEY}", f"{settings.cert}, {settings.key}"
        raise TlsFilesError(f"cannot load the file {variable} names for tls:// ({path}): "
                            f"{getattr(exc, 'strerror', None) or exc}; set {variable} "
                            "to a readable PEM file (or unset it)") from None


def identity_of(certificate: Mapping[str, object] | None) -> str | None:
    """The identity a verified peer certificate proves: its subject's common
    name, else its first subject alternative name; None without a certificate."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):          # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    for _, value in certificate.get("subjectAltName", ()):  # type: ignore[attr-defined]
        return str(value)
    return None
