"""The ``tcp://HOST:PORT`` address syntax: parsing and formatting, no sockets.

IPv6 hosts stand in brackets (``tcp://[::1]:7000``); port 0 asks the system for
a free port when listening.
"""
from __future__ import annotations

from posa.errors import TransportError

__all__ = ["parse_address", "format_address"]


def parse_address(address: str) -> tuple[str, int]:
    """``"tcp://127.0.0.1:7000"`` -> ``("127.0.0.1", 7000)``; IPv6 hosts in
    brackets (``tcp://[::1]:7000``). Raises ``TransportError`` if malformed."""
    scheme, sep, rest = address.partition("://")
    host, port_text = "", ""
    if sep and scheme == "tcp":
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if bracket and tail.startswith(":"):
                port_text = tail[1:]
        else:
            host, _, port_text = rest.rpartition(":")
            if ":" in host:
                host = ""
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise TransportError(f"{address!r} is not a tcp address; write it as "
                             "tcp://HOST:PORT (tcp://127.0.0.1:7000, tcp://[::1]:7000; "
                             "port 0 picks a free port)")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The URI of ``host``, ``port``: ``tcp://[::1]:7000`` for IPv6 hosts."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
