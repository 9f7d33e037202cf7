"""``orphaned_channel``, and Redis lists nobody reads (an ``orphaned_queue`` form).

A publication is consumed only by a subscription that names its topic or a prefix
of it narrower than everything; a catch-all subscription (``""``) records every
topic and consumes none, so it is named in the evidence, never counted.
Topics of test and example code cover the rest of the tree but are not judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kloros_tasks.detectors._pyast import is_test_path
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.detectors.integration.keys import (
    CATCH_ALL,
    DECLARED,
    DECLARED_PREFIX,
    LIST_HEAD,
    LIST_READ,
    PUBLISHED,
    PUBLISHED_DYN,
    SUB_REF,
    SUBSCRIBED,
    WRAPPER,
    text_prefixes,
)
from kloros_tasks.detectors.integration.resolve import Resolver
from kloros_tasks.questions import Question

ORPHANED_QUEUE = "orphaned_queue"
ORPHANED_CHANNEL = "orphaned_channel"
CATCH_ALL_NAMED = 2  # catch-all subscribers named in the evidence

Make = Callable[..., Question]
# Example and documentation code talks to things outside the tree on purpose.
EXAMPLE_DIRS = frozenset({"examples", "example", "demo", "demos", "docs", "doc", "samples"})


def is_test_or_example(path: str) -> bool:
    """Test code (tests/ directories, test_*.py, conftest.py) or example code."""
    return is_test_path(path) or bool(EXAMPLE_DIRS.intersection(path.split("/")[:-1]))


def _subscribed(resolver: Resolver, topic: str, declared: bool = True) -> bool:
    """Some subscription names ``topic`` or a non-empty prefix of it (or, with
    ``declared``, a constant somewhere names one: it may be subscribed through it)."""
    return any(resolver.exists(SUBSCRIBED + p) or (declared and resolver.exists(DECLARED + p))
               for p in text_prefixes(topic)[1:])


def _published(resolver: Resolver, topic: str) -> bool:
    return (resolver.exists(PUBLISHED + topic) or resolver.exists(DECLARED_PREFIX + topic)
            or any(resolver.exists(PUBLISHED_DYN + p) for p in text_prefixes(topic)))


def _through_wrappers(facts: FileFacts, resolver: Resolver, path: str
                      ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Publications and subscriptions made by calling an in-tree wrapper with a
    literal topic: topic -> evidence."""
    pubs: dict[str, list[str]] = {}
    subs: dict[str, list[str]] = {}
    for name, calls in sorted(facts.data.get("wcalls", {}).items()):
        for holder, content in resolver.contributions(WRAPPER + name):
            for wrapper in content["w"]:
                for position, keyword, topic, line, given in calls:
                    if position != wrapper["i"] and keyword != wrapper["p"]:
                        continue
                    if given < wrapper["n"]:
                        continue  # too few arguments: a method of the same name elsewhere
                    verb = "publishes" if wrapper["d"] == "pub" else "subscribes to"
                    side = pubs if wrapper["d"] == "pub" else subs
                    side.setdefault(topic, []).append(
                        f"{path}:{line} calls {name}() with {topic!r}, which {verb} its "
                        f"argument {wrapper['p']!r} ({holder})")
    return pubs, subs


def orphaned_channels(path: str, facts: FileFacts, resolver: Resolver,
                      make: Make) -> list[Question]:
    """Publications nobody consumes and subscriptions nobody feeds, of one file.
    Test and example code publishes to brokers and fakes outside the tree on purpose:
    its topics count for the rest of the tree but are not judged."""
    if is_test_or_example(path):
        return []
    pubs: dict[str, list[str]] = {
        t: [f"{path}:{line} publishes {t!r}" for line in lines]
        for t, lines in facts.data.get("pubs", {}).items()}
    subs: dict[str, list[str]] = {
        t: [f"{path}:{line} subscribes to {t!r}" for line in lines]
        for t, lines in facts.data.get("subs", {}).items()}
    wrapped_pubs, wrapped_subs = _through_wrappers(facts, resolver, path)
    for side, extra in ((pubs, wrapped_pubs), (subs, wrapped_subs)):
        for topic, evidence in extra.items():
            side.setdefault(topic, []).extend(evidence)
    orphans = {t: e for t, e in pubs.items() if not _subscribed(resolver, t)}
    for ref, lines in facts.data.get("prefs", {}).items():
        found = resolver.constant(ref)
        if found is None:
            continue
        topic, canonical = found
        if _subscribed(resolver, topic, declared=False) or resolver.exists(SUB_REF + ref) \
                or resolver.exists(SUB_REF + canonical):
            continue
        orphans.setdefault(topic, []).extend(
            f"{path}:{line} publishes {ref} ({topic!r})" for line in lines)
    out = [_publish_question(path, topic, evidence, resolver, make)
           for topic, evidence in sorted(orphans.items())]
    for topic, evidence in sorted(subs.items()):
        # ``$SYS/...``: MQTT brokers publish ``$`` topics themselves.
        if not topic.startswith("$") and not _published(resolver, topic):
            out.append(make(
                ORPHANED_CHANNEL, f"{path}|subscribe|{topic}",
                f"ORPHANED_CHANNEL: subscribe {topic!r}",
                f"{path} subscribes to {topic!r} but nothing in the tree publishes a topic "
                "starting with it; is a producer missing?",
                evidence, "medium", 0.6,
                f"Publish {topic!r} where it is produced, or drop the subscription.",
                {"topic": topic, "direction": "subscribe"}))
    return out


def _publish_question(path: str, topic: str, evidence: list[str], resolver: Resolver,
                      make: Make) -> Question:
    recorders = [p for p in resolver.who(CATCH_ALL) if p != path][:CATCH_ALL_NAMED]
    evidence = list(evidence) + [
        f"{p} subscribes to every topic (a catch-all): it records {topic!r} but does not "
        "consume it" for p in recorders]
    extra: dict[str, Any] = {"topic": topic, "direction": "publish"}
    if recorders:
        extra["catch_all"] = recorders
    tail = f", except the catch-all of {recorders[0]}" if recorders else ""
    return make(
        ORPHANED_CHANNEL, f"{path}|publish|{topic}", f"ORPHANED_CHANNEL: publish {topic!r}",
        f"{path} publishes {topic!r} but nothing in the tree subscribes to it "
        f"(or to a prefix of it){tail}; is a consumer missing?",
        evidence, "medium", 0.6,
        f"Subscribe to {topic!r} where it is handled, or stop publishing it.", extra)


def orphaned_lists(path: str, facts: FileFacts, resolver: Resolver,
                   make: Make) -> list[Question]:
    """Redis lists this file pushes to that nothing in the tree reads.  Tests of a
    Redis client push lists to read them with other commands (``sort``, ``object``):
    in test and example code they are not judged."""
    if is_test_or_example(path):
        return []
    out = []
    for key, lines in sorted(facts.data.get("lpush", {}).items()):
        if (resolver.exists(LIST_READ + key) or resolver.exists(DECLARED + key)
                or any(resolver.exists(LIST_HEAD + p) for p in text_prefixes(key)[1:])):
            continue
        out.append(make(
            ORPHANED_QUEUE, f"{path}|redis|{key}", f"ORPHANED_QUEUE: redis list {key!r}",
            f"{path} pushes onto the Redis list {key!r} but nothing in the tree pops or "
            "reads it; is a consumer missing?",
            [f"{path}:{line} pushes onto {key!r}" for line in lines], "medium", 0.6,
            f"Pop {key!r} where the work is done, or stop pushing it.",
            {"key": key, "kind": "redis list"}))
    return out
