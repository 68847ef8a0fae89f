"""``nats://HOST:PORT[,HOST:PORT...][/SUBJECT]``: the servers of one NATS
cluster (any of them will do) and, for a listener, the subject it is reached on."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from posa.errors import TransportError

__all__ = ["NatsAddress", "parse", "fresh_subject"]

PREFIX = "nats://"
_SERVER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_EXAMPLE = "nats://127.0.0.1:4222,127.0.0.1:4223 (a listener's: .../posa.SUBJECT)"


@dataclass(frozen=True)
class NatsAddress:
    servers: tuple[str, ...]     # "host:port", in the order given
    subject: str | None

    @property
    def urls(self) -> list[str]:
        """The servers as nats-py takes them."""
        return [PREFIX + server for server in self.servers]

    @property
    def cluster(self) -> str:
        """The servers, which one client per process shares."""
        return ",".join(self.servers)

    @property
    def key(self) -> str:
        """The same cluster however its servers are ordered."""
        return ",".join(sorted(set(self.servers)))

    def with_subject(self, subject: str) -> NatsAddress:
        return NatsAddress(self.servers, subject)

    def __str__(self) -> str:
        return PREFIX + self.cluster + (f"/{self.subject}" if self.subject else "")


def parse(address: str) -> NatsAddress:
    """Parse a ``nats://`` address. Raises ``TransportError`` saying how to write it."""
    if not isinstance(address, str) or not address.startswith(PREFIX):
        raise TransportError(f"{address!r} is not a nats address; write it as {_EXAMPLE}")
    where, _, subject = address[len(PREFIX):].partition("/")
    servers = tuple(part.strip() for part in where.split(","))
    for server in servers:
        match = _SERVER.match(server)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise TransportError(f"{server!r} in {address!r} is not HOST:PORT of a NATS "
                                 f"server; write the address as {_EXAMPLE}")
    if subject and (not _SUBJECT.match(subject) or len(subject) > 256):
        raise TransportError(f"{subject!r} in {address!r} is not a NATS subject a "
                             "listener can own: dot-separated tokens of letters, digits, "
                             "'_' and '-', no wildcards")
    return NatsAddress(servers, subject or None)


def fresh_subject() -> str:
    """A subject nobody else listens on: ``posa.`` and 128 random bits."""
    return "posa." + secrets.token_hex(16)
