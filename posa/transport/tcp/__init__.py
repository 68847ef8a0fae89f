"""``tcp://HOST:PORT``: length-prefixed frames over plain TCP sockets.

The byte format is ``posa.transport.framing`` (greeting, then u32-prefixed frames);
these modules only move those bytes. ``tcp://127.0.0.1:0`` and ``tcp://[::1]:0``
bind a free port, which ``Listener.address`` then names.

    posa.transport.tcp             TcpTransport: the scheme, listen and connect
    posa.transport.tcp.address     the tcp:// address syntax (no sockets)
    posa.transport.tcp.listener    TcpListener: one descriptor for any number of peers
    posa.transport.tcp.connection  TcpConnection: coalesced writes, a flusher thread
    posa.transport.tcp.closing     the reaper: closing sockets without losing frames
    posa.transport.tcp.sockets     error texts, poll timeouts and send flags they share

Every ``OSError`` is translated in these modules into ``TransportError``,
``Closed`` or ``Timeout`` with the address in the message.
"""
from __future__ import annotations

import errno
import socket

from posa.errors import TransportError
from posa.transport.base import Options
from posa.transport.tcp.address import format_address, parse_address
from posa.transport.tcp.connection import TcpConnection
from posa.transport.tcp.listener import TcpListener
from posa.transport.tcp.sockets import dial, error_text

__all__ = ["TcpTransport", "TcpListener", "TcpConnection", "parse_address",
           "format_address"]


class TcpTransport:
    """The ``tcp`` scheme: ``listen`` binds, ``connect`` dials."""

    schemes = ("tcp",)

    def listen(self, address: str, options: Options) -> TcpListener:
        """Bind ``address``; port 0 picks a free port. Raises ``TransportError``."""
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: host {host!r} does not "
                                 f"resolve ({error_text(exc)}); use an IP address such "
                                 "as 127.0.0.1") from None
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            return TcpListener(sock, options)
        except OSError as exc:
            sock.close()
            hint = {
                errno.EADDRINUSE: "; another socket is bound there: pick another port "
                                  "or port 0 for a free one",
                errno.EADDRNOTAVAIL: "; no interface of this host has that address",
                errno.EACCES: "; ports below 1024 need privileges: pick a higher port",
            }.get(exc.errno or 0, "")
            raise TransportError(f"cannot listen on {address}: "
                                 f"{error_text(exc)}{hint}") from None

    def connect(self, address: str, options: Options) -> TcpConnection:
        """Connect to the listener at ``address``, waiting at most
        ``send_timeout``. Raises ``TransportError``."""
        host, port = parse_address(address)
        sock = dial(address, host, port, options.send_timeout)
        try:
            return TcpConnection(sock, address, options)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {address}: "
                                 f"{error_text(exc)}") from None
        except BaseException:
            sock.close()
            raise
