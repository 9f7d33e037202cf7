"""Pub/sub topics a file publishes and subscribes to, when written as literals.

Publishing: ``x.publish(topic, ...)`` (Redis, generic buses), ``x.emit(topic, ...)``
and ``ChemPub/UMNPub(...).emit(signal=topic, ...)``.  Subscribing: ``x.subscribe``,
``psubscribe``, ``ssubscribe``, ``on``/``once``/``add_listener`` (event emitters),
``ChemSub/UMNSub(topic, ...)``, ZeroMQ ``setsockopt(zmq.SUBSCRIBE, b"topic")`` and
handler tables passed as ``handlers={"topic": fn}`` (event receivers; these only
cover publications, since the same shape also dispatches commands).

A topic counts when it is a string (or bytes) literal or a module-level string
constant of the same file.  Other module-level strings shaped like topics (a
constants module's ``CHANNEL = "curiosity.x"``) are *declared* topics: they may
be published or subscribed through their names elsewhere, so they only cover.
A topic built at run time from a literal head (``f"chem.{x}"``, ``"chem." + x``)
is not judged, but its head still counts as publishing or subscribing to
everything that starts with it, so it never makes another file's topic look
orphaned.  Subscriptions match by prefix, as ZeroMQ's
do; a glob pattern (``curiosity.*``) stands for its literal head.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from kloros_tasks.detectors.integration.scope import dotted_name, top_statements

PUBLISH_METHODS = frozenset({"publish", "emit"})
SUBSCRIBE_METHODS = frozenset({"subscribe", "psubscribe", "ssubscribe", "on", "once",
                               "add_listener"})
SUBSCRIBER_CLASSES = frozenset({"ChemSub", "UMNSub"})
TOPIC_KEYWORDS = ("signal", "topic", "channel")
GLOB_CHARS = "*?["
# Topics are names: ``emit("Traceback (most recent call last):")`` writes text.
TOPIC_SHAPE = re.compile(r"\S{1,200}")


@dataclass
class Topics:
    pubs: dict[str, list[int]] = field(default_factory=dict)
    subs: dict[str, list[int]] = field(default_factory=dict)
    # Literal heads of topics built at run time (and handler-table keys): they
    # cover other files' topics but are not judged.
    pub_heads: set[str] = field(default_factory=set)
    sub_heads: set[str] = field(default_factory=set)
    used_constants: set[str] = field(default_factory=set)  # names given as a topic


class _Collector:
    """Records the topics of one file's calls."""

    def __init__(self, consts: dict[str, str | None]) -> None:
        self.consts = consts
        self.topics = Topics()

    def call(self, node: ast.Call) -> None:
        func, topics = node.func, self.topics
        method = func.attr if isinstance(func, ast.Attribute) else None
        callee = (dotted_name(func) or "").rpartition(".")[2]
        if method in PUBLISH_METHODS:
            self.record(_topic_args(node, True), topics.pubs, topics.pub_heads, node, False)
        elif method in SUBSCRIBE_METHODS:
            first_only = method in ("on", "once", "add_listener")
            self.record(_topic_args(node, first_only), topics.subs, topics.sub_heads, node, True)
        for keyword in node.keywords:
            if keyword.arg == "handlers" and isinstance(keyword.value, ast.Dict):
                self.handler_table(keyword.value)
        if callee in SUBSCRIBER_CLASSES:
            self.record(_topic_args(node, True), topics.subs, topics.sub_heads, node, True)
        elif method in ("setsockopt", "setsockopt_string") and len(node.args) >= 2:
            option = dotted_name(node.args[0]) or ""
            if option.endswith("SUBSCRIBE") and not option.endswith("UNSUBSCRIBE"):
                self.record([node.args[1]], topics.subs, topics.sub_heads, node, False)

    def handler_table(self, table: ast.Dict) -> None:
        """``handlers={"task-sent": fn, "*": fn}``: an event receiver's table (celery's
        Receiver).  Such tables also dispatch commands, so they only cover
        publications and are not judged themselves."""
        for key in table.keys:
            literal = self.text(key)[0] if key is not None else None
            if literal is not None:
                head = _glob_head(literal)
                if not head or TOPIC_SHAPE.fullmatch(head):
                    self.topics.sub_heads.add(head)

    def record(self, args: list[ast.expr], exact: dict[str, list[int]], heads: set[str],
               node: ast.Call, glob: bool) -> None:
        for arg in args:
            literal, head = self.text(arg)
            if literal is not None and glob:
                literal = _glob_head(literal)  # a pattern subscribes to its literal head
            if literal is not None and (TOPIC_SHAPE.fullmatch(literal) or (glob and not literal)):
                exact.setdefault(literal, []).append(node.lineno)
            elif literal is None and head and TOPIC_SHAPE.fullmatch(head):
                heads.add(head)

    def text(self, expr: ast.expr) -> tuple[str | None, str]:
        if isinstance(expr, ast.Name) and self.consts.get(expr.id):
            self.topics.used_constants.add(expr.id)
        return topic_text(expr, self.consts)


def extract_topics(nodes: list[ast.AST], consts: dict[str, str | None]) -> Topics:
    """Literal topics of every publish/subscribe call among a file's nodes."""
    collector = _Collector(consts)
    for node in nodes:
        if isinstance(node, ast.Call):
            collector.call(node)
    return collector.topics


def declared_topics(tree: ast.Module, used: set[str]) -> set[str]:
    """Topic-shaped strings in module-level constants and displays (dict keys and
    values, list/tuple/set items), except constants this file itself gives as a
    topic and dunder names (``__all__`` lists names, not topics)."""
    out: set[str] = set()
    for stmt in top_statements(tree.body):
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any(n in used or n.startswith("__") for n in names):
            continue
        value = stmt.value
        items = [value]
        if isinstance(value, ast.Dict):
            items = [*(k for k in value.keys if k is not None), *value.values]
        elif isinstance(value, (ast.List, ast.Tuple, ast.Set)):
            items = value.elts
        out.update(i.value for i in items if isinstance(i, ast.Constant)
                   and isinstance(i.value, str) and TOPIC_SHAPE.fullmatch(i.value))
    return out


def _glob_head(text: str) -> str:
    cut = [text.index(c) for c in GLOB_CHARS if c in text]
    return text[: min(cut)] if cut else text


def _topic_args(node: ast.Call, first_only: bool) -> list[ast.expr]:
    keyword = [k.value for k in node.keywords if k.arg in TOPIC_KEYWORDS]
    if keyword:
        return keyword[:1]
    positional = [a for a in node.args if not isinstance(a, ast.Starred)]
    return positional[:1] if first_only else positional


def topic_text(expr: ast.expr, consts: dict[str, str | None]) -> tuple[str | None, str]:
    """(literal topic, "") for a literal; (None, literal head) for a built one."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, (str, bytes)):
        value = expr.value
        return (value.decode("latin-1") if isinstance(value, bytes) else value), ""
    if isinstance(expr, ast.Name) and consts.get(expr.id):
        return consts[expr.id], ""
    if isinstance(expr, ast.JoinedStr) and expr.values:
        if all(isinstance(v, ast.Constant) for v in expr.values):
            return "".join(str(v.value) for v in expr.values), ""
        first = expr.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return None, first.value
        return None, ""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Mod)):
        literal, head = topic_text(expr.left, consts)
        text = literal if literal is not None else head
        return None, text.split("%")[0] if isinstance(expr.op, ast.Mod) else text
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "format"):
        literal, _ = topic_text(expr.func.value, consts)
        return None, (literal or "").split("{")[0]
    return None, ""
