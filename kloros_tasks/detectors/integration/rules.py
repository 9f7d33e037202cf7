"""The four IntegrationMonitor rules, evaluated for the questions one file owns.

``broken_import``    an import the tree itself proves must fail.
``missing_wiring``   ``self.X`` read in a class whose in-tree lineage never gives X.
``orphaned_queue``   a container attribute that is filled and never read.
``orphaned_channel`` a literal topic with no subscriber, or a subscription with
                     no publisher (prefix matching, as ZeroMQ).

Subjects name the problem (file, symbol, topic), never a line or a count, so a
question keeps its id while the code around it moves.
"""

from __future__ import annotations

import re
from typing import Any

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.detectors.integration.channels import (
    ORPHANED_CHANNEL,
    ORPHANED_QUEUE,
    is_test_or_example,
    orphaned_channels,
    orphaned_lists,
)
from kloros_tasks.detectors.integration.keys import ATTR, REL_READ, SYM, WRITTEN
from kloros_tasks.detectors.integration.resolve import ClassNode, Resolver
from kloros_tasks.questions import Question

DETECTOR = names.INTEGRATION
BROKEN_IMPORT = "broken_import"
MISSING_WIRING = "missing_wiring"
RULES = (BROKEN_IMPORT, MISSING_WIRING, ORPHANED_QUEUE, ORPHANED_CHANNEL)
# A container that is not a queue type is a queue only when its name says so.
QUEUE_NAME = re.compile(r"(?i)queue|(^|_)q$|inbox|outbox|mailbox|backlog|pending")
TEST_CODE = "In test or example code (it may be incomplete on purpose): "


def evaluate_file(path: str, facts: FileFacts, resolver: Resolver) -> list[Question]:
    """Every question ``path`` owns, given its facts and a view of the tree."""
    resolver.prefetch(facts.relations.get(REL_READ, ()))
    questions = broken_imports(path, facts, resolver)
    for qn, own in sorted(facts.data.get("classes", {}).items()):
        summary = facts.data["c"].get(SYM + qn)
        if summary is not None:
            node = ClassNode(path, summary)
            questions += missing_wiring(node, own, resolver)
            questions += orphaned_queues(node, own, resolver)

    def make(rule: str, subject: str, hypothesis: str, text: str, evidence: list[str],
             severity: str, confidence: float, suggestion: str,
             extra: dict[str, Any]) -> Question:
        return _question(rule, subject, path, hypothesis, text, evidence, severity=severity,
                         confidence=confidence, suggestion=suggestion, extra=extra)

    questions += orphaned_channels(path, facts, resolver, make)
    questions += orphaned_lists(path, facts, resolver, make)
    return sorted(questions, key=lambda q: q.id)


def _question(rule: str, subject: str, owner: str, hypothesis: str, text: str,
              evidence: list[str], **kwargs: Any) -> Question:
    """A question; in test or example code it says so and is asked at low severity,
    since fixtures and examples are often incomplete or broken on purpose."""
    if is_test_or_example(owner):
        text = TEST_CODE + text
        kwargs["severity"] = "low"
        kwargs["confidence"] = round(kwargs.get("confidence", 0.5) / 2, 2)
        kwargs["extra"] = {**kwargs.get("extra", {}), "test_code": True}
    return Question(detector=DETECTOR, rule=rule, subject=subject, owner=owner,
                    hypothesis=hypothesis, question=text, evidence=tuple(evidence), **kwargs)


# --- broken_import ---------------------------------------------------------------------
def broken_imports(path: str, facts: FileFacts, resolver: Resolver) -> list[Question]:
    failures: dict[tuple[str, str], list[int]] = {}
    for parts, line in facts.data.get("imports", []):
        own = (facts.data.get("mods") or [""])[0]
        broken = resolver.broken_import(parts, facts.data.get("root", ""), own)
        if broken is not None:
            failures.setdefault(broken, []).append(line)
    out = []
    for (module, name), lines in sorted(failures.items()):
        symbol = f"{module}.{name}"
        out.append(_question(
            BROKEN_IMPORT, f"{path}|{symbol}", path, f"BROKEN_IMPORT: {symbol}",
            f"{path} imports {symbol}, but module {module} defines, imports or re-exports "
            f"no {name!r} and has no submodule of that name; is this import broken?",
            [f"{path}:{line} imports {symbol}" for line in sorted(set(lines))],
            severity="high", confidence=0.9,
            suggestion=f"Define or re-export {name} in {module}, or fix the import.",
            extra={"module": module, "name": name},
        ))
    return out


# --- missing_wiring ----------------------------------------------------------------------
def missing_wiring(node: ClassNode, own: dict[str, Any], resolver: Resolver) -> list[Question]:
    lineage = resolver.lineage(node)
    if lineage.unknown or not lineage.stateful or any(
            n.summary["ga"] or n.summary["sd"] for n in lineage.nodes):
        return []  # an unknown ancestor, a stateless mixin, or dynamic attributes
    guarded = set(own["guarded"])
    missing = [a for a in own["uses"] if a not in guarded and not lineage.defines(a)
               and not resolver.exists(WRITTEN + a)]  # obj.a = ... elsewhere may wire it
    if not missing:
        return []
    missing = _not_given_by_subclasses(node, missing, resolver)
    cls = node.summary["local"]
    out = []
    for attr in missing:
        out.append(_question(
            MISSING_WIRING, f"{node.qn}.{attr}", node.path, f"MISSING_WIRING: {cls}.{attr}",
            f"{cls} uses self.{attr}, but nothing assigns it in {cls}, its in-tree bases "
            f"or subclasses; is {attr} ever wired?",
            [f"{node.path}:{line} reads self.{attr}" for line in own["uses"][attr]],
            severity="medium", confidence=0.7,
            suggestion=f"Assign self.{attr} (for instance in __init__) or declare it on the class.",
            extra={"class": node.qn, "attribute": attr},
        ))
    return out


def _not_given_by_subclasses(node: ClassNode, missing: list[str],
                             resolver: Resolver) -> list[str]:
    """Drop attributes some in-tree subclass provides (the template-method pattern);
    a subclass that cannot be fully followed may provide anything."""
    if node.summary.get("esc"):
        return []  # picked as a base at run time: its subclasses are not all visible
    remaining = list(missing)
    for sub in resolver.descendants(node):
        lineage = resolver.lineage(sub)
        if lineage.unknown or any(n.summary["ga"] or n.summary["sd"] for n in lineage.nodes):
            return []
        remaining = [a for a in remaining if not lineage.defines(a)]
        if not remaining:
            break
    return remaining


# --- orphaned_queue ------------------------------------------------------------------------
def orphaned_queues(node: ClassNode, own: dict[str, Any], resolver: Resolver) -> list[Question]:
    queues = set(own.get("queues", []))
    created = [a for a in own["creates"] if a in node.summary["fills"]
               and (a in queues or QUEUE_NAME.search(a))]
    if not created:
        return []
    lineage = resolver.lineage(node)
    ancestors = lineage.nodes[1:]
    family = _family(node, resolver)
    if family is None:
        return []  # some member is not fully known: it may read the container
    out = []
    for attr in created:
        if any(attr in a.summary["creates"] for a in ancestors):
            continue  # the ancestor that creates it owns the question
        fillers = [m for m in family if attr in m.summary["fills"]]
        if not fillers or any(attr in m.summary["reads"] for m in family):
            continue
        if resolver.exists(ATTR + attr):
            continue  # read as obj.<attr> somewhere: it may be consumed from outside
        out.append(_queue_question(node, own, attr, fillers))
    return out


def _family(node: ClassNode, resolver: Resolver) -> list[ClassNode] | None:
    """Every class that shares instances with ``node``: its lineage, its subclasses
    and theirs; None when one of them is not fully known or reads reflectively."""
    members: dict[tuple[str, str], ClassNode] = {}
    if node.summary.get("esc"):
        return None
    for cls in [node, *resolver.descendants(node)]:
        lineage = resolver.lineage(cls)
        if lineage.opaque:  # a base outside the tree is judged by the class's own code
            return None
        for member in lineage.nodes:
            members.setdefault(member.key, member)
    if any(m.summary["ra"] for m in members.values()):
        return None
    return [members[k] for k in sorted(members)]


def _queue_question(node: ClassNode, own: dict[str, Any], attr: str,
                    fillers: list[ClassNode]) -> Question:
    cls = node.summary["local"]
    evidence = [f"{node.path}:{own['creates'][attr]} creates self.{attr}"]
    evidence += [f"{node.path}:{line} fills self.{attr}" for line in own["fills"].get(attr, [])]
    evidence += [f"{m.path}: {m.qn} fills self.{attr}" for m in fillers if m.path != node.path]
    return _question(
        ORPHANED_QUEUE, f"{node.qn}.{attr}", node.path, f"ORPHANED_QUEUE: {cls}.{attr}",
        f"Data structure {attr!r} is populated by {cls} but never consumed; "
        "is this a broken integration?",
        evidence, severity="medium", confidence=0.7,
        suggestion=f"Consume self.{attr} (pop/get/iterate) or stop filling it.",
        extra={"class": node.qn, "attribute": attr},
    )
