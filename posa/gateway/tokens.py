"""Bearer tokens: who may use the gateway, as whom, and for which names (sans-IO).

A tokens file holds one token a line, ``#`` comments and blank lines ignored::

    # TOKEN                 IDENTITY      NAMES THE TOKEN MAY REACH (default **)
    s3cret-ui-token         netmgmt/ui    netmgmt/** events/**
    sha256:9f86d08...       ops           **

TOKEN is the secret a client sends as ``Authorization: Bearer TOKEN`` (at
least 16 characters), or ``sha256:HEX``, the SHA-256 digest of it in hex, so
the file need not hold the secret.  IDENTITY is the posa name the gateway
acts as for the token: its messages leave from a peer named
``IDENTITY/gw-XXXX``, sealed with the most specific key the gateway holds for
that name (``--keys``), so receivers' access rules (docs/security.md) see it.
The names that follow are patterns (docs/peers.md); a name outside them is
refused with 403 before anything is sent.  Like a key file, a tokens file that
other users may read or write is refused.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from posa.errors import InvalidName, PosaError
from posa.wire.names import is_pattern, matches, validate_name, validate_pattern

__all__ = ["Principal", "Tokens", "TokenRefused", "ANONYMOUS"]

MIN_TOKEN = 16


class TokenRefused(PosaError):
    """No token, or one the gateway does not know (HTTP 401)."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the identity posa sees, and the names it may reach."""

    identity: str
    names: tuple[str, ...] = ("**",)
    label: str = ""

    def may_reach(self, name: str) -> bool:
        """True if ``name`` (a name or a group pattern) is inside this token's names."""
        for allowed in self.names:
            if allowed == "**" or allowed == name:
                return True
            if is_pattern(name):
                if allowed.endswith("/**") and name.startswith(allowed[:-2]):
                    return True
            else:
                try:
                    if matches(allowed, name):
                        return True
                except InvalidName:
                    continue
        return False


ANONYMOUS = Principal("gateway", ("**",), "anonymous")


class Tokens:
    """The tokens of a tokens file, checked in constant time per token."""

    def __init__(self, entries: dict[bytes, Principal]) -> None:
        self._entries = entries       # sha256 digest of the token -> principal

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str, where: str = "tokens") -> Tokens:
        entries: dict[bytes, Principal] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) < 2:
                raise PosaError(f"{where}:{number}: write `TOKEN IDENTITY [NAMES...]`")
            token, identity, names = fields[0], fields[1], tuple(fields[2:]) or ("**",)
            digest = _digest_of(token, f"{where}:{number}")
            validate_name(identity)
            for pattern in names:
                validate_pattern(pattern)
            if digest in entries:
                raise PosaError(f"{where}:{number}: this token is in the file twice")
            entries[digest] = Principal(identity, names, f"{where}:{number}")
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """Read a tokens file; refuses one that group or others may read or write."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:      # missing, a symbolic link (refused), unreadable
            raise PosaError(f"cannot open the tokens file {path}: {exc.strerror} (a "
                            "symbolic link is refused); give --tokens the file itself, "
                            "`TOKEN IDENTITY [NAMES...]` lines, mode 600") from None
        with os.fdopen(fd, encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise PosaError(f"tokens file {path} may be read or written by others: "
                                f"chmod 600 {path}")
            try:
                return cls.parse(file.read(), str(path))
            except UnicodeDecodeError:
                raise PosaError(f"the tokens file {path} is not UTF-8 text; write "
                                "`TOKEN IDENTITY [NAMES...]` lines") from None

    def check(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header; ``TokenRefused`` if none."""
        if not authorization:
            raise TokenRefused("this gateway needs a token: send "
                               "'Authorization: Bearer TOKEN'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRefused("the Authorization header must be 'Bearer TOKEN'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for known, principal in self._entries.items():   # no early exit on a match
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise TokenRefused("this token is not known to the gateway")
        return found


def _digest_of(token: str, where: str) -> bytes:
    if token.startswith("sha256:"):
        try:
            digest = bytes.fromhex(token[7:])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise PosaError(f"{where}: sha256: must be followed by 64 hex digits")
        return digest
    if len(token) < MIN_TOKEN:
        raise PosaError(f"{where}: a token needs at least {MIN_TOKEN} characters "
                        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
    return hashlib.sha256(token.encode()).digest()
