"""The HMAC authenticator: frames sealed with a shared key, opened and checked.

Every frame carries an HMAC-SHA256 trailer made with a key of the sender's
``Keyring``; receivers check it, the key's right to the sender name, the clock,
and replays.  ``from_env(name)`` builds one from the environment (``POSA_KEYS``,
``POSA_KEY_*``), or returns None when no key is configured (authentication off).

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

import hmac
import itertools
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping

from posa.admission.gatekeeper import KEY_HEADER, refusal
from posa.admission.keys import Keyring
from posa.errors import PosaError
from posa.wire.codec import Message

__all__ = ["HmacAuthenticator", "authenticated_key", "from_env", "anonymous_key",
           "TRAILER_VERSION", "DEFAULT_WINDOW"]

TRAILER_VERSION = 1
DEFAULT_WINDOW = 30.0          # seconds a frame's timestamp may differ from our clock

_TAIL = struct.Struct(">QQB")        # after the key id and its length: time, nonce, version
_pack_tail = _TAIL.pack
_unpack_time = struct.Struct(">Q").unpack_from
_MAC_SIZE = 32
_FIXED = 1 + _TAIL.size + _MAC_SIZE  # 50 bytes of trailer besides the key id
_compare = hmac.compare_digest


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
                          "(authenticator=posa.security.from_env(name))", "unsealed")
        if frame[size - _MAC_SIZE - 1] != TRAILER_VERSION:
            raise refusal("unauthenticated", f"authentication trailer version "
                          f"{frame[size - _MAC_SIZE - 1]} is not {TRAILER_VERSION}; sender "
                          "and receiver must run compatible posa versions "
                          "(or the sender runs without keys)", "unsealed")
        start = id_end - frame[id_end]
        if start < 1 or start == id_end:
            raise refusal("unauthenticated", "the authentication trailer is malformed",
                          "unsealed")
        key = self._keys.get(frame[start:id_end])
        if key is None:
            raise refusal("unauthenticated", f"frame sealed with key "
                          f"{_shown(frame[start:id_end])}, which this process does not "
                          "hold; add that key to its key file", "unknown-key")
        signed_end = size - _MAC_SIZE
        mac = frame[signed_end:]
        inner = key.inner()                 # Key.mac, inlined on this hot path
        inner.update(frame[:signed_end])
        outer = key.outer()
        outer.update(inner.digest())
        if not _compare(outer.digest(), mac):
            raise refusal("unauthenticated", f"the MAC of a frame sealed with key "
                          f"{key.id!r} is wrong: the frame was altered or the sender "
                          "holds another secret under that name", "bad-mac")
        sent = _unpack_time(frame, id_end + 1)[0]
        now = int(self._clock() * 1000)
        if not now - self._window_ms <= sent <= now + self._window_ms:
            raise refusal("stale", f"a frame sealed with key {key.id!r} is "
                          f"{(now - sent) / 1000:+.1f} s old, outside the +-{self.window:g} "
                          "s window; synchronise the clocks (NTP) or widen the window",
                          "stale")
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

def anonymous_key(keyring: Keyring) -> str:
    """The key an anonymous client (a ``posa`` command) seals with: the keyring's
    only key, else its only key outside ``posa/`` (those are posa's services'
    keys, held by a client only to check their answers). Raises ``PosaError``."""
    ids = keyring.ids()
    if len(ids) == 1:
        return ids[0]
    own = [key_id for key_id in ids if key_id != "posa" and not key_id.startswith("posa/")]
    if len(own) == 1:
        return own[0]
    raise PosaError(f"the keyring holds {len(ids)} keys ({', '.join(ids)}) and "
                    f"{len(own) or 'none'} of them outside posa/; say which one seals this "
                    "client's frames: --key-id ID (or POSA_KEY_ID)")


def from_env(name: str | None = None, *,
             environ: Mapping[str, str] | None = None) -> HmacAuthenticator | None:
    """The authenticator the environment asks for, or None (authentication off).

    ``POSA_KEYS`` is a key file; ``POSA_KEY_<ID>`` variables add keys (see
    ``Keyring.from_environ``); ``POSA_KEY_ID`` names the sealing key, else the
    most specific key for ``name`` seals (without a name: ``anonymous_key``);
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
    key_id = environ.get("POSA_KEY_ID") or (keyring.key_for(name) if name
                                            else anonymous_key(keyring))
    window = environ.get("POSA_AUTH_WINDOW")
    try:
        seconds = float(window) if window else DEFAULT_WINDOW
    except ValueError:
        raise PosaError(f"POSA_AUTH_WINDOW={window!r} is not a number of seconds") from None
    return HmacAuthenticator(keyring, key_id=key_id, window=seconds)

