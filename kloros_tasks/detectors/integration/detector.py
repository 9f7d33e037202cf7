"""IntegrationMonitor: cross-file wiring questions about Python code.

Four rules (see integration_rules): ``broken_import``, ``missing_wiring``,
``orphaned_queue`` and ``orphaned_channel``.  The detector is pure: ``extract``
turns one file's text into facts, ``affected`` says which other files a change
of facts can concern, and ``evaluate`` computes the questions one file owns,
reading the rest of the tree only through an ``IndexView``.
"""

from __future__ import annotations

from collections.abc import Iterable

from kloros_tasks import names
from kloros_tasks.detectors._kept import shared
from kloros_tasks.detectors.base import FileFacts, IndexView, Touched
from kloros_tasks.detectors.integration.deps import affected as _affected
from kloros_tasks.detectors.integration.facts import FACTS_VERSION, extract_facts, opaque_facts
from kloros_tasks.detectors.integration.keys import (
    EXTENSION_SUFFIXES,
    REL_READ,
    SYM,
    dotted_prefixes,
)
from kloros_tasks.detectors.integration.resolve import Resolver
from kloros_tasks.detectors.integration.rules import RULES, evaluate_file
from kloros_tasks.questions import Question

__all__ = ["IntegrationDetector", "RULES"]


class IntegrationDetector:
    """The IntegrationMonitor's FileDetector, for ``.py`` files."""

    name = names.INTEGRATION
    suffixes = (".py",)
    # Compiled modules may be routed here too, with empty text: they only say
    # "this module exists" (so ``from pkg import _speedups`` is not judged broken).
    extension_suffixes = EXTENSION_SUFFIXES

    def extract(self, path: str, text: str) -> FileFacts:
        """Facts of one file; ``FileFacts(error="line N: ...")`` if it does not
        parse (never raises for bad input, deep nesting included)."""
        return extract_facts(path, text)

    def opaque(self, path: str, error: str) -> FileFacts | None:
        """Facts of a module that never parsed here: it exists, its names are unknown,
        so its importers are not "broken" (the engine stores these only when the file
        has no previous facts)."""
        return opaque_facts(path) if path.endswith(".py") else None

    def affected(self, path: str, touched: Touched, view: IndexView) -> set[str]:
        """Other files whose questions may change now that ``path``'s facts
        changed by ``touched`` (the index already holds the new facts)."""
        return _affected(path, touched, view)

    def evaluate(self, path: str, view: IndexView) -> list[Question]:
        """Every question ``path`` owns now; empty when it is not indexed (or was
        indexed by an incompatible version of this detector)."""
        facts = view.facts(path)
        if facts is None or facts.data.get("v") != FACTS_VERSION:
            return []
        return evaluate_file(path, facts, Resolver(view))

    def evaluate_many(self, paths: Iterable[str], view: IndexView) -> dict[str, list[Question]]:
        """``evaluate`` of each of ``paths`` over one view that does not change meanwhile:
        the keys they all read are looked up together, and what one file's evaluation
        learnt of the tree (holders, existence, class lineages) serves the next."""
        paths = list(paths)
        current = {}
        for path in paths:
            facts = view.facts(path)
            if facts is not None and facts.data.get("v") == FACTS_VERSION:
                current[path] = facts
        # Kept with a view that serves several batches (a settle's), with what it learnt.
        resolver = shared(view, "integration resolver", Resolver)
        resolver.prefetch(dict.fromkeys(
            key for facts in current.values() for key in facts.relations.get(REL_READ, ())))
        # Every import names modules whose files' contributions it is judged by: read
        # each such file once for all of them, not once per importer.
        resolver.prefetch_contributions(
            SYM + prefix for facts in current.values()
            for parts, _ in facts.data.get("imports", ())
            for prefix in dotted_prefixes(".".join(parts)))
        out = {}
        for path in paths:
            facts = current.get(path)
            out[path] = [] if facts is None else evaluate_file(path, facts, resolver)
            resolver.forget_facts()  # other files' facts: the view keeps the common ones
        return out
