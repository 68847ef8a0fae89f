"""Access rules: who may send to whom, and which keys may register which names.

An ``Acl`` is an ``Authorizer`` for the ``Gatekeeper`` (``check``) and the
registry's guard (``check_register``, called by the dispatcher before it
registers a name).  Everything no rule allows is refused.  Decisions on
``(sender, recipient)`` pairs are cached (bounded: cleared at 65536 entries), so
a hot path pays one dict lookup per message.  ``acl_from_env`` reads the rules
from the file ``POSA_ACL`` names.

Certificate identities: on a ``tls://`` listener with client certificates, each
connection carries the identity its certificate proves (``peer_identity``: the
certificate's common name). ``register-identity`` rules say which names an
identity may register, so that a peer registers only the names its certificate
allows, whatever key it holds; identity patterns are shell-style globs
(``*.billing.example.org``).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from posa.admission.gatekeeper import refusal
from posa.admission.keys import speaks_for
from posa.errors import PosaError
from posa.wire.codec import Message
from posa.wire.names import Pattern

__all__ = ["Acl", "acl_from_env", "peer_identity", "ANONYMOUS"]

ANONYMOUS = "(anonymous)"      # the sender of an Acl rule that matches anonymous senders


class Acl:
    """Access rules: who may send to whom, which keys may register which names.

    ``send`` rules are ``(sender pattern, recipient pattern)`` pairs; a message
    passes if one matches (``"(anonymous)"`` as sender pattern matches the empty
    sender). ``register`` rules are ``(key pattern, name pattern)`` pairs; with
    ``register_own`` (the default) a key may also register every name it speaks
    for. ``identities`` rules are ``(identity glob, name pattern)`` pairs: a
    connection whose certificate proves a matching identity may register the
    names. Everything else is refused. An ``Acl`` is an ``Authorizer`` for the
    ``Gatekeeper``; the registry's side calls ``check_register``."""

    def __init__(self, send: Iterable[tuple[str, str]] = (),
                 register: Iterable[tuple[str, str]] = (), *,
                 register_own: bool = True,
                 identities: Iterable[tuple[str, str]] = ()) -> None:
        self.send_rules = [(_rule_pattern(s), Pattern(r)) for s, r in send]
        self.register_rules = [(_rule_pattern(k), Pattern(n)) for k, n in register]
        self.identity_rules = [(glob, Pattern(n)) for glob, n in identities]
        self.register_own = register_own
        self._decided: dict[tuple[str, str], bool] = {}

    @classmethod
    def parse(cls, text: str, *, source: str = "ACL") -> Acl:
        """Rules from text, one per line (``#`` comments)::

            send      SENDER-PATTERN  RECIPIENT-PATTERN
            register  KEY-PATTERN     NAME-PATTERN
            register-identity  IDENTITY-GLOB  NAME-PATTERN   # tls client certificates
            register-own  no          # keys may not register their own names
        """
        send: list[tuple[str, str]] = []
        register: list[tuple[str, str]] = []
        identities: list[tuple[str, str]] = []
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
            elif fields[0] == "register-identity" and len(fields) == 3:
                try:
                    Pattern(fields[2])
                except PosaError as exc:
                    raise PosaError(f"{where}: {exc}") from None
                identities.append((fields[1], fields[2]))
            elif fields[0] == "register-own" and len(fields) == 2 and fields[1] in ("yes", "no"):
                register_own = fields[1] == "yes"
            else:
                raise PosaError(f"{where}: expected `send SENDER RECIPIENT`, `register KEY "
                                "NAME`, `register-identity IDENTITY NAME` or "
                                "`register-own yes|no`")
        return cls(send, register, register_own=register_own, identities=identities)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Acl:
        """Rules from a file (see ``parse``)."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PosaError(f"cannot read the ACL file {os.fspath(path)}: "
                            f"{exc.strerror}") from None
        except UnicodeDecodeError:
            raise PosaError(f"the ACL file {os.fspath(path)} is not UTF-8 text; write one "
                            "rule a line (docs/security.md)") from None
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

    def check_register(self, name: str, key_id: str | None,
                       identity: str | None = None) -> None:
        """Raise ``Unauthorized`` unless the key ``key_id`` (None: no key), or the
        certificate identity ``identity`` of the connection, may register
        ``name``. The dispatcher calls this before registering."""
        who = key_id or ""
        if self.register_own and key_id and speaks_for(key_id, name):
            return
        if any(_match(k, who) and n.match(name) for k, n in self.register_rules):
            return
        if identity is not None and any(fnmatchcase(identity, glob) and n.match(name)
                                        for glob, n in self.identity_rules):
            return
        holder = f"key {key_id!r}" if key_id else "a client without a key"
        if identity is not None:
            holder += f" with certificate {identity!r}"
        raise refusal("forbidden", f"{holder} may not register {name!r}; register with "
                      "a key that speaks for it, or ask the operator for a `register` "
                      "or `register-identity` rule")


def _rule_pattern(text: str) -> Pattern | None:
    return None if text == ANONYMOUS else Pattern(text)


def _match(pattern: Pattern | None, name: str) -> bool:
    if pattern is None:
        return not name
    return bool(name) and pattern.match(name)

def peer_identity(msg: Message) -> str | None:
    """The certificate identity of the connection ``msg`` came on (a ``tls://``
    listener with client certificates), or None."""
    where = msg.route
    if not isinstance(where, tuple) or len(where) != 2:
        return None
    endpoint, route = where
    identity = getattr(getattr(endpoint, "listener", None), "identity", None)
    if not callable(identity):
        return None
    found = identity(route)
    return found if isinstance(found, str) else None


def acl_from_env(environ: Mapping[str, str] | None = None) -> Acl | None:
    """The ``Acl`` in the file ``POSA_ACL`` names, or None (no access rules)."""
    environ = os.environ if environ is None else environ
    path = environ.get("POSA_ACL")
    return Acl.load(path) if path else None

