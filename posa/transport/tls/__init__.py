"""``tls://HOST:PORT``: the tcp transport's frames inside TLS (the standard ``ssl`` module).

The byte format inside TLS is ``posa.transport.framing``, as on ``tcp://``; the
listener and connection are the tcp ones over sockets that encrypt
(``posa.transport.tls.sockets`` says how and why), so they poll, coalesce,
queue and close exactly as tcp does.

Settings (``TlsSettings``: certificates, CA, mutual TLS, hostname checking) come
from, in order: ``Options.tls`` of the endpoint, the settings this transport was
made with (``transport.register(TlsTransport(settings))``), or the environment
(``POSA_TLS_CA``, ``POSA_TLS_CERT``, ``POSA_TLS_KEY``), read when the scheme is
first used.

    posa.transport.tls             TlsTransport: the scheme, listen and connect
    posa.transport.tls.settings    TlsSettings, the contexts, the session cache
    posa.transport.tls.sockets     TlsSocket: plaintext in, TLS records out
    posa.transport.tls.failures    TlsFailure: what went wrong, in words
    posa.transport.tls.listener    TlsListener: non-blocking handshakes, identities
    posa.transport.tls.connection  TlsConnection and the connecting handshake
"""
from __future__ import annotations

import errno
import socket

from posa.errors import TransportError
from posa.transport.base import Options
from posa.transport.tcp.address import format_address, parse_address
from posa.transport.tcp.sockets import error_text
from posa.transport.tls.connection import TlsConnection, handshake
from posa.transport.tls.listener import TlsListener
from posa.transport.tls.settings import TlsSettings
from posa.transport.tls.sockets import TlsListeningSocket

__all__ = ["TlsTransport", "TlsSettings", "TlsListener", "TlsConnection",
           "parse_tls_address", "format_tls_address"]


def parse_tls_address(address: str) -> tuple[str, int]:
    """``"tls://host:7000"`` -> ``("host", 7000)``. Raises ``TransportError``."""
    scheme, sep, rest = address.partition("://")
    try:
        if scheme != "tls" or not sep:
            raise TransportError(address)
        return parse_address("tcp://" + rest)
    except TransportError:
        raise TransportError(f"{address!r} is not a tls address; write it as "
                             "tls://HOST:PORT (tls://db.example.org:7000, "
                             "tls://[::1]:7000; port 0 picks a free port)") from None


def format_tls_address(host: str, port: int) -> str:
    return "tls" + format_address(host, port)[3:]


class TlsTransport:
    """The ``tls`` scheme. ``settings`` apply where ``Options.tls`` is None
    (default: ``TlsSettings.from_env()``)."""

    schemes = ("tls",)

    def __init__(self, settings: TlsSettings | None = None) -> None:
        self.settings = settings if settings is not None else TlsSettings.from_env()

    def _settings(self, options: Options) -> TlsSettings:
        return options.tls if options.tls is not None else self.settings

    def listen(self, address: str, options: Options) -> TlsListener:
        """Bind ``address``; port 0 picks a free port. Raises ``TransportError``
        (no certificate, files that do not load, the address taken)."""
        host, port = parse_tls_address(address)
        settings = self._settings(options)
        context = settings.server_context()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: host {host!r} does not "
                                 f"resolve ({error_text(exc)})") from None
        family, kind, proto, _, where = infos[0]
        sock = TlsListeningSocket(family, kind, proto)
        try:
            sock.configure(context, settings.handshake_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            bound = sock.getsockname()
            return TlsListener(sock, options, format_tls_address(bound[0], bound[1]))
        except OSError as exc:
            sock.close()
            hint = {errno.EADDRINUSE: "; another socket is bound there: pick another "
                                      "port or port 0 for a free one"}.get(exc.errno or 0, "")
            raise TransportError(f"cannot listen on {address}: "
                                 f"{error_text(exc)}{hint}") from None

    def connect(self, address: str, options: Options) -> TlsConnection:
        """Connect and complete the TLS handshake within ``send_timeout``.
        Raises ``TransportError`` saying what failed (refused, not TLS, the
        certificate not trusted or not for this host)."""
        host, port = parse_tls_address(address)
        return handshake(address, host, port, self._settings(options), options)
