"""The dialling end of ``tls://``: ``TlsConnection`` and how it connects.

``handshake`` connects over TCP, sends the first handshake message (offering
the session kept for this target, so that a reconnect resumes it) and hands the
socket to ``TlsConnection`` at once: a ``TcpConnection`` whose socket encrypts
(``posa.transport.tls.sockets``: the driver thread completes the handshake), so
it sends, coalesces, receives and closes exactly as on tcp. A refused
handshake is raised by the next ``send`` or ``recv`` as a ``TransportError``
saying why. The session is kept once the first frame from the listener has
arrived, after the session tickets that TLS 1.3 sends when the handshake is done.
"""
from __future__ import annotations

import ssl
import time

from posa.errors import TransportError
from posa.transport.base import Options
from posa.transport.tcp.connection import TcpConnection
from posa.transport.tcp.sockets import dial, error_text
from posa.transport.tls.failures import TlsFailure
from posa.transport.tls.settings import TlsSettings
from posa.transport.tls.sockets import TlsSocket

__all__ = ["TlsConnection", "handshake"]

_READ_SIZE = 64 * 1024


class TlsConnection(TcpConnection):
    """A connection to a ``tls://`` listener (see ``posa.transport.tcp.connection``)."""

    def __init__(self, sock: TlsSocket, address: str, options: Options,
                 keep_session: tuple[TlsSettings, str, int, str, ssl.SSLContext]) -> None:
        self._tls_sock = sock
        self._keep: tuple[TlsSettings, str, int, str, ssl.SSLContext] | None = keep_session
        super().__init__(sock, address, options)

    @property
    def session_reused(self) -> bool:
        """True if this connection resumed a session of an earlier one (known
        once the handshake is done: after the first frame from the listener)."""
        return self._tls_sock.session_reused

    @property
    def identity(self) -> str | None:
        """What the listener's certificate names (its common name, else first SAN)."""
        return self._tls_sock.identity

    def _fill(self) -> list[bytes]:
        frames = super()._fill()
        if frames and self._keep is not None:
            settings, host, port, name, context = self._keep
            settings.keep_session(host, port, name, context, self._tls_sock.session())
            self._keep = None
        return frames

    def __repr__(self) -> str:
        return f"<TlsConnection to {self.address}{' closed' if self._closed else ''}>"


def handshake(address: str, host: str, port: int, settings: TlsSettings,
              options: Options) -> TlsConnection:
    """Connect to ``address`` and complete the handshake; see the module docstring."""
    context = settings.client_context()
    raw = dial(address, host, port, options.send_timeout)
    name = settings.server_hostname or host
    sock = TlsSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    try:
        sock.setblocking(False)
        sock.start(context, memoryview(bytearray(_READ_SIZE)), server_side=False,
                   deadline=time.monotonic() + settings.handshake_timeout,
                   server_hostname=name if context.check_hostname else None,
                   session=settings.session(host, port, name, context))
        sock.linger = options.linger
        sock.begin()
        return TlsConnection(sock, address, options, (settings, host, port, name, context))
    except TlsFailure as exc:
        sock.close()
        raise TransportError(f"cannot connect to {address}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot connect to {address}: {error_text(exc)}") from None
    except BaseException:
        sock.close()
        raise
