"""Names and group patterns: tables of (input, outcome) and hypothesis properties."""
from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.errors import InvalidName
from posa.wire.names import (
    MAX_NAME_LEN,
    MAX_SEGMENT_LEN,
    Pattern,
    is_pattern,
    matches,
    validate_name,
    validate_pattern,
)

SEGMENT_CHARS = string.ascii_letters + string.digits + "._-"

# -- strategies -------------------------------------------------------------------

segments = st.text(SEGMENT_CHARS, min_size=1, max_size=MAX_SEGMENT_LEN).filter(
    lambda s: s not in (".", ".."))
valid_names = st.lists(segments, min_size=1, max_size=8).map("/".join).filter(
    lambda n: len(n) <= MAX_NAME_LEN)
# a tiny alphabet so that patterns and names collide often
small_names = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join)


@st.composite
def small_patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=0, max_size=4))
    if not parts or draw(st.booleans()):
        parts.append("**")
    return "/".join(parts)


def reference_match(pattern: str, name: str) -> bool:
    """Segment by segment, recursively: obviously right, and slow."""
    def go(p: list[str], n: list[str]) -> bool:
        if not p:
            return not n
        if p[0] == "**":
            return len(n) >= 1
        return bool(n) and p[0] in ("*", n[0]) and go(p[1:], n[1:])
    return go(pattern.split("/"), name.split("/"))


def reference_valid(name: str) -> bool:
    return (0 < len(name) <= MAX_NAME_LEN and all(
        0 < len(seg) <= MAX_SEGMENT_LEN and seg not in (".", "..")
        and all(c in SEGMENT_CHARS for c in seg) for seg in name.split("/")))


# -- tables -----------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "a", "netmgmt/site-a/agent-3", "A.b_c-D/9", "x" * 64, "/".join(["abc"] * 63),
    "..a/b..", "a/.hidden", "...",
])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name, says", [
    ("", "empty"),
    ("/a", "starts or ends with '/'"),
    ("a/", "starts or ends with '/'"),
    ("a//b", "segment 2 is empty"),
    ("a/./b", "segment 2 is '.'"),
    ("..", "segment 1 is '..'"),
    ("a b", "character ' '"),
    ("caf\u00e9", "character '\u00e9'"),
    ("a/b\n", "character '\\n'"),
    ("x" * 65, "65 characters (at most 64)"),
    ("/".join(["abcd"] * 52), "259 characters (at most 255)"),
    ("net/*", "only group patterns"),
    ("net/**", "only group patterns"),
    (None, "must be a str, not NoneType"),
    (b"net/a", "must be a str, not bytes"),
])
def test_invalid_names(name: object, says: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)  # type: ignore[arg-type]
    message = str(info.value)
    assert says in message
    assert "e.g. 'netmgmt/site-a/agent-3'" in message      # says what a valid one is


def test_long_invalid_name_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("?" * 10_000)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("pattern", [
    "**", "*", "net/**", "net/site-a/*", "net/*/router-1", "*/*/x", "*/**", "net/a",
])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern, says", [
    ("net/**/x", "'**' is segment 2 but may only be the last one"),
    ("**/**", "'**' is segment 1"),
    ("agent-*", "a wildcard must be a whole segment"),
    ("net/***", "a wildcard must be a whole segment"),
    ("net//*", "segment 2 is empty"),
    ("net/*/", "starts or ends with '/'"),
    ("", "empty"),
    ("n?t/*", "character '?'"),
    (3, "must be a str, not int"),
])
def test_invalid_patterns(pattern: object, says: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_pattern(pattern)  # type: ignore[arg-type]
    assert says in str(info.value)
    assert "'netmgmt/**'" in str(info.value)


@pytest.mark.parametrize("pattern, name, expected", [
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("net/**", "net", False),
    ("net/**", "net/a", True),
    ("net/**", "net/a/b/c", True),
    ("net/**", "network/a", False),
    ("net/*", "net/a", True),
    ("net/*", "net/a/b", False),
    ("net/*", "net", False),
    ("net/*", "netx/a", False),
    ("*", "a", True),
    ("*", "a/b", False),
    ("net/*/router-1", "net/x/router-1", True),
    ("net/*/router-1", "net/x/router-2", False),
    ("net/*/router-1", "net/x/y/router-1", False),
    ("net/a", "net/a", True),
    ("net/a", "net/a/b", False),
    ("a.b/*", "axb/c", False),                   # '.' is literal, not a regex dot
    ("*/**", "a", False),
    ("*/**", "a/b", True),
])
def test_matches_table(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected
    assert Pattern(pattern).match(name) is expected


def test_matches_validates_both_sides() -> None:
    with pytest.raises(InvalidName):
        matches("net/*", "net//a")
    with pytest.raises(InvalidName):
        matches("net/**/a", "net/a")


@pytest.mark.parametrize("text, expected", [
    ("net/*", True), ("**", True), ("agent-*", True), ("net/a", False), ("", False),
    (None, False),
])
def test_is_pattern(text: object, expected: bool) -> None:
    assert is_pattern(text) is expected  # type: ignore[arg-type]


def test_pattern_is_compiled_once_and_exposes_its_structure() -> None:
    compiled = Pattern("net/site-a/*/x")
    assert Pattern("net/site-a/*/x") is compiled
    assert compiled.segments == ("net", "site-a", "*", "x")
    assert compiled.literal_prefix == "net/site-a"
    assert compiled == Pattern("net/site-a/*/x") and hash(compiled) == hash("net/site-a/*/x")
    assert repr(compiled) == "Pattern('net/site-a/*/x')"
    assert Pattern("**").literal_prefix == ""
    assert Pattern("a/b").literal_prefix == "a/b"


# -- properties -------------------------------------------------------------------

@given(valid_names)
def test_every_valid_name_validates_and_matches_itself_and_everything(name: str) -> None:
    assert validate_name(name) == name
    assert validate_pattern(name) == name
    assert not is_pattern(name)
    assert matches(name, name)
    assert matches("**", name)
    first = name.split("/")[0]
    assert matches(first + "/**", name) is ("/" in name)


@given(st.sets(small_names, max_size=30))
def test_children_pattern_matches_exactly_the_children(names: set[str]) -> None:
    children = {n for n in names if n.count("/") == 1 and n.startswith("a/")}
    assert {n for n in names if matches("a/*", n)} == children


@given(st.one_of(st.text(), st.text("ab/.*-_ \u00e9"), valid_names))
def test_any_string_validates_or_raises_invalid_name(text: str) -> None:
    try:
        validate_name(text)
    except InvalidName:
        assert not reference_valid(text)
    else:
        assert reference_valid(text)
    try:
        validate_pattern(text)
    except InvalidName:
        pass


@settings(max_examples=300)
@given(small_patterns(), small_names)
def test_matching_agrees_with_the_reference(pattern: str, name: str) -> None:
    assert matches(pattern, name) is reference_match(pattern, name)


@given(valid_names, st.data())
def test_patterns_made_from_a_name_match_it(name: str, data: st.DataObject) -> None:
    parts = name.split("/")
    starred = [data.draw(st.sampled_from([p, "*"])) for p in parts]
    assert matches("/".join(starred), name)
    cut = data.draw(st.integers(0, len(parts) - 1))
    assert matches("/".join(parts[:cut] + ["**"]), name)
    assert re.fullmatch(r"[^*]*", Pattern("/".join(starred)).literal_prefix)
