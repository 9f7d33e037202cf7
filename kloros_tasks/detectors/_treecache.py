"""One parse per source text in a process, shared by every detector that reads Python.

In the default layout one worker process runs the integration, capability and
knowledge tasks of the same file one after another, and each parses the file: the
parse is a fifth to two fifths of a detector's work on a Python file.  ``parse_tree``
keeps the most recently parsed trees, keyed by a digest of the text, so the second
and third parse of the same text cost a digest and a lookup.  ``all_nodes(tree)``
does the same for the walk over a whole tree: every node, once per kept tree.
``nodes_by_type(tree)`` groups those nodes by their class, each group in the walk's
order, so a collector that wants the calls of a file reads the calls, not every node.
``walk`` and ``children`` are ``ast.walk`` and ``ast.iter_child_nodes`` without a
generator per node (the same nodes, in the same order, 1.4 to 2 times faster).

Sharing a tree is safe because no detector changes one (``tests/test_parse_cache.py``
checks every detector against the tree's dump).  A tree takes about 30 times its
source in memory (Django 5.2: 5.4 MiB of source, 158 MiB of trees), so the cache is
bounded by entries and by the characters of source it holds, and a file larger than
that bound is parsed and not kept.  Text that does not parse is not kept either:
it raises again on the next call, with that caller's ``filename`` in the message.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator

# Small on purpose.  A bound that covers one batch task (128 trees, 1 Mi characters,
# about 30 MiB of trees) served most parses in an in-process replay, but in a live
# cold scan the watcher sends up to five batches per detector at a time, so a file's
# second parse comes several hundred files after its first: the larger bound saved no
# measurable time on Django and raised the burst peak by 8 to 16 MiB
# (docs/performance.md, section 0b).  What it keeps: a live edit's three tasks.
MAX_ENTRIES = 8
MAX_SOURCE_CHARS = 512 * 1024


_AST = ast.AST


def walk(node: ast.AST) -> list[ast.AST]:
    """The nodes ``ast.walk(node)`` yields, in its order (breadth first), as a list."""
    out = [node]
    append = out.append
    for current in out:  # a list iterator also visits what is appended while it runs
        for name in current._fields:
            value = getattr(current, name, None)
            if isinstance(value, _AST):
                append(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, _AST):
                        append(item)
    return out


def children(node: ast.AST) -> list[ast.AST]:
    """The nodes ``ast.iter_child_nodes(node)`` yields, in its order, as a list."""
    out = []
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, _AST):
            out.append(value)
        elif isinstance(value, list):
            out.extend(item for item in value if isinstance(item, _AST))
    return out


def group_by_type(nodes: Iterable[ast.AST]) -> dict[type, list[ast.AST]]:
    """``nodes`` grouped by their exact class (``ast.Call``, ``ast.Attribute``...),
    each group in the order of ``nodes``.  A parsed tree holds only concrete classes,
    so ``groups.get(ast.Call, ())`` is every node that ``isinstance(n, ast.Call)``."""
    groups: dict[type, list[ast.AST]] = {}
    for node in nodes:
        group = groups.get(node.__class__)
        if group is None:
            groups[node.__class__] = [node]
        else:
            group.append(node)
    return groups


def _digest(text: str) -> bytes:
    # surrogatepass: a text decoded with surrogateescape still has one digest.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _parse(text: str, filename: str) -> ast.Module:
    # A syntax tree holds no reference cycle, yet the collector scanned it again and
    # again while it was being built: on Django a fifth to a third of the parse's time
    # (1,850 collections instead of 800 over an extraction of every file, every
    # detector).  It stays off for the parse only.
    enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            # Invalid escape sequences warn at parse time: not our business, and under
            # ``-W error`` a warning would make valid code look unparseable.
            warnings.simplefilter("ignore")
            return ast.parse(text, filename=filename)
    finally:
        if enabled:
            gc.enable()


class TreeCache:
    """The most recently used trees, at most ``max_entries`` of them and at most
    ``max_chars`` characters of source text between them."""

    def __init__(self, max_entries: int = MAX_ENTRIES,
                 max_chars: int = MAX_SOURCE_CHARS) -> None:
        self._trees: OrderedDict[bytes, tuple[ast.Module, int]] = OrderedDict()
        self._walks: dict[int, tuple[ast.AST, ...]] = {}  # id of a kept tree -> its nodes
        self._groups: dict[int, dict[type, list[ast.AST]]] = {}  # id -> nodes by class
        self._kept: set[int] = set()  # ids of the kept trees (alive while kept)
        self._lock = threading.Lock()
        self._chars = 0
        self.max_entries, self.max_chars = max_entries, max_chars
        self.stats = {"hits": 0, "misses": 0, "not_kept": 0}

    def parse(self, text: str, filename: str = "<unknown>") -> ast.Module:
        """``ast.parse(text, filename)``, from the cache when the same text was parsed
        recently.  Raises what ``ast.parse`` raises (SyntaxError, ValueError,
        RecursionError, MemoryError).  The tree is shared: never change it."""
        size = len(text)
        if size > self.max_chars or self.max_entries <= 0:
            self.stats["not_kept"] += 1
            return _parse(text, filename)
        key = _digest(text)
        with self._lock:
            found = self._trees.get(key)
            if found is not None:
                self._trees.move_to_end(key)
                self.stats["hits"] += 1
                return found[0]
            self.stats["misses"] += 1
        tree = _parse(text, filename)
        with self._lock:
            if key not in self._trees:
                self._trees[key] = (tree, size)
                self._kept.add(id(tree))
                self._chars += size
                self._shrink()
        return tree

    def nodes(self, tree: ast.AST) -> tuple[ast.AST, ...]:
        """``walk(tree)``, computed once while ``tree`` is kept here (shared: read only)."""
        with self._lock:
            found = self._walks.get(id(tree))
        if found is not None:
            return found
        found = tuple(walk(tree))
        with self._lock:
            if id(tree) in self._kept:
                self._walks[id(tree)] = found
        return found

    def groups(self, tree: ast.AST) -> dict[type, list[ast.AST]]:
        """``group_by_type(self.nodes(tree))``, computed once while ``tree`` is kept
        here (shared: read only)."""
        with self._lock:
            found = self._groups.get(id(tree))
        if found is not None:
            return found
        found = group_by_type(self.nodes(tree))
        with self._lock:
            if id(tree) in self._kept:
                self._groups[id(tree)] = found
        return found

    def _shrink(self) -> None:
        while self._trees and (len(self._trees) > self.max_entries
                               or self._chars > self.max_chars):
            _key, (tree, size) = self._trees.popitem(last=False)
            self._kept.discard(id(tree))
            self._walks.pop(id(tree), None)
            self._groups.pop(id(tree), None)
            self._chars -= size

    def forget(self, text: str) -> None:
        """Drop the tree of ``text`` if it is kept (no caller will ask for it again)."""
        if len(text) > self.max_chars:
            return
        key = _digest(text)
        with self._lock:
            found = self._trees.pop(key, None)
            if found is not None:
                tree, size = found
                self._kept.discard(id(tree))
                self._walks.pop(id(tree), None)
                self._groups.pop(id(tree), None)
                self._chars -= size

    def resize(self, max_entries: int, max_chars: int) -> None:
        """New bounds (0 entries turns the cache off); what no longer fits is dropped."""
        with self._lock:
            self.max_entries, self.max_chars = max_entries, max_chars
            self._shrink()

    def clear(self) -> None:
        with self._lock:
            self._trees.clear()
            self._kept.clear()
            self._walks.clear()
            self._groups.clear()
            self._chars = 0

    def held(self) -> Iterator[bytes]:
        """The digests of the texts whose trees are held, oldest first."""
        with self._lock:
            return iter(list(self._trees))

    def limits(self) -> str:
        return f"{self.max_entries} trees, {self.max_chars // 1024} Ki characters of source"


PARSE_CACHE = TreeCache()


def parse_tree(text: str, filename: str = "<unknown>") -> ast.Module:
    """The process's shared ``TreeCache.parse``."""
    return PARSE_CACHE.parse(text, filename)


def all_nodes(tree: ast.AST) -> tuple[ast.AST, ...]:
    """The process's shared ``TreeCache.nodes``: every node of ``tree``, as ``ast.walk``
    orders them."""
    return PARSE_CACHE.nodes(tree)


def nodes_by_type(tree: ast.AST) -> dict[type, list[ast.AST]]:
    """The process's shared ``TreeCache.groups``: every node of ``tree`` by its class,
    each group in ``ast.walk``'s order."""
    return PARSE_CACHE.groups(tree)


def forget_tree(text: str) -> None:
    """The process's shared ``TreeCache.forget``."""
    PARSE_CACHE.forget(text)
