"""Keys: who may speak for which names, and the secrets that prove it.

A key is named like a posa name and speaks for that name and every name below
it (``netmgmt`` speaks for ``netmgmt/agent-a``; ``netmgmt/agent-a`` only for
itself and below); any key may send anonymously (the empty sender).

A ``Keyring`` holds the keys a process knows, read from a key file (refused
unless only its owner may read and write it) or from ``POSA_KEY_*`` environment
variables, never from code.  Each key keeps HMAC-SHA256's inner and outer
padded states ready (RFC 2104), so sealing and opening a frame copies two
hash states instead of setting HMAC up anew per call.  The repr of a keyring
shows key ids, never secrets.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping

from posa.errors import PosaError, Unauthorized
from posa.wire.names import validate_name

__all__ = ["Keyring", "speaks_for", "check_key", "MIN_SECRET_BYTES"]

MIN_SECRET_BYTES = 16

def speaks_for(key_id: str, sender: str) -> bool:
    """True if the key named ``key_id`` may send as ``sender`` ("" is anonymous)."""
    return (not sender or sender == key_id
            or (sender.startswith(key_id) and sender[len(key_id)] == "/"))



class _Key:
    """One secret, with HMAC's two padded SHA-256 states made ready."""

    __slots__ = ("id", "raw_id", "inner", "outer")

    def __init__(self, key_id: str, secret: bytes) -> None:
        self.id = key_id
        self.raw_id = key_id.encode()
        block = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()
        block = block.ljust(64, b"\0")
        # copies of the states after the padded key block (bound: one lookup less)
        self.inner = hashlib.sha256(block.translate(_IPAD)).copy
        self.outer = hashlib.sha256(block.translate(_OPAD)).copy

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` (RFC 2104), from the precomputed padded states."""
        inner = self.inner()
        inner.update(data)
        outer = self.outer()
        outer.update(inner.digest())
        return outer.digest()


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Keyring:
    """The keys a process knows: key id (a posa name) -> secret.

    A process needs its own key (to seal) and the keys of everyone whose frames
    it checks.  HMAC keys are shared secrets: whoever holds a key can speak for
    its names, so hand a realm key only to processes trusted with the realm.
    """

    def __init__(self, secrets_by_id: Mapping[str, bytes]) -> None:
        keys: dict[bytes, _Key] = {}
        for key_id, secret in secrets_by_id.items():
            check_key(key_id, secret, "the keyring")
            key = _Key(key_id, secret)
            keys[key.raw_id] = key
        if not keys:
            raise PosaError("the keyring is empty; add a key with `posa keygen KEY-ID "
                            "--file FILE` or set POSA_KEY_<ID>")
        self._keys = keys

    def merged(self, other: Keyring) -> Keyring:
        """A keyring with the keys of both (``other``'s win on a shared id)."""
        merged = object.__new__(Keyring)
        merged._keys = {**self._keys, **other._keys}
        return merged

    # -- loading -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Keys from a file of ``key-id base64-secret`` lines (``#`` comments).

        Refuses a file that others may read or write: keep it ``chmod 600``."""
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise PosaError(f"cannot open the key file {path}: {exc.strerror}; create it "
                            "with `posa keygen KEY-ID --file FILE`") from None
        try:
            mode = os.fstat(fd).st_mode
            if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
                raise PosaError(f"the key file {path} has mode {stat.filemode(mode)}: other "
                                "users may read or change it, so its keys cannot be trusted; "
                                f"run `chmod 600 {path}` (and replace the keys if others "
                                "may have read them)")
            with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as f:
                text = f.read()
        except UnicodeDecodeError:
            raise PosaError(f"the key file {path} is not UTF-8 text; write one "
                            "`key-id base64-secret` per line") from None
        finally:
            os.close(fd)
        entries: dict[str, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise PosaError(f"{path}:{number}: expected `key-id base64-secret`, got "
                                f"{len(fields)} field(s)")
            key_id, encoded = fields
            if key_id in entries:
                raise PosaError(f"{path}:{number}: key {key_id!r} appears twice; keep one")
            entries[key_id] = _decode_secret(encoded, f"{path}:{number}")
        return cls(entries)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """Keys from ``POSA_KEY_<ID>`` variables, or None if there are none.

        ``POSA_KEY_<ID>=SECRET`` names the key ``<ID>`` with ``__`` read as ``/``
        (``POSA_KEY_netmgmt__agent1``: key ``netmgmt/agent1``);
        ``POSA_KEY_<LABEL>="KEY-ID SECRET"`` names it explicitly (for ids with
        ``-`` or ``.``).  ``POSA_KEY_ID`` (which key to seal with) is not a key."""
        environ = os.environ if environ is None else environ
        entries: dict[str, bytes] = {}
        for variable, value in sorted(environ.items()):
            if not variable.startswith("POSA_KEY_") or variable == "POSA_KEY_ID":
                continue
            fields = value.split()
            if len(fields) == 2:
                key_id, encoded = fields
            elif len(fields) == 1:
                key_id, encoded = variable[len("POSA_KEY_"):].replace("__", "/"), fields[0]
            else:
                raise PosaError(f"{variable} must be `SECRET` or `KEY-ID SECRET` (base64)")
            if key_id in entries:
                raise PosaError(f"key {key_id!r} is set by two POSA_KEY_ variables; keep one")
            entries[key_id] = _decode_secret(encoded, variable)
        return cls(entries) if entries else None

    @staticmethod
    def new_secret() -> str:
        """A fresh random 32-byte secret, base64-encoded for a key file."""
        return base64.b64encode(secrets.token_bytes(32)).decode()

    # -- queries -------------------------------------------------------------
    def __contains__(self, key_id: object) -> bool:
        return isinstance(key_id, str) and key_id.encode() in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def ids(self) -> list[str]:
        """The key ids, sorted."""
        return sorted(key.id for key in self._keys.values())

    def key_for(self, name: str) -> str:
        """The most specific key that speaks for ``name``. Raises ``Unauthorized``."""
        best = max((key.id for key in self._keys.values() if speaks_for(key.id, name)),
                   key=len, default=None)
        if best is None:
            raise Unauthorized(f"no key in the keyring speaks for {name!r} (keys: "
                               f"{', '.join(self.ids())}); add a key named {name!r} or "
                               "one of its parents")
        return best

    def _get(self, raw_id: bytes) -> _Key | None:
        return self._keys.get(raw_id)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self.ids())})"   # never the secrets



def check_key(key_id: str, secret: bytes, where: str) -> None:
    """Refuse (``PosaError``, naming ``where``) a key id that is no posa name or a
    secret shorter than ``MIN_SECRET_BYTES``."""
    try:
        validate_name(key_id)
    except PosaError as exc:
        raise PosaError(f"{where}: a key id must be a posa name ({exc})") from None
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise PosaError(f"{where}: the secret of {key_id!r} must be at least "
                        f"{MIN_SECRET_BYTES} bytes; make one with `posa keygen`")


def _decode_secret(encoded: str, where: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PosaError(f"{where}: the secret is not base64; make one with "
                        "`posa keygen`") from None

