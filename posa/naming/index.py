"""The two indexes of a registry table's names: a tree of path prefixes, a sorted list.

``NameTree`` maps every path prefix of an indexed name ("" for the root) to the
segments below it, so that ``names("net/site-a/*")`` visits only net/site-a's
children and ``names("net/**")`` only net's subtree: a pattern walks the tree
from its literal prefix.

``SortedNames`` keeps the names in string order for pages (``names`` with a
cursor): a page bisects to its cursor and reads on. Additions are appended to a
run that is sorted into the list when a page is next read (timsort merges the two
sorted runs in linear time), and removals are dropped lazily, when they outnumber
the live names, so registering costs an append, not an insertion.

Pure: no I/O, not thread-safe; ``posa.naming.table`` keeps one of each.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Container, Iterator

from posa.wire.names import ANY_DEPTH, ANY_ONE, Pattern

__all__ = ["NameTree", "SortedNames"]


class NameTree:
    """Path prefixes of the indexed names, each with the segments below it."""

    def __init__(self) -> None:
        self._children: dict[str, set[str]] = {}

    def add(self, name: str) -> None:
        parent, _, leaf = name.rpartition("/")
        while True:
            kids = self._children.get(parent)
            if kids is None:
                kids = self._children[parent] = set()
            elif leaf in kids:
                return                      # the ancestors are indexed already
            kids.add(leaf)
            if not parent:
                return
            parent, _, leaf = parent.rpartition("/")

    def remove(self, name: str, held: Container[str]) -> None:
        """Forget ``name`` (no longer in ``held``) and every prefix left empty."""
        node = name
        while node and node not in held and node not in self._children:
            parent, _, leaf = node.rpartition("/")
            kids = self._children[parent]
            kids.discard(leaf)
            if kids:
                return
            del self._children[parent]
            node = parent

    def walk(self, pattern: Pattern, held: Container[str]) -> list[str]:
        """Names of ``held`` that match ``pattern``, in no order."""
        segments, children = pattern.segments, self._children
        start = pattern.literal_prefix
        found: list[str] = []
        stack = [(start, start.count("/") + 1 if start else 0)]
        while stack:
            node, i = stack.pop()
            if i == len(segments):
                if node in held:
                    found.append(node)
                continue
            kids = children.get(node)
            if not kids:
                continue
            prefix = node + "/" if node else ""
            segment = segments[i]
            if segment == ANY_DEPTH:
                below = [prefix + kid for kid in kids]
                while below:
                    path = below.pop()
                    if path in held:
                        found.append(path)
                    grandkids = children.get(path)
                    if grandkids:
                        path += "/"
                        below.extend([path + kid for kid in grandkids])
            elif segment == ANY_ONE:
                stack.extend([(prefix + kid, i + 1) for kid in kids])
            elif segment in kids:
                stack.append((prefix + segment, i + 1))
        return found


class SortedNames:
    """Names in string order, read from a cursor. May hold names no longer
    ``held``: readers skip them (``after`` does)."""

    def __init__(self) -> None:
        self._sorted: list[str] = []
        self._added: list[str] = []
        self._indexed: set[str] = set()
        self._removed = 0

    def add(self, name: str) -> None:
        if name not in self._indexed:
            self._indexed.add(name)
            self._added.append(name)

    def discard(self, name: str) -> None:
        """``name`` is no longer held (dropped from the list later)."""
        self._removed += 1

    def after(self, cursor: str | None, prefix: str, held: Container[str]) -> Iterator[str]:
        """The names of ``held`` above ``cursor`` (all, for None) that start with
        ``prefix``, in order. Do not change the index while reading."""
        self._settle(held)
        names = self._sorted
        start = bisect_left(names, prefix)
        if cursor is not None:
            start = max(start, bisect_right(names, cursor))
        for i in range(start, len(names)):
            name = names[i]
            if not name.startswith(prefix):
                return
            if name in held:
                yield name

    def _settle(self, held: Container[str]) -> None:
        if self._removed > len(self._indexed) // 2 + 64:
            self._sorted = [name for name in self._sorted if name in held]
            self._added = [name for name in self._added if name in held]
            self._indexed = set(self._sorted).union(self._added)
            self._removed = 0
        if self._added:
            self._added.sort()
            self._sorted += self._added     # two sorted runs: one linear merge
            self._sorted.sort()
            self._added = []
