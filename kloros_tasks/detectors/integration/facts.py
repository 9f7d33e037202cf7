"""Phase 1 of the IntegrationMonitor: one file's text to its FileFacts.

The facts are *contributions* to keys (see integration_keys): what this file tells
the tree about symbols, subclassing, star imports, attribute reads, directories and
topics.  Contributions hold no line numbers, so an edit that only moves code
changes no key and re-evaluates nobody else; line numbers live in ``data`` for this
file's own evidence.
"""

from __future__ import annotations

import ast
from typing import Any

from kloros_tasks.detectors import layout
from kloros_tasks.detectors._treecache import nodes_by_type, parse_tree, walk
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.detectors.integration.classes import extract_classes
from kloros_tasks.detectors.integration.keys import (
    ATTR,
    CATCH_ALL,
    DECLARED,
    DECLARED_PREFIX,
    LIST_HEAD,
    LIST_READ,
    NSDIR,
    PUBLISHED,
    PUBLISHED_DYN,
    REL_DEF,
    REL_PTR,
    REL_READ,
    REL_SIG,
    STAR,
    SUB,
    SUB_REF,
    SUBSCRIBED,
    SYM,
    WRAPPER,
    WRITTEN,
    directories,
    dotted_prefixes,
    is_extension,
    module_names,
    parent,
    sig_value,
    sub_ptrs,
    sym_ptrs,
    text_prefixes,
)
from kloros_tasks.detectors.integration.methods import FILL_METHODS, ClassFacts, mangle
from kloros_tasks.detectors.integration.scope import ModuleScope, build_scope
from kloros_tasks.detectors.integration.topics import Topics, extract_topics
from kloros_tasks.detectors.integration.topictext import declared_topics, is_topic
from kloros_tasks.detectors.integration.wrappers import (
    is_sub_name,
    redis_lists,
    wrapper_calls,
    wrapper_definitions,
)

FACTS_VERSION = 2
EVIDENCE_LINES = 3  # line numbers kept per attribute/topic for evidence


class Contributions:
    """Accumulates one file's contributions, pointers, existence keys and reads."""

    def __init__(self) -> None:
        self.content: dict[str, dict[str, Any]] = {}
        self.ptrs: dict[str, set[str]] = {}
        self.exist: set[str] = set()
        self.reads: set[str] = set()

    def add(self, key: str, content: dict[str, Any], ptrs: list[str] = ()) -> None:
        self.content[key] = content
        self.ptrs.setdefault(key, set()).update(ptrs)

    def add_subclassing(self, key: str, field: str, item: Any, ptrs: list[str]) -> None:
        """Merge into an ``x:`` contribution: ``sub`` lists subclasses (by their
        qualified names), ``alias`` lists names bound to the referenced symbol."""
        entry = self.content.setdefault(key, {"sub": [], "alias": []})
        if item not in entry[field]:
            entry[field].append(item)
            entry[field].sort()
        self.ptrs.setdefault(key, set()).update(ptrs)

    def facts(self, data: dict[str, Any]) -> FileFacts:
        contents: dict[str, dict[str, Any]] = {}
        inverse: dict[str, list[str]] = {}
        for key, content in self.content.items():
            ptrs = sorted(self.ptrs.get(key, ()))
            contents[key] = {**content, "->": ptrs} if ptrs else dict(content)
            for ptr in ptrs:
                inverse.setdefault(ptr, []).append(key)
        relations = {
            REL_DEF: frozenset(contents) | frozenset(self.exist),
            REL_SIG: frozenset(sig_value(k, c) for k, c in contents.items()),
            REL_PTR: frozenset(inverse),
            REL_READ: frozenset(self.reads),
        }
        data = {**data, "c": contents, "pm": {k: sorted(v) for k, v in inverse.items()}}
        return FileFacts(relations=relations, data=data)


def extract_facts(path: str, text: str) -> FileFacts:
    """Parse one file; a file that does not parse yields ``FileFacts(error=...)``.
    A compiled extension module's content is not read: it exists, binds unknown names."""
    if is_extension(path):
        return _extension(path)
    try:
        tree = parse_tree(text, filename=path)  # shared with other detectors: read only
        return _facts(path, tree)
    except SyntaxError as exc:
        return FileFacts(error=f"line {exc.lineno or 0}: {exc.msg}")
    except (ValueError, RecursionError, MemoryError) as exc:
        # Null bytes, or nesting deeper than the parser or our walk can follow.
        return FileFacts(error=f"line 0: {type(exc).__name__}: {exc}"[:300])


def _facts(path: str, tree: ast.Module) -> FileFacts:
    # Walked once and grouped by node class, shared by every collector (and detector):
    # each collector reads the groups it needs (the calls, the assignments...).
    groups = nodes_by_type(tree)
    scope = build_scope(path, tree, groups)
    classes, self_nodes = extract_classes(scope, groups)
    class_consts = {c.local: c.consts for c in classes if "." not in c.local and c.consts}
    topics = extract_topics(scope, groups, class_consts)
    out = Contributions()
    _module(scope, out)
    class_data = _classes(scope, classes, out)
    _imports(scope, out)
    _topics(topics, declared_topics(tree, topics.used_constants), out)
    wrappers = wrapper_definitions(tree, groups)
    calls = wrapper_calls(groups, scope.consts, set(wrappers))
    _wrappers(wrappers, calls, out)
    pushed = _redis_lists(groups, scope, out)
    out.exist.update(NSDIR + d for d in directories(path))
    reads, writes = external_attributes(groups, self_nodes)
    out.exist.update(ATTR + name for name in reads)
    out.exist.update(WRITTEN + name for name in writes)
    data = {
        "v": FACTS_VERSION,
        "root": root_of(path),
        "mods": list(scope.names),
        "imports": [[list(i.parts), i.line] for i in scope.imports],
        "classes": class_data,
        "pubs": {t: lines[:EVIDENCE_LINES] for t, lines in sorted(topics.pubs.items())},
        "subs": {t: lines[:EVIDENCE_LINES] for t, lines in sorted(topics.subs.items())},
        "prefs": {r: lines[:EVIDENCE_LINES] for r, lines in sorted(topics.pub_refs.items())},
        "wcalls": {n: c[:20] for n, c in sorted(calls.items())},
        "lpush": {k: lines[:EVIDENCE_LINES] for k, lines in sorted(pushed.items())},
    }
    return out.facts(data)


def _extension(path: str) -> FileFacts:
    out = Contributions()
    for module in module_names(path):
        out.add(SYM + module, {"k": "mod", "dyn": True, "stars": [], "r": root_of(path)})
    out.exist.update(NSDIR + d for d in directories(path))
    empty = {"imports": [], "classes": {}, "pubs": {}, "subs": {}, "prefs": {}, "wcalls": {},
             "lpush": {}}
    return out.facts({"v": FACTS_VERSION, "root": root_of(path), "mods": list(module_names(path)),
                      **empty})


def root_of(path: str) -> str:
    """The import root a module is named from (``""`` for the tree's root, also when
    the root is itself a package)."""
    return layout.import_root(path) or ""


def opaque_facts(path: str) -> FileFacts:
    """A module this Python cannot parse (newer syntax, say): like a compiled module,
    it exists and binds names we cannot see."""
    return _extension(path)


def _module(scope: ModuleScope, out: Contributions) -> None:
    stars = sorted(set(scope.stars))
    for module in scope.names:
        out.add(SYM + module, {"k": "mod", "dyn": scope.dynamic, "stars": stars,
                               "r": root_of(scope.path)})
        for name in scope.bindings:
            kind, target = scope.binding(name)
            if kind == "class":
                continue  # contributed with its class summary
            if kind in ("alias", "module"):
                out.add(f"{SYM}{module}.{name}", {"k": "alias", "t": target}, sym_ptrs(target))
            elif is_topic(scope.consts.get(name) or " "):
                # A string constant: another module may give it as a topic.
                value = scope.consts[name] or ""
                out.add(f"{SYM}{module}.{name}", {"k": "other", "v": value},
                        constant_ptrs(f"{module}.{name}", value))
            else:
                out.add(f"{SYM}{module}.{name}", {"k": "other"})
    for star in stars:
        out.add(STAR + star, {"m": list(scope.names)})
    for name in scope.bindings:
        kind, target = scope.binding(name)
        if kind == "alias":  # a class referenced through this name is the target's
            names = [f"{m}.{name}" for m in scope.names]
            for alias in names:
                out.add_subclassing(SUB + target, "alias", alias, sub_ptrs(alias))


def _classes(scope: ModuleScope, classes: list[ClassFacts],
             out: Contributions) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for cf in classes:
        top = cf.local.partition(".")[0]
        if scope.binding(top)[0] != "class":
            continue  # bound more than once: we cannot tell which class the name is
        qns = [f"{m}.{cf.local}" for m in scope.names]
        bases = [b for b in cf.bases if b is not None and not b.startswith("builtins.")]
        base_ptrs = [k for b in bases for k in sym_ptrs(b)]
        summary = _summary(cf, qns)
        for qn in qns:
            const_ptrs = [k for n, v in cf.consts.items() for k in constant_ptrs(f"{qn}.{n}", v)]
            out.add(SYM + qn, summary, base_ptrs + const_ptrs)
            out.reads.add(SYM + qn)
            out.reads.update(sub_ptrs(qn))
        own = [SYM + q for q in qns] + [k for q in qns for k in sub_ptrs(q)]
        for base in bases:
            out.add_subclassing(SUB + base, "sub", qns, own)
        out.reads.update(base_ptrs)
        out.reads.update(ATTR + name for name in cf.creates)
        out.reads.update(WRITTEN + name for name in cf.uses if name not in cf.defs)
        data[qns[0]] = {
            "line": cf.line,
            "uses": {k: v[:EVIDENCE_LINES] for k, v in sorted(cf.uses.items())},
            "guarded": sorted(cf.guarded),
            "fills": {k: v[:EVIDENCE_LINES] for k, v in sorted(cf.fills.items())},
            "creates": dict(sorted(cf.creates.items())),
            "queues": sorted(cf.queues),
        }
    return data


def constant_ptrs(qualified: str, value: str) -> list[str]:
    """What a publication through the constant ``qualified`` (value ``value``) is
    judged by: subscriptions to its non-empty prefixes, and to the constant itself."""
    return [SUBSCRIBED + p for p in text_prefixes(value)[1:]] + [SUB_REF + qualified]


def _summary(cf: ClassFacts, qns: list[str]) -> dict[str, Any]:
    """What other files may read about a class (no line numbers)."""
    return {
        "k": "class", "qns": qns, "local": cf.local, "bases": cf.bases, "op": sorted(cf.opaque),
        "ga": cf.getattr_hook, "sd": cf.setdyn, "ra": cf.readall,
        "defs": sorted(cf.defs), "reads": sorted(cf.reads),
        "fills": sorted(cf.fills), "creates": sorted(cf.creates), "sup": sorted(cf.supers),
        "st": cf.stateful, "esc": cf.escapes, "kv": dict(sorted(cf.consts.items())),
    }


def _imports(scope: ModuleScope, out: Contributions) -> None:
    for imp in scope.imports:
        for prefix in dotted_prefixes(".".join(imp.parts)):
            out.reads.add(SYM + prefix)
            out.reads.add(NSDIR + prefix)


def _topics(topics: Topics, declared: set[str], out: Contributions) -> None:
    for topic in topics.pubs:
        _reads_as_publication(topic, out)
    for ref in topics.pub_refs:
        out.reads.update([*sym_ptrs(ref), *sym_ptrs(parent(ref)), SUB_REF + ref, CATCH_ALL])
    out.exist.update(SUB_REF + ref for ref in topics.sub_refs)
    if topics.catch_all or "" in topics.subs:
        out.add(CATCH_ALL, {"all": True})
    for topic in topics.subs:
        _reads_as_subscription(topic, out)
    out.exist.update(DECLARED + t for t in declared)
    out.exist.update(DECLARED_PREFIX + p for t in declared for p in text_prefixes(t))
    out.exist.update(SUBSCRIBED + t for t in [*topics.subs, *topics.sub_heads])
    for topic in [*topics.pubs, *topics.pub_heads]:
        out.exist.update(PUBLISHED + p for p in text_prefixes(topic))
    out.exist.update(PUBLISHED_DYN + h for h in topics.pub_heads)


def _reads_as_publication(topic: str, out: Contributions) -> None:
    out.reads.update(SUBSCRIBED + p for p in text_prefixes(topic))
    out.reads.update(DECLARED + p for p in text_prefixes(topic))
    out.reads.add(CATCH_ALL)


def _reads_as_subscription(topic: str, out: Contributions) -> None:
    out.reads.update((PUBLISHED + topic, DECLARED_PREFIX + topic))
    out.reads.update(PUBLISHED_DYN + p for p in text_prefixes(topic))


def _wrappers(wrappers: dict[str, list[dict[str, Any]]],
              calls: dict[str, list[list[Any]]], out: Contributions) -> None:
    """A wrapper's definition, and its possible call sites: each literal covers the
    other side at once (as a publication, or as a subscription when the callee's name
    says so) and is judged once the index shows the callee is a wrapper."""
    for name, entries in wrappers.items():
        out.add(WRAPPER + name, {"w": entries})
    for name, found in calls.items():
        out.reads.add(WRAPPER + name)
        for _, _, topic, _, _ in found[:20]:
            _reads_as_publication(topic, out)
            _reads_as_subscription(topic, out)
            if is_sub_name(name):
                out.exist.add(SUBSCRIBED + topic)
            else:
                out.exist.update(PUBLISHED + p for p in text_prefixes(topic))


def _redis_lists(groups: dict[type, list[ast.AST]], scope: ModuleScope,
                 out: Contributions) -> dict[str, list[int]]:
    pushed, read, heads = redis_lists(groups, scope.consts)
    for key in pushed:
        out.reads.update(LIST_HEAD + p for p in text_prefixes(key)[1:])
        out.reads.update((LIST_READ + key, DECLARED + key))
    out.exist.update(LIST_READ + k for k in read)
    out.exist.update(LIST_HEAD + h for h in heads)
    return pushed


def external_attributes(groups: dict[type, list[ast.AST]],
                        self_nodes: set[int]) -> tuple[set[str], set[str]]:
    """Attribute names read and written on objects other than ``self``: ``obj.X``
    and ``getattr(obj, "X")`` (except as the receiver of a fill, ``obj.X.append``),
    ``obj.X = ...`` and ``setattr(obj, "X", ...)``.  Inside a class, ``obj.__x`` is
    mangled as the compiler does (``Socket.__h = ...`` in ``Server`` writes
    ``_Server__h``, which ``self.__h`` in ``Server`` reads)."""
    fill_receivers: set[int] = set()
    reads: set[str] = set()
    writes: set[str] = set()
    attributes = groups.get(ast.Attribute, ())
    owner = _enclosing_classes(groups, attributes)
    for node in groups.get(ast.Call, ()):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in FILL_METHODS:
            fill_receivers.add(id(func.value))
        if (isinstance(func, ast.Name) and func.id in ("getattr", "setattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            (reads if func.id == "getattr" else writes).add(node.args[1].value)
    for node in attributes:
        if id(node) not in self_nodes:
            name = mangle(owner[id(node)], node.attr) if id(node) in owner else node.attr
            if isinstance(node.ctx, ast.Store):
                writes.add(name)
            elif isinstance(node.ctx, ast.Load) and id(node) not in fill_receivers:
                reads.add(name)
    return reads, writes


def _enclosing_classes(groups: dict[type, list[ast.AST]],
                       attributes: list[ast.AST]) -> dict[int, str]:
    """Innermost enclosing class name of every private attribute node (``obj.__x``,
    the only names ``mangle`` changes).  The classes come breadth first, so an outer
    class is walked before the classes inside it, which then overwrite their own
    nodes; nothing is walked when the file has no such attribute."""
    private = {id(n) for n in attributes if _is_private(n.attr)}
    if not private:
        return {}
    out: dict[int, str] = {}
    for cls in groups.get(ast.ClassDef, ()):
        for node in walk(cls):
            if id(node) in private:
                out[id(node)] = cls.name
    return out


def _is_private(attr: str) -> bool:
    return attr.startswith("__") and not attr.endswith("__")
