"""Pub/sub topics a file publishes and subscribes to.

Publishing: ``x.publish(topic, ...)`` (Redis, generic buses), ``x.emit(topic, ...)``,
``ChemPub/UMNPub(...).emit(signal=topic, ...)``, and raw ZeroMQ: the first frame of
``sock.send_multipart([topic, payload])`` (also through a local name bound to the
list) and the first word of ``sock.send_string("topic payload")``, unless the socket
is created in the same file as a type other than PUB/XPUB.  Subscribing:
``x.subscribe``, ``psubscribe``, ``ssubscribe`` (Redis keyword forms
``subscribe(chan=handler)`` and ``subscribe(**{"chan": handler})`` included),
``ChemSub/UMNSub(topic, ...)``,
ZeroMQ ``setsockopt(zmq.SUBSCRIBE, b"topic")`` / ``setsockopt_string``, and handler
tables passed as ``handlers={"topic": fn}`` (event receivers; these only cover
publications, since the same shape also dispatches commands).  Event-emitter
listeners (``on``/``once``/``add_listener``) and events addressed to network peers
(Socket.IO's ``emit(ev, data, to=sid)``, ``on(ev, fn, namespace=...)``) likewise
only cover: whoever fires or receives them may live outside the tree.

A topic counts when it is a string (or bytes) literal, a module-level string
constant of the same file, a ``self.X`` constant of the same file, or a class
constant or Enum member of this file's classes (``Topics.X``, ``Signal.X.value``).
A constant of another module (``Topics.X`` imported, ``from names import CHANNEL``)
is kept as a *reference*, resolved through the index when the file is judged.
A subscription to ``""`` (everything) is a *catch-all*: it records, it never counts
as the consumer of a topic.
A topic built at run time from a literal head (``f"chem.{x}"``, ``"chem." + x``)
is not judged, but its head still counts as publishing or subscribing to
everything that starts with it, so it never makes another file's topic look
orphaned.  Subscriptions match by prefix, as ZeroMQ's do; a glob pattern
(``curiosity.*``) stands for its literal head.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from kloros_tasks.detectors.integration.scope import ModuleScope, dotted_name
from kloros_tasks.detectors.integration.topictext import (
    glob_head,
    is_topic,
    self_constants,
    topic_text,
    unwrap,
)

PUBLISH_METHODS = frozenset({"publish", "emit"})
SUBSCRIBE_METHODS = frozenset({"subscribe", "psubscribe", "ssubscribe"})
# Event-emitter listeners: the emitter's own code, often a library outside the tree,
# fires these events, so they cover publications but are not judged themselves.
EMITTER_METHODS = frozenset({"on", "once", "add_listener"})
SUBSCRIBER_CLASSES = frozenset({"ChemSub", "UMNSub"})
TOPIC_KEYWORDS = ("signal", "topic", "channel")
ZMQ_SENDS = frozenset({"send_multipart", "send_string"})
# Keywords of an event addressed to network peers (Socket.IO's ``emit(ev, data,
# to=sid)``, ``on(ev, handler, namespace="/chat")``): a protocol with clients
# outside the tree, not a topic of an in-tree bus.
PEER_KEYWORDS = frozenset({"to", "room", "sid", "skip_sid", "namespace", "callback",
                           "broadcast", "include_self"})
PUB_SOCKETS = frozenset({"PUB", "XPUB"})


@dataclass
class Topics:
    pubs: dict[str, list[int]] = field(default_factory=dict)
    subs: dict[str, list[int]] = field(default_factory=dict)
    # Literal heads of topics built at run time (and handler-table keys): they
    # cover other files' topics but are not judged.
    pub_heads: set[str] = field(default_factory=set)
    sub_heads: set[str] = field(default_factory=set)
    used_constants: set[str] = field(default_factory=set)  # names given as a topic
    # Constants of other modules given as a topic: qualified reference -> lines.
    pub_refs: dict[str, list[int]] = field(default_factory=dict)
    sub_refs: dict[str, list[int]] = field(default_factory=dict)
    catch_all: bool = False  # subscribes to everything ("", or a "*" handler)


class _Collector:
    """Records the topics of one file's calls."""

    def __init__(self, scope: ModuleScope, groups: dict[type, list[ast.AST]],
                 class_consts: dict[str, dict[str, str]]) -> None:
        self.scope = scope
        self.consts = scope.consts
        self.attrs = self_constants(groups)
        self.class_consts = class_consts
        assigns = groups.get(ast.Assign, ())
        self.lists = _list_names(assigns)
        self.locals = _single_names(groups)
        self.sockets = _socket_kinds(assigns)
        self.topics = Topics()

    def call(self, node: ast.Call) -> None:
        func = node.func
        method = func.attr if isinstance(func, ast.Attribute) else None
        callee = (dotted_name(func) or "").rpartition(".")[2]
        peer = any(k.arg in PEER_KEYWORDS for k in node.keywords)
        if method in PUBLISH_METHODS:
            self.record(_topic_args(node, True), node, sub=False, glob=False, judged=not peer)
        elif method in EMITTER_METHODS:
            self.record(_topic_args(node, True), node, sub=True, glob=True, judged=False)
        elif method in SUBSCRIBE_METHODS:
            self.record(_topic_args(node, False), node, sub=True, glob=True, judged=not peer)
            self.redis_keywords(node)
        elif method in ZMQ_SENDS and node.args and self.pub_socket(func):
            self.zmq_send(method, node)
        for keyword in node.keywords:
            if keyword.arg == "handlers" and isinstance(keyword.value, ast.Dict):
                self.handler_table(keyword.value)
        if callee in SUBSCRIBER_CLASSES:
            self.record(_topic_args(node, True), node, sub=True, glob=True)
        elif method in ("setsockopt", "setsockopt_string") and len(node.args) >= 2:
            option = dotted_name(node.args[0]) or ""
            if option.endswith("SUBSCRIBE") and not option.endswith("UNSUBSCRIBE"):
                self.record([node.args[1]], node, sub=True, glob=False)

    def pub_socket(self, func: ast.Attribute) -> bool:
        """False when the socket is made in this file as something else than PUB."""
        kind = self.sockets.get(dotted_name(func.value) or "")
        return kind is None or kind in PUB_SOCKETS

    def zmq_send(self, method: str, node: ast.Call) -> None:
        arg = unwrap(node.args[0])
        if method == "send_multipart":
            if isinstance(arg, ast.Name) and arg.id in self.lists:
                arg = self.lists[arg.id]
            if not isinstance(arg, (ast.List, ast.Tuple)) or not arg.elts:
                return
            self.record([arg.elts[0]], node, sub=False, glob=False)
            return
        literal, head = topic_text(arg, self.consts, self.attrs)
        text = literal if literal is not None else head
        if literal is not None or " " in head:  # "topic payload": the first word
            word = text.split(" ", 1)[0]
            if word and is_topic(word):
                self.topics.pubs.setdefault(word, []).append(node.lineno)
        elif head and is_topic(head):
            self.topics.pub_heads.add(head)

    def redis_keywords(self, node: ast.Call) -> None:
        """``subscribe(chan=handler)`` and ``subscribe(**{"chan": handler})``: only
        without positional arguments and with no literal value, since other
        ``subscribe`` methods take options as keywords (``subscribe(channel,
        handler=f)``, boto's ``subscribe(TopicArn=arn, Protocol="sqs")``)."""
        if node.args or any(isinstance(k.value, ast.Constant) for k in node.keywords):
            return
        for keyword in node.keywords:
            if keyword.arg is not None and keyword.arg not in TOPIC_KEYWORDS:
                self.add(keyword.arg, None, node, sub=True, glob=True)
            elif keyword.arg is None and isinstance(keyword.value, ast.Dict):
                for key in keyword.value.keys:
                    if key is not None:
                        self.record([key], node, sub=True, glob=True)

    def handler_table(self, table: ast.Dict) -> None:
        """``handlers={"task-sent": fn, "*": fn}``: an event receiver's table (celery's
        Receiver).  Such tables also dispatch commands, so they only cover
        publications and are not judged themselves."""
        for key in table.keys:
            literal = self.text(key)[0] if key is not None else None
            if literal is not None:
                head = glob_head(literal)
                if head and is_topic(head):
                    self.topics.sub_heads.add(head)
                self.topics.catch_all |= not head

    def record(self, args: list[ast.expr], node: ast.Call, sub: bool, glob: bool,
               judged: bool = True) -> None:
        """Record topics; ``judged=False`` keeps them as heads, which only cover."""
        for arg in args:
            ref = self.reference(arg)
            if ref is not None:
                if judged or sub:
                    refs = self.topics.sub_refs if sub else self.topics.pub_refs
                    refs.setdefault(ref, []).append(node.lineno)
                continue
            literal, head = self.text(arg)
            if not judged:
                literal, head = None, glob_head(literal) if literal is not None else head
            self.add(literal, head, node, sub, glob)

    def add(self, literal: str | None, head: str, node: ast.Call, sub: bool,
            glob: bool) -> None:
        exact = self.topics.subs if sub else self.topics.pubs
        heads = self.topics.sub_heads if sub else self.topics.pub_heads
        if literal is not None and glob:
            literal = glob_head(literal)  # a pattern subscribes to its literal head
        if literal is not None and (is_topic(literal) or (sub and not literal)):
            exact.setdefault(literal, []).append(node.lineno)
        elif literal is None and head and is_topic(head):
            heads.add(head)

    def text(self, expr: ast.expr) -> tuple[str | None, str]:
        expr = unwrap(expr)
        if isinstance(expr, ast.Name) and self.consts.get(expr.id):
            self.topics.used_constants.add(expr.id)
        if isinstance(expr, ast.Name) and not self.consts.get(expr.id) and expr.id in self.locals:
            return topic_text(self.locals[expr.id], self.consts, self.attrs)
        member = _member(expr)
        if member is not None and member[0] in self.class_consts:
            value = self.class_consts[member[0]].get(member[1])
            if value is not None:
                self.topics.used_constants.add(".".join(member))
                return value, ""
        return topic_text(expr, self.consts, self.attrs)

    def reference(self, expr: ast.expr) -> str | None:
        """Qualified name of a constant of another module given as a topic:
        ``Topics.X``/``Signal.X.value`` through an import, or an imported name."""
        expr = unwrap(expr)
        if isinstance(expr, ast.Name):
            kind, target = self.scope.binding(expr.id) if expr.id in self.scope.bindings \
                else ("", "")
            return target if kind == "alias" else None
        member = _member(expr)
        if member is None or member[0] in self.class_consts:
            return None
        dotted = dotted_name(_strip_value(expr)) or ""
        if dotted.partition(".")[0] in ("self", "cls"):
            return None
        kind = self.scope.binding(member[0])[0] if member[0] in self.scope.bindings else ""
        if kind not in ("alias", "module"):
            return None  # a local variable, a parameter, or a name bound otherwise
        return self.scope.ref_of(_strip_value(expr))


def _strip_value(expr: ast.expr) -> ast.expr:
    if isinstance(expr, ast.Attribute) and expr.attr == "value":
        return expr.value
    return expr


def _member(expr: ast.expr) -> tuple[str, str] | None:
    """("Topics", "X") for ``Topics.X`` or ``Topics.X.value``; also the last two parts
    of a longer chain (``names.Topics.X``)."""
    dotted = dotted_name(_strip_value(expr)) if isinstance(expr, ast.Attribute) else None
    if dotted is None or "." not in dotted:
        return None
    head, _, name = dotted.rpartition(".")
    return head, name


def _list_names(assigns: list[ast.Assign]) -> dict[str, ast.List | ast.Tuple]:
    """Local names bound once in the file to a list or tuple display
    (``msg = [topic, body]`` then ``sock.send_multipart(msg)``)."""
    seen: dict[str, ast.List | ast.Tuple | None] = {}
    for node in assigns:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            ok = isinstance(value, (ast.List, ast.Tuple)) and name not in seen
            seen[name] = value if ok else None
    return {k: v for k, v in seen.items() if v is not None}


def _single_names(groups: dict[type, list[ast.AST]]) -> dict[str, ast.expr]:
    """Names bound exactly once in the whole file, by a plain assignment, and never a
    parameter (``topic = "requests/math/" + func`` then ``client.publish(topic)``)."""
    stores: dict[str, int] = {}
    values: dict[str, ast.expr] = {}
    for node in groups.get(ast.Name, ()):
        if not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
    for node in groups.get(ast.arg, ()):
        stores[node.arg] = stores.get(node.arg, 0) + 2
    for node in groups.get(ast.Assign, ()):
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    return {k: v for k, v in values.items() if stores.get(k) == 1}


def _socket_kinds(assigns: list[ast.Assign]) -> dict[str, str]:
    """``x = ctx.socket(zmq.PUSH)``: the ZeroMQ socket type of names in this file."""
    out: dict[str, str] = {}
    for node in assigns:
        if not isinstance(node.value, ast.Call):
            continue
        call = node.value
        if (dotted_name(call.func) or "").rpartition(".")[2] not in ("socket", "Socket"):
            continue
        kinds = [dotted_name(a) or "" for a in call.args]
        kind = next((k.rpartition(".")[2] for k in kinds if k.startswith("zmq.")), None)
        for target in node.targets:
            name = dotted_name(target)
            if kind and name:
                out[name] = kind
    return out


def extract_topics(scope: ModuleScope, groups: dict[type, list[ast.AST]],
                   class_consts: dict[str, dict[str, str]]) -> Topics:
    """Topics of every publish/subscribe call among a file's nodes (``groups``: by
    class, ``_treecache.nodes_by_type``)."""
    collector = _Collector(scope, groups, class_consts)
    for node in groups.get(ast.Call, ()):
        collector.call(node)
    return collector.topics


def _topic_args(node: ast.Call, first_only: bool) -> list[ast.expr]:
    keyword = [k.value for k in node.keywords if k.arg in TOPIC_KEYWORDS]
    if keyword:
        return keyword[:1]
    positional = [a for a in node.args if not isinstance(a, ast.Starred)]
    return positional[:1] if first_only else positional
