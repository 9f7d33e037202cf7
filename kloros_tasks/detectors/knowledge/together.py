"""KnowledgeDiscovery's evaluations of many files at once (``evaluate_many``: a
settle's 200 owners, a batch's affected files).

Each file's evaluation starts with lookups of its own: a module whether the docs
declare its undocumented names and which policy governs it, a document what links to
it, which docs project builds it and what its references name.  One at a time
that is a round trip or five per file; here they are made for all the files first,
one round trip per relation, and kept, so each evaluation finds its answers.  The
answers are those the index gives while the caller holds the root's lock: the same
the evaluations would have got one by one.
"""

from __future__ import annotations

from collections.abc import Iterable

from kloros_tasks.detectors._kept import Kept, kept
from kloros_tasks.detectors.base import IndexView
from kloros_tasks.detectors.knowledge.docfacts import (
    GLOB_DIR,
    ancestors,
    package_init,
    reference_keys,
)
from kloros_tasks.detectors.knowledge.docstrings import (
    DOCS_PROJECT,
    POLICY,
    SPHINX_TXT,
    qualified,
)


def prefetched(paths: Iterable[str], view: IndexView) -> Kept:
    """``view`` kept, with the first lookups of each file's evaluation made already."""
    view = kept(view)
    found = view.owners(paths)
    declared, governed, tops, dotted, path_keys = set(), set(), set(), set(), set()
    docs, above_docs, above_txt = set(), set(), set()
    for path, facts in found.items():
        kind = facts.data.get("kind") if facts is not None else None
        if kind == "py" and facts.data.get("missing"):
            declared.update(qualified(facts.data.get("module"), facts.data["missing"]))
            governed.update(ancestors(path))  # the policies that may govern it
        elif kind == "doc":
            if not (facts.data.get("root") or facts.data.get("orphan")):  # _unindexed
                docs.add(path)
                above_docs.update(ancestors(path))
                path_keys.add(f"path:{package_init(path)}")
                if path.endswith(".txt"):
                    above_txt.update(ancestors(path))
            if facts.data.get("refs"):  # _stale
                more_tops, more_dotted, more_paths = reference_keys(facts.data["refs"])
                tops |= more_tops
                dotted.update(more_dotted)
                path_keys.update(more_paths)
    for relation, values in (("top", tops), (SPHINX_TXT, above_txt),
                             (DOCS_PROJECT, above_docs), ("declared", declared)):
        if values:
            view.exists_many(relation, sorted(values))
    for relation, values in (("defines", dotted | path_keys), ("declared", dotted),
                             ("opaque", dotted), ("open", dotted), ("links", docs),
                             (GLOB_DIR, above_docs), (POLICY, governed)):
        if values:
            view.who_many(relation, sorted(values))
    return view
