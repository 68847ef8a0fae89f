"""The one error hierarchy of posa.

Every error posa raises is a ``PosaError``; exceptions of the libraries below
(``zmq.ZMQError``, ``OSError``, msgpack's errors) are translated where they
occur and never reach users.  Each message says what happened and what to do.

    PosaError
    ├── ProtocolError        bytes that are not a valid posa frame or envelope
    ├── TransportError       a transport could not listen, connect, send or receive
    │   ├── Closed           the endpoint was closed (by this side or the other)
    │   └── Unreachable      a dispatcher that had to be asked could not be reached
    ├── Timeout              a deadline passed before the operation completed
    ├── InvalidName          a name or group pattern is malformed
    ├── NameNotFound         no live registration for a name or service
    ├── Unauthorized         a credential, key or ACL refused the operation
    ├── StaleEpoch           a registration older than the one in force
    ├── Rejected             the receiver refused a message (limit, ACL, bad request)
    │   └── InvalidFilter    a content filter that is not valid data (posa.channel.predicate)
    ├── RemoteError          a handler on the other side raised; carries its type and text
    └── PartialDelivery      a group send reached some members, not all; says which
"""
from __future__ import annotations

__all__ = [
    "PosaError",
    "ProtocolError",
    "TransportError",
    "Closed",
    "Unreachable",
    "Timeout",
    "InvalidName",
    "NameNotFound",
    "Unauthorized",
    "StaleEpoch",
    "Rejected",
    "RemoteError",
    "PartialDelivery",
]


class PosaError(Exception):
    """Root of every error posa raises."""


class ProtocolError(PosaError):
    """Bytes that are not a valid posa frame or envelope (size, msgpack, fields)."""


class TransportError(PosaError):
    """A transport could not listen, connect, send or receive."""


class Closed(TransportError):
    """The endpoint is closed; open a new one to go on."""


class Unreachable(TransportError):
    """A dispatcher that had to be asked could not be reached, so the answer is not
    known (not a ``NameNotFound``): the text names the dispatcher; start it again, or
    check the network between the dispatchers."""


class Timeout(PosaError):
    """A deadline passed before the operation completed."""


class InvalidName(PosaError, ValueError):
    """A name or group pattern is malformed."""


class NameNotFound(PosaError, LookupError):
    """No live registration exists for a name or service."""


class Unauthorized(PosaError):
    """A credential, key or access rule refused the operation."""


class StaleEpoch(PosaError):
    """A registration carried an epoch older than the one in force."""


class Rejected(PosaError):
    """The receiving side refused the message (a limit, a rule, a bad request)."""


class RemoteError(PosaError):
    """The handler on the other side raised an exception.

    ``remote_type`` is the exception's class name there, ``remote_message`` its text.
    """

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"the remote handler raised {remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message


class PartialDelivery(PosaError):
    """A group send reached some members, not all, by its deadline (every member
    was tried). ``delivered`` lists the members that acknowledged the message;
    ``failed`` maps every other member to the error it met."""

    def __init__(self, pattern: str, delivered: list[str],
                 failed: dict[str, PosaError]) -> None:
        reasons = "; ".join(f"{name}: {type(exc).__name__}: {exc}"
                            for name, exc in failed.items())
        super().__init__(
            f"the send to {pattern!r} reached {len(delivered)} of "
            f"{len(delivered) + len(failed)} members; {len(failed)} failed ({reasons}); "
            "retry those with send(name), or check whether they are running")
        self.pattern = pattern
        self.delivered = delivered
        self.failed = failed


# error codes on the wire (ERROR replies); fixed forever, see docs/protocol.md
ERROR_CODES: dict[int, type[PosaError]] = {
    1: ProtocolError,
    2: NameNotFound,
    3: Unauthorized,
    4: StaleEpoch,
    5: Rejected,
    6: Timeout,
    7: RemoteError,
    8: TransportError,
    9: InvalidName,
    10: Unreachable,
}
CODE_OF: dict[type[PosaError], int] = {cls: code for code, cls in ERROR_CODES.items()}


def code_of(exc: BaseException) -> int:
    """The wire code for an exception (RemoteError for anything not posa's)."""
    for cls in type(exc).__mro__:
        if cls in CODE_OF:
            return CODE_OF[cls]
    return CODE_OF[RemoteError]


def from_wire(code: int, kind: str, text: str) -> PosaError:
    """Rebuild the exception an ERROR reply describes."""
    cls = ERROR_CODES.get(code, RemoteError)
    if cls is RemoteError:
        return RemoteError(kind, text)
    return cls(text)
