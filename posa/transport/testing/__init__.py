"""The transport conformance suite, shipped so that any transport can run it.

Every check is a plain function ``check_*(address_factory, options=None)``.
``address_factory`` returns a fresh listen address for the transport under test
on each call (``"tcp://127.0.0.1:0"``, ``"zmq+ipc:///tmp/x/1.sock"``,
``"inproc://t-17"``); ``options`` are the base ``Options`` (a check that needs
a limit of its own replaces that field). A check drives the transport only
through ``transport.listen`` and ``transport.connect``, so it tests whatever
transport serves the address's scheme. It returns ``None`` or raises
``AssertionError`` whose message names the check, the step and what happened;
an exception the transport raised where none was due is reported the same way,
chained. Every wait has a deadline (``DEADLINE`` seconds), every loop a bound,
and a check closes what it opened and joins the threads it started before it
returns, pass or fail.

A third-party transport runs the whole suite after registering itself (entry
point ``posa.transports`` or ``transport.register``)::

    import itertools
    from posa.transport.testing import check_all

    check_all(lambda: "mything://127.0.0.1:0")       # port 0: a fresh port each time
    names = itertools.count()
    check_all(lambda: f"mything-local://t-{next(names)}")   # a fresh name each time

or one test per check, under pytest::

    from posa.transport.testing import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
    def test_mything(check):
        check(lambda: "mything://127.0.0.1:0")

The checks are grouped by theme: ``frames`` (round trip, order, sizes, oversize
frames), ``endpoints`` (many connections, closing, addresses) and ``polling``
(timeouts, the reactor's ways of waiting, a blocking caller's ``wait_readable``);
``support`` holds what they share.
Import them from here: this package's ``__all__`` is the public surface.
"""
from __future__ import annotations

from posa.transport.base import Options
from posa.transport.testing.endpoints import (
    check_close_wakes_recv,
    check_many_connections,
    check_resolved_address,
    check_use_after_close,
)
from posa.transport.testing.frames import (
    check_frame_sizes,
    check_order,
    check_oversize_dropped_by_listener,
    check_oversize_refused_by_send,
    check_round_trip,
)
from posa.transport.testing.polling import (
    check_polling,
    check_recv_timeout,
    check_wait_readable,
    check_waiting_without_draining,
)
from posa.transport.testing.support import DEADLINE, AddressFactory, Check

__all__ = [
    "AddressFactory", "CHECKS", "DEADLINE", "check_all",
    "check_round_trip", "check_order", "check_frame_sizes", "check_oversize_refused_by_send",
    "check_oversize_dropped_by_listener", "check_many_connections", "check_close_wakes_recv",
    "check_use_after_close", "check_resolved_address", "check_recv_timeout", "check_polling",
    "check_waiting_without_draining", "check_wait_readable",
]

# every check, in the order check_all runs them
CHECKS: list[Check] = [
    check_round_trip, check_order, check_frame_sizes, check_oversize_refused_by_send,
    check_oversize_dropped_by_listener, check_many_connections, check_close_wakes_recv,
    check_use_after_close, check_resolved_address, check_recv_timeout, check_polling,
    check_waiting_without_draining, check_wait_readable,
]


def check_all(address_factory: AddressFactory, options: Options | None = None) -> None:
    """Run every check; raise one AssertionError listing every failure."""
    failures = []
    for check in CHECKS:
        try:
            check(address_factory, options)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} of {len(CHECKS)} transport checks failed:\n"
                             + "\n".join(failures))
