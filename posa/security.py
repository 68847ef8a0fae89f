"""Who may speak for a name, and to whom: keys, sealed frames, access rules.

Three pieces, each plugged into a ``Gatekeeper`` (and the first into ``Peer``):

``HmacAuthenticator``  every frame carries an HMAC-SHA256 trailer made with a
                       shared key; receivers check it, the key's right to the
                       sender name, the clock, and replays.
``Keyring``            the keys a process knows, read from a key file or from
                       ``POSA_KEY_*`` environment variables, never from code.
``Acl``                which senders may send to which recipients, and which
                       keys may register which names (for the registry).

The switch: ``from_env(name)`` returns an authenticator when ``POSA_KEYS`` or a
``POSA_KEY_*`` variable is set, else ``None``; pass it as
``Peer(..., authenticator=...)``.  See docs/security.md.

Trailer, version 1 (fixed forever), appended after the msgpack envelope and
parsed from the end, so the envelope is never re-encoded::

    offset from the end   size  field
    -(50+n) .. -51        n     key id: UTF-8 name of the key, 1..255 bytes
    -50                   1     n: length of the key id, u8
    -49                   8     timestamp: sender's clock, ms since the Unix epoch, u64 BE
    -41                   8     nonce: u64 BE, never repeated by one sealing process
    -33                   1     trailer version: 1 (a later layout keeps this byte here)
    -32                   32    MAC: HMAC-SHA256(secret of the key, every byte before it)

Strategy:
- The MAC covers the envelope and the whole trailer head, so neither the key id,
  the time nor the nonce can be changed.  HMAC's inner and outer SHA-256 states
  are computed once per key and copied per frame (less than half the cost of
  ``hmac.digest``, which sets OpenSSL up anew per call), and every comparison
  is ``hmac.compare_digest``.
- ``open`` checks the MAC and the clock (default window +-30 s); ``check`` then
  checks that the key speaks for ``msg.sender`` (a key named ``netmgmt`` speaks
  for ``netmgmt`` and every name below it, a key named ``netmgmt/agent-a`` for
  that name and the names below it only; any key may send anonymously) and
  replays.
- Replays: the nonce makes every sealed frame unique, so a MAC seen twice is the
  same frame sent twice.  Frames of a reliable stream (``msg.stream != 0``) are
  resent byte for byte by their forwarder and de-duplicated by the receiver's
  stream state, so only the others (replies, errors, notices) are remembered: a
  bounded table of MACs seen within the window.  When the table is full the
  oldest entry is forgotten and the "horizon" moves past its timestamp: frames
  sealed at or before the horizon are refused, so no forgotten MAC can come back.
- ``open`` hands the MAC to ``check`` through a thread-local slot: both callers
  (the gatekeeper and the forwarder) call ``check`` right after ``open`` on the
  same thread.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import itertools
import os
import secrets
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from posa.admission.gatekeeper import KEY_HEADER
from posa.errors import PosaError, Unauthorized
from posa.wire.codec import Message
from posa.wire.names import Pattern, validate_name

__all__ = ["Keyring", "HmacAuthenticator", "Acl", "from_env", "acl_from_env",
           "authenticated_key", "refusal", "KEY_HEADER", "TRAILER_VERSION",
           "DEFAULT_WINDOW", "MIN_SECRET_BYTES", "add_arguments", "from_args", "add_parser"]

TRAILER_VERSION = 1
DEFAULT_WINDOW = 30.0          # seconds a frame's timestamp may differ from our clock
MIN_SECRET_BYTES = 16
ANONYMOUS = "(anonymous)"      # the sender of an Acl rule that matches anonymous senders

_TAIL = struct.Struct(">QQB")        # after the key id and its length: time, nonce, version
_pack_tail = _TAIL.pack
_unpack_time = struct.Struct(">Q").unpack_from
_MAC_SIZE = 32
_FIXED = 1 + _TAIL.size + _MAC_SIZE  # 50 bytes of trailer besides the key id
_compare = hmac.compare_digest


def refusal(reason: str, text: str) -> Unauthorized:
    """An ``Unauthorized`` tagged with the gatekeeper counter it belongs to."""
    exc = Unauthorized(text)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def speaks_for(key_id: str, sender: str) -> bool:
    """True if the key named ``key_id`` may send as ``sender`` ("" is anonymous)."""
    return (not sender or sender == key_id
            or (sender.startswith(key_id) and sender[len(key_id)] == "/"))


# ----------------------------------------------------------------------- keys
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
            _check_key(key_id, secret, "the keyring")
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


def _check_key(key_id: str, secret: bytes, where: str) -> None:
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


# -------------------------------------------------------------- authenticator
class HmacAuthenticator:
    """Seals frames with one key of ``keyring`` and opens frames sealed with any.

    ``key_id`` names the sealing key (default: the keyring's only key).
    ``window`` is the clock difference tolerated, in seconds; keep it above the
    longest timeout you give ``send``/``request`` (a resent frame keeps its time).
    ``max_seen`` bounds the replay table. Thread-safe."""

    def __init__(self, keyring: Keyring, *, key_id: str | None = None,
                 window: float = DEFAULT_WINDOW, max_seen: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        if key_id is None:
            ids = keyring.ids()
            if len(ids) != 1:
                raise PosaError(f"the keyring holds {len(ids)} keys ({', '.join(ids)}); say "
                                "which one seals this process's frames: key_id=... "
                                "(or POSA_KEY_ID, or --key-id)")
            key_id = ids[0]
        key = keyring._get(key_id.encode())
        if key is None:
            raise PosaError(f"no key {key_id!r} in {keyring!r}; add it to the key file")
        if window <= 0 or max_seen <= 0:
            raise ValueError("window and max_seen must be positive")
        self.keyring = keyring
        self._keys = keyring._keys
        self.key_id = key_id
        self.window = window
        self._key = key
        self._head = key.raw_id + bytes([len(key.raw_id)])
        self._window_ms = int(window * 1000)
        self._clock = clock
        self._nonces = itertools.count(secrets.randbits(63))   # 2**63 seals to overflow
        self._local = threading.local()
        self._seen: dict[bytes, int] = {}          # MAC -> timestamp, oldest first
        self._horizon = 0                          # frames at or before it are refused
        self._max_seen = max_seen
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HmacAuthenticator(sealing with {self.key_id!r}, window {self.window:g} s)"

    def seal(self, envelope: bytes) -> bytes:
        """``envelope`` followed by the trailer (see the module docstring)."""
        signed = envelope + self._head + _pack_tail(int(self._clock() * 1000),
                                                    next(self._nonces), TRAILER_VERSION)
        key = self._key                     # Key.mac, inlined on this hot path
        inner = key.inner()
        inner.update(signed)
        outer = key.outer()
        outer.update(inner.digest())
        return signed + outer.digest()

    def open(self, frame: bytes) -> tuple[bytes, str]:
        """``(envelope, key_id)`` of a sealed frame; ``Unauthorized`` if the frame
        has no valid trailer, an unknown key, a wrong MAC or a stale timestamp."""
        if type(frame) is not bytes:
            frame = bytes(frame)
        size = len(frame)
        id_end = size - _FIXED              # where the key id ends and its length byte is
        if id_end < 2:
            raise refusal("unauthenticated", "the frame carries no authentication "
                          "trailer; the sender must seal its frames with a posa key "
                          "(authenticator=posa.security.from_env(name))")
        if frame[size - _MAC_SIZE - 1] != TRAILER_VERSION:
            raise refusal("unauthenticated", f"authentication trailer version "
                          f"{frame[size - _MAC_SIZE - 1]} is not {TRAILER_VERSION}; sender "
                          "and receiver must run compatible posa versions")
        start = id_end - frame[id_end]
        if start < 1 or start == id_end:
            raise refusal("unauthenticated", "the authentication trailer is malformed")
        key = self._keys.get(frame[start:id_end])
        if key is None:
            raise refusal("unauthenticated", f"frame sealed with key "
                          f"{_shown(frame[start:id_end])}, which this process does not "
                          "hold; add that key to its key file")
        signed_end = size - _MAC_SIZE
        mac = frame[signed_end:]
        inner = key.inner()                 # Key.mac, inlined on this hot path
        inner.update(frame[:signed_end])
        outer = key.outer()
        outer.update(inner.digest())
        if not _compare(outer.digest(), mac):
            raise refusal("unauthenticated", f"the MAC of a frame sealed with key "
                          f"{key.id!r} is wrong: the frame was altered or the sender "
                          "holds another secret under that name")
        sent = _unpack_time(frame, id_end + 1)[0]
        now = int(self._clock() * 1000)
        if not now - self._window_ms <= sent <= now + self._window_ms:
            raise refusal("stale", f"a frame sealed with key {key.id!r} is "
                          f"{(now - sent) / 1000:+.1f} s old, outside the +-{self.window:g} "
                          "s window; synchronise the clocks (NTP) or widen the window")
        self._local.opened = (mac, sent)
        return frame[:start], key.id

    def check(self, msg: Message, key_id: str) -> None:
        """Refuse ``msg`` unless ``key_id`` speaks for its sender and it is no replay.

        Call right after ``open`` of the same frame, on the same thread."""
        sender = msg.sender
        if sender and sender != key_id and not (
                sender.startswith(key_id) and sender[len(key_id)] == "/"):
            raise refusal("impersonation", f"key {key_id!r} may not speak for "
                          f"{sender!r}; a key speaks for its own name and the names "
                          "below it: seal with that name's key")
        if msg.stream:
            return          # resent byte for byte; the stream drops duplicates
        opened = getattr(self._local, "opened", None)
        if opened is None:
            raise refusal("unauthenticated", "check() without open(): nothing to check")
        self._local.opened = None
        mac, sent = opened
        with self._lock:
            if mac in self._seen:
                raise refusal("replay", f"a frame from {sender!r} (key {key_id!r}) came "
                              "again; replayed frames are refused")
            if sent <= self._horizon:
                raise refusal("replay", f"a frame from {sender!r} (key {key_id!r}) was "
                              "sealed before the oldest one the full replay table still "
                              "remembers, so it may be a replay; raise max_seen or "
                              "shorten the window")
            seen = self._seen
            seen[mac] = sent
            oldest = int(self._clock() * 1000) - self._window_ms
            while seen:
                first = next(iter(seen))
                first_sent = seen[first]
                if first_sent >= oldest and len(seen) <= self._max_seen:
                    break
                del seen[first]
                if first_sent > self._horizon:
                    self._horizon = first_sent


def _shown(raw: bytes | memoryview) -> str:
    text = bytes(raw).decode("utf-8", "replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def authenticated_key(msg: Message) -> str | None:
    """The key that authenticated ``msg`` at a gatekeeper with an authenticator
    (None if it passed none). The gatekeeper strips any forged value."""
    value = msg.headers.get(KEY_HEADER)
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------ ACL
class Acl:
    """Access rules: who may send to whom, which keys may register which names.

    ``send`` rules are ``(sender pattern, recipient pattern)`` pairs; a message
    passes if one matches (``"(anonymous)"`` as sender pattern matches the empty
    sender). ``register`` rules are ``(key pattern, name pattern)`` pairs; with
    ``register_own`` (the default) a key may also register every name it speaks
    for. Everything else is refused. An ``Acl`` is an ``Authorizer`` for the
    ``Gatekeeper``; the registry's side calls ``check_register``."""

    def __init__(self, send: Iterable[tuple[str, str]] = (),
                 register: Iterable[tuple[str, str]] = (), *,
                 register_own: bool = True) -> None:
        self.send_rules = [(_rule_pattern(s), Pattern(r)) for s, r in send]
        self.register_rules = [(_rule_pattern(k), Pattern(n)) for k, n in register]
        self.register_own = register_own
        self._decided: dict[tuple[str, str], bool] = {}

    @classmethod
    def parse(cls, text: str, *, source: str = "ACL") -> Acl:
        """Rules from text, one per line (``#`` comments)::

            send      SENDER-PATTERN  RECIPIENT-PATTERN
            register  KEY-PATTERN     NAME-PATTERN
            register-own  no          # keys may not register their own names
        """
        send: list[tuple[str, str]] = []
        register: list[tuple[str, str]] = []
        register_own = True
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{source}:{number}"
            if fields[0] in ("send", "register") and len(fields) == 3:
                try:
                    _rule_pattern(fields[1])
                    Pattern(fields[2])
                except PosaError as exc:
                    raise PosaError(f"{where}: {exc}") from None
                (send if fields[0] == "send" else register).append((fields[1], fields[2]))
            elif fields[0] == "register-own" and len(fields) == 2 and fields[1] in ("yes", "no"):
                register_own = fields[1] == "yes"
            else:
                raise PosaError(f"{where}: expected `send SENDER RECIPIENT`, `register KEY "
                                "NAME` or `register-own yes|no`")
        return cls(send, register, register_own=register_own)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Acl:
        """Rules from a file (see ``parse``)."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PosaError(f"cannot read the ACL file {os.fspath(path)}: "
                            f"{exc.strerror}") from None
        return cls.parse(text, source=os.fspath(path))

    def allows(self, sender: str, recipient: str) -> bool:
        """True if some send rule lets ``sender`` reach ``recipient``."""
        decided = self._decided.get((sender, recipient))
        if decided is None:
            decided = any(_match(s, sender) and r.match(recipient)
                          for s, r in self.send_rules)
            if len(self._decided) >= 65536:
                self._decided.clear()
            self._decided[(sender, recipient)] = decided
        return decided

    def check(self, msg: Message) -> None:
        """``Authorizer``: raise ``Unauthorized`` unless the rules allow ``msg``."""
        if not self.allows(msg.sender, msg.recipient):
            raise refusal("forbidden", f"{msg.sender or ANONYMOUS!r} may not send to "
                          f"{msg.recipient!r}; ask the operator for a `send` rule")

    def check_register(self, name: str, key_id: str | None) -> None:
        """Raise ``Unauthorized`` unless the key ``key_id`` (None: no key) may
        register ``name``. The dispatcher calls this before registering."""
        who = key_id or ""
        if self.register_own and key_id and speaks_for(key_id, name):
            return
        if any(_match(k, who) and n.match(name) for k, n in self.register_rules):
            return
        holder = f"key {key_id!r}" if key_id else "a client without a key"
        raise refusal("forbidden", f"{holder} may not register {name!r}; register with "
                      "a key that speaks for it, or ask the operator for a `register` rule")


def _rule_pattern(text: str) -> Pattern | None:
    return None if text == ANONYMOUS else Pattern(text)


def _match(pattern: Pattern | None, name: str) -> bool:
    if pattern is None:
        return not name
    return bool(name) and pattern.match(name)


# ------------------------------------------------------------------ the switch
def from_env(name: str | None = None, *,
             environ: Mapping[str, str] | None = None) -> HmacAuthenticator | None:
    """The authenticator the environment asks for, or None (authentication off).

    ``POSA_KEYS`` is a key file; ``POSA_KEY_<ID>`` variables add keys (see
    ``Keyring.from_environ``); ``POSA_KEY_ID`` names the sealing key, else the
    most specific key for ``name`` seals (or the only key, without a name);
    ``POSA_AUTH_WINDOW`` sets the window in seconds."""
    environ = os.environ if environ is None else environ
    path = environ.get("POSA_KEYS")
    from_vars = Keyring.from_environ(environ)
    if not path and from_vars is None:
        return None
    if path:
        keyring = Keyring.from_file(path)
        if from_vars is not None:
            keyring = keyring.merged(from_vars)
    else:
        assert from_vars is not None
        keyring = from_vars
    key_id = environ.get("POSA_KEY_ID") or (keyring.key_for(name) if name else None)
    window = environ.get("POSA_AUTH_WINDOW")
    try:
        seconds = float(window) if window else DEFAULT_WINDOW
    except ValueError:
        raise PosaError(f"POSA_AUTH_WINDOW={window!r} is not a number of seconds") from None
    return HmacAuthenticator(keyring, key_id=key_id, window=seconds)


def acl_from_env(environ: Mapping[str, str] | None = None) -> Acl | None:
    """The ``Acl`` in the file ``POSA_ACL`` names, or None (no access rules)."""
    environ = os.environ if environ is None else environ
    path = environ.get("POSA_ACL")
    return Acl.load(path) if path else None


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--keys FILE``, ``--key-id ID`` and ``--acl FILE`` to a subcommand."""
    group = parser.add_argument_group("security")
    group.add_argument("--keys", metavar="FILE", default=None,
                       help="key file (`key-id base64-secret` lines, mode 600): seal and "
                       "check every frame (default: $POSA_KEYS, else authentication off)")
    group.add_argument("--key-id", metavar="ID", default=None,
                       help="the key that seals this process's frames (default: the most "
                       "specific key for its name)")
    group.add_argument("--acl", metavar="FILE", default=None,
                       help="access rules: who may send to whom, which keys may register "
                       "which names (default: $POSA_ACL)")


def from_args(args: argparse.Namespace, name: str | None = None
              ) -> tuple[HmacAuthenticator | None, Acl | None]:
    """The authenticator and ACL that ``--keys/--key-id/--acl`` (or the
    environment, for options not given) ask for."""
    environ = dict(os.environ)
    if getattr(args, "keys", None):
        environ["POSA_KEYS"] = args.keys
    if getattr(args, "key_id", None):
        environ["POSA_KEY_ID"] = args.key_id
    if getattr(args, "acl", None):
        environ["POSA_ACL"] = args.acl
    return from_env(name, environ=environ), acl_from_env(environ)


def add_parser(subparsers: Any) -> None:
    """``posa keygen KEY-ID [--file FILE]``: make a key."""
    p = subparsers.add_parser(
        "keygen", help="make a new secret key for a name or realm",
        description="Print a new `key-id base64-secret` line, or append it to a key file "
        "(created with mode 600). Give the same line to every process that must "
        "check frames sealed with it.")
    p.add_argument("key_id", metavar="KEY-ID",
                   help="the name the key speaks for, with every name below it "
                   "(e.g. netmgmt, or netmgmt/agent-a)")
    p.add_argument("--file", metavar="FILE", help="append to this key file")
    p.set_defaults(run=_cmd_keygen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    _check_key(args.key_id, b"\0" * MIN_SECRET_BYTES, "keygen")
    line = f"{args.key_id} {Keyring.new_secret()}\n"
    if not args.file:
        sys.stdout.write(line)
        return 0
    if os.path.exists(args.file) and args.key_id in Keyring.from_file(args.file):
        raise PosaError(f"{args.file} already holds a key {args.key_id!r}; remove that "
                        "line first to replace it")
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PosaError(f"cannot write the key file {args.file}: {exc.strerror}") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line)
    print(f"added key {args.key_id!r} to {args.file}")
    return 0
