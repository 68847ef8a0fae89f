"""Hierarchical names and group patterns (sans-IO, pure).

A **name** is a concrete address of one peer or service, slash-separated like a
path: ``netmgmt/site-a/agent-3``.

- 1..n segments separated by single ``/``; no leading, trailing or doubled slash;
- each segment is 1..64 characters from ``A-Z a-z 0-9 . _ -``, and is not ``.``
  or ``..`` (names are not paths, and must never look like one);
- at most 255 characters in all.

A **group pattern** addresses every live name it matches. Its segments are
name segments or whole-segment wildcards:

    pattern              matches
    net/site-a/*         every name exactly one segment below net/site-a
    net/*/router-1       net/X/router-1 for any single segment X
    net/**               every name at any depth >= 1 below net
    **                   every name

``**`` may only be the last segment; ``*`` may be any segment. A wildcard is a
whole segment: ``agent-*`` is refused. A pattern without a wildcard is legal and
matches only the name it spells.

Strategy: validation takes a fast path (one anchored regular expression and a
length check) and only on failure walks the segments to say precisely what is
wrong. ``Pattern`` compiles a pattern once (cached by its text) into the
cheapest test that decides it: equality, a prefix check, or an anchored regular
expression; its ``segments`` drive the registry's tree walk.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from posa.errors import InvalidName

__all__ = [
    "MAX_NAME_LEN",
    "MAX_SEGMENT_LEN",
    "Pattern",
    "is_pattern",
    "matches",
    "validate_name",
    "validate_pattern",
]

MAX_NAME_LEN = 255
MAX_SEGMENT_LEN = 64

ANY_ONE = "*"     # exactly one segment
ANY_DEPTH = "**"  # one or more segments; last segment only

_SEGMENT = r"[A-Za-z0-9._-]{1,64}"
_NAME_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_SEGMENT_RE = re.compile(_SEGMENT)
_FORBIDDEN_SEGMENTS = frozenset({".", ".."})

_NAME_HELP = ("a name is segments of 1-64 characters from A-Z a-z 0-9 . _ - joined by "
              "single '/' (no leading or trailing '/', no '.' or '..' segment), at most "
              f"{MAX_NAME_LEN} characters, e.g. 'netmgmt/site-a/agent-3'")
_PATTERN_HELP = ("a group pattern is a name whose segments may also be '*' (one "
                 "segment) or, as the last segment only, '**' (any depth below), "
                 "e.g. 'netmgmt/site-a/*', 'netmgmt/*/router-1', 'netmgmt/**' or '**'")


def _shown(text: str) -> str:
    """``repr`` of untrusted text, shortened so that an error message stays readable."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


def _invalid(kind: str, text: str, problem: str, help_text: str) -> InvalidName:
    return InvalidName(f"invalid {kind} {_shown(text)}: {problem}; {help_text}")


def _segment_problem(segment: str, position: int) -> str | None:
    """What is wrong with one concrete segment (``position`` counts from 1), or None."""
    if not segment:
        return f"segment {position} is empty"
    if len(segment) > MAX_SEGMENT_LEN:
        return f"segment {position} has {len(segment)} characters (at most {MAX_SEGMENT_LEN})"
    if segment in _FORBIDDEN_SEGMENTS:
        return f"segment {position} is {segment!r}"
    if not _SEGMENT_RE.fullmatch(segment):
        bad = next(c for c in segment if not _SEGMENT_RE.fullmatch(c))
        return f"segment {position} contains the character {bad!r}"
    return None


def _check_text(kind: str, text: object, help_text: str) -> str:
    if not isinstance(text, str):
        raise InvalidName(f"a {kind} must be a str, not {type(text).__name__}; {help_text}")
    if not text:
        raise _invalid(kind, text, "it is empty", help_text)
    if len(text) > MAX_NAME_LEN:
        raise _invalid(kind, text, f"it has {len(text)} characters (at most {MAX_NAME_LEN})",
                       help_text)
    if text.startswith("/") or text.endswith("/"):
        raise _invalid(kind, text, "it starts or ends with '/'", help_text)
    return text


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid concrete name.

    Raises ``InvalidName`` saying what is wrong and what a valid name looks like;
    a group pattern (``net/*``) is refused here: it is not a concrete name.
    """
    if (type(name) is str and len(name) <= MAX_NAME_LEN and _NAME_RE.fullmatch(name)
            and ("." not in name or not _has_dot_segment(name))):
        return name
    _check_text("name", name, _NAME_HELP)
    if "*" in name:
        raise _invalid("name", name, "it contains '*', which only group patterns may "
                       "(use it with names()/group sends, not as one peer's name)",
                       _NAME_HELP)
    for position, segment in enumerate(name.split("/"), 1):
        problem = _segment_problem(segment, position)
        if problem is not None:
            raise _invalid("name", name, problem, _NAME_HELP)
    return name


def _has_dot_segment(name: str) -> bool:
    return any(segment in _FORBIDDEN_SEGMENTS for segment in name.split("/"))


def is_pattern(text: str) -> bool:
    """True if ``text`` is meant as a group pattern (it contains ``*``).

    This does not validate: pass the text to ``validate_pattern`` (or
    ``validate_name`` when this returns False) to be told what is wrong with it.
    """
    return isinstance(text, str) and "*" in text


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid group pattern (or a concrete name).

    Raises ``InvalidName`` saying what is wrong and what a valid pattern looks like.
    """
    Pattern(pattern)
    return pattern


class Pattern:
    """A compiled group pattern; ``Pattern(p)`` is cached by its text.

    ``match(name)`` is the hot path: it assumes ``name`` is a valid concrete name
    (the registry only holds validated names) and does not validate it; for any
    other string it returns a bool without raising, but which one is unspecified.

    Attributes: ``text`` (the pattern), ``segments`` (its segments, wildcards
    included), ``literal_prefix`` (the segments before the first wildcard, joined
    by '/'; the whole name for a pattern without wildcards).
    """

    __slots__ = ("text", "segments", "literal_prefix", "match")

    text: str
    segments: tuple[str, ...]
    literal_prefix: str
    match: Callable[[str], bool]

    def __new__(cls, pattern: str) -> Pattern:
        if type(pattern) is not str:
            _check_text("group pattern", pattern, _PATTERN_HELP)
        return _compile(pattern)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@lru_cache(maxsize=4096)
def _compile(text: str) -> Pattern:
    _check_text("group pattern", text, _PATTERN_HELP)
    segments = tuple(text.split("/"))
    last = len(segments) - 1
    for position, segment in enumerate(segments, 1):
        if segment == ANY_ONE:
            continue
        if segment == ANY_DEPTH:
            if position - 1 != last:
                raise _invalid("group pattern", text, f"'**' is segment {position} but may "
                               "only be the last one (use '*' for one segment in the "
                               "middle)", _PATTERN_HELP)
            continue
        if "*" in segment:
            raise _invalid("group pattern", text, f"segment {position} ({segment!r}) mixes "
                           "'*' with other characters; a wildcard must be a whole segment",
                           _PATTERN_HELP)
        problem = _segment_problem(segment, position)
        if problem is not None:
            raise _invalid("group pattern", text, problem, _PATTERN_HELP)

    literal: list[str] = []
    for segment in segments:
        if segment in (ANY_ONE, ANY_DEPTH):
            break
        literal.append(segment)
    literal_prefix = "/".join(literal)

    compiled = object.__new__(Pattern)
    compiled.text = text
    compiled.segments = segments
    compiled.literal_prefix = literal_prefix
    compiled.match = _matcher(segments, literal_prefix, len(literal))
    return compiled


def _matcher(segments: tuple[str, ...], literal_prefix: str,
             n_literal: int) -> Callable[[str], bool]:
    """The cheapest ``name -> bool`` test that decides the pattern ``segments``."""
    if n_literal == len(segments):                      # no wildcard: one name
        return literal_prefix.__eq__
    rest = segments[n_literal:]
    if rest == (ANY_DEPTH,):
        if n_literal == 0:                              # "**": every name
            return lambda name: True
        return _prefix_matcher(literal_prefix + "/")    # "a/b/**"
    if rest == (ANY_ONE,):                              # "a/b/*": the children
        start = len(literal_prefix) + 1 if n_literal else 0
        prefix = literal_prefix + "/" if n_literal else ""

        def children(name: str) -> bool:
            return name.startswith(prefix) and name.find("/", start) < 0 and len(name) > start
        return children
    parts = []
    for segment in segments:
        if segment == ANY_ONE:
            parts.append("[^/]+")
        elif segment == ANY_DEPTH:
            parts.append("[^/]+(?:/[^/]+)*")
        else:
            parts.append(re.escape(segment))
    regex = re.compile("/".join(parts))
    return lambda name: regex.fullmatch(name) is not None


def _prefix_matcher(prefix: str) -> Callable[[str], bool]:
    start = len(prefix)

    def below(name: str) -> bool:
        return len(name) > start and name.startswith(prefix)
    return below


def matches(pattern: str, name: str) -> bool:
    """True if the concrete ``name`` is in the group ``pattern``.

    Both are validated: raises ``InvalidName`` for a malformed pattern or name.
    """
    compiled = Pattern(pattern)
    return compiled.match(validate_name(name))
