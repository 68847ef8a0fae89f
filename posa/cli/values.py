"""The values a ``posa`` option takes, checked as the command line is parsed.

Each is an ``argparse`` type: a value out of range (a negative count, a port
over 65535, a timeout of ``nan``, ``inf`` or ``1e308``) is refused with exit 2
and a line naming the option, what it takes and what it got, before anything
is started; never a traceback from deep inside, nor a service that runs with
a setting that means nothing (``--grace -5``, ``--registration-rate nan``).
"""
from __future__ import annotations

import argparse
import math

__all__ = ["seconds", "seconds_or_zero", "port", "count", "natural", "per_second",
           "MAX_SECONDS"]

MAX_SECONDS = 1e9
"""The longest wait an option takes (about 31 years): a longer one cannot be
slept by a thread (``threading.TIMEOUT_MAX``) nor carried in milliseconds."""


def _number(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}") from None
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A number of seconds > 0, at most ``MAX_SECONDS``."""
    wanted = "a number of seconds > 0 (at most 1e9)"
    value = _number(text, wanted)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """A number of seconds >= 0, at most ``MAX_SECONDS``."""
    wanted = "a number of seconds >= 0 (at most 1e9)"
    value = _number(text, wanted)
    if value < 0:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return value


def per_second(text: str) -> float:
    """A rate per second >= 0 (0: no limit)."""
    wanted = "a number per second >= 0 (0: no limit)"
    value = _number(text, wanted)
    if value < 0:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return value


def _integer(text: str, low: int, high: int | None, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"takes {wanted}, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0-65535 (0 picks a free one)."""
    return _integer(text, 0, 65535, "a port 0-65535 (0 picks a free one)")


def count(text: str) -> int:
    """A whole number >= 1."""
    return _integer(text, 1, None, "a whole number >= 1")


def natural(text: str) -> int:
    """A whole number >= 0."""
    return _integer(text, 0, None, "a whole number >= 0")
