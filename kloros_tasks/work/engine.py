"""Apply one file change to a detector's index and work out which owners to re-evaluate.

Shared by the Celery tasks (RedisIndex) and ``kloros-tasks scan`` (MemoryIndex), so
the one-shot scan and the live pipeline ask exactly the same questions.  Also turns
raw bytes into source text, refusing binary and undecodable content with a reason.
"""

from __future__ import annotations

import codecs
import io
import tokenize
from dataclasses import dataclass, replace

from kloros_tasks.detectors.base import FileDetector, FileFacts
from kloros_tasks.questions import Question, in_root

# Relation values one file may put in the index (each one an entry of an inverted
# index, so an operation of every update and lookup of the file).  A file past it (a
# generated page of 90,000 links, say) is not indexed and its reason is recorded like
# an oversized file's: a giant fact costs the workers and Redis far more than the file
# can be worth to a question.  Per-file data is stored compressed and not inverted;
# the file size cap bounds it.
MAX_FACTS = 25_000


class NotText(ValueError):
    """The bytes are not analysable text; the message says why."""


def decode_source(path: str, raw: bytes) -> str:
    """Text of a file, honouring a Python encoding cookie; NotText for binary content."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise NotText(f"binary content (NUL byte at offset {nul})")
    encoding = "utf-8-sig"
    if path.endswith(".py"):
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        except SyntaxError as exc:
            if "unknown encoding" in str(exc):
                raise NotText(f"bad encoding declaration: {exc}") from exc
            # No usable cookie and not UTF-8: let the decode below say where it breaks.
            encoding = "utf-8"
    try:
        codecs.lookup(encoding)
        return raw.decode(encoding)
    except LookupError as exc:
        raise NotText(f"unknown encoding {encoding!r}") from exc
    except UnicodeDecodeError as exc:
        raise NotText(f"undecodable bytes for {exc.encoding} at offset {exc.start}") from exc


@dataclass(frozen=True)
class Applied:
    """What one change did: owners to re-evaluate, or the parse error that kept old facts."""

    owners: frozenset[str]
    error: str | None = None
    skipped: str | None = None  # why the new facts were not indexed (too many)


def too_many_facts(facts: FileFacts, limit: int | None = None) -> str | None:
    """Why ``facts`` hold too many relation values to index, or None."""
    limit = MAX_FACTS if limit is None else limit
    count = sum(len(values) for values in facts.relations.values())
    if count <= limit:
        return None
    return f"too many facts ({count} relation values > {limit}); not indexed"


def apply_change(detector: FileDetector, index, path: str, text: str | None,
                 digest: str | None = None, facts: FileFacts | None = None) -> Applied:
    """Store ``path``'s new facts (None text = the file is gone or unanalysable).

    A parse error keeps the previous facts: while someone types, the rest of the tree
    must not see the file's definitions vanish and come back.
    """
    if text is None:
        touched = index.update(path, None)
        return Applied(frozenset({path} | detector.affected(path, touched, index)))
    if facts is None:
        facts = detector.extract(path, text)
    if facts.error:
        return Applied(frozenset({path}) if index.facts(path) is None else frozenset(),
                       facts.error)
    skipped = too_many_facts(facts)
    if skipped is not None:  # retract what it had, as for a file grown past the size cap
        touched = index.update(path, None)
        return Applied(frozenset({path} | detector.affected(path, touched, index)),
                       skipped=skipped)
    if digest is not None:
        facts = replace(facts, data={**facts.data, "_sha256": digest})
    touched = index.update(path, facts)
    return Applied(frozenset({path} | detector.affected(path, touched, index)))


def evaluate(detector: FileDetector, index, owners, root: str) -> dict[str, list[Question]]:
    """Every question each owner of ``root`` has now (an empty list resolves what it had)."""
    return {owner: [in_root(q, root) for q in detector.evaluate(owner, index)]
            for owner in sorted(owners)}


def stored_digest(index, path: str) -> str | None:
    facts: FileFacts | None = index.facts(path)
    return None if facts is None else facts.data.get("_sha256")
