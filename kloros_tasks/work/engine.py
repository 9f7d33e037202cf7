"""Apply one file change to a detector's index and work out which owners to re-evaluate.

Shared by the Celery tasks (RedisIndex) and ``kloros-tasks scan`` (MemoryIndex), so
the one-shot scan and the live pipeline ask exactly the same questions.  Also turns
raw bytes into source text, refusing binary and undecodable content with a reason.
"""

from __future__ import annotations

import codecs
import io
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kloros_tasks.detectors._kept import Kept
from kloros_tasks.detectors.base import FileDetector, FileFacts
from kloros_tasks.detectors.layout import (
    EXTENSION_SUFFIXES,
    PACKAGE_FILE,
    Layout,
    is_package_file,
    module_names,
    package_directories,
    using,
)
from kloros_tasks.questions import Question, in_root

DIGEST = "_sha256"  # the content digest a change was analysed from
NAMES = "_names"  # the module names a Python file's facts were extracted under
STAMP = "_ts"  # when the watcher sent the change the facts were analysed from
MODULE_SUFFIXES = (".py", *EXTENSION_SUFFIXES)
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
    """What one change did: owners to re-evaluate, or the parse error that kept old
    facts; ``stale`` lists files whose module names changed (an ``__init__.py``
    appeared or went) but could not be read again to re-extract them."""

    owners: frozenset[str]
    error: str | None = None
    skipped: str | None = None  # why the new facts were not indexed (too many)
    stale: frozenset[str] = frozenset()


Reread = Callable[[str], str | None]


def tree_layout(index, root_package: str = "", *, present: str | None = None,
                absent: str | None = None, paths: Iterable[str] = ()) -> Layout:
    """The package layout of the indexed tree: a directory is a package when its
    ``__init__.py`` is indexed (``present``/``absent`` override one file, the one a
    change is about to add or remove).

    The directories that name ``paths`` are looked up together, in one round trip;
    any other directory when it is first asked about."""
    known: dict[str, bool] = {}

    def look_up(directories: Iterable[str]) -> None:
        inits = {d: f"{d}/{PACKAGE_FILE}" if d else PACKAGE_FILE
                 for d in directories if d not in known}
        held = index.present_many(inits.values()) if inits else set()
        known.update((d, init in held) for d, init in inits.items())

    def is_package(directory: str) -> bool:
        init = f"{directory}/{PACKAGE_FILE}" if directory else PACKAGE_FILE
        if init == present:
            return True
        if init == absent:
            return False
        if directory not in known:
            look_up([directory])
        return known[directory]

    look_up(dict.fromkeys(d for p in paths for d in package_directories(p)))
    return Layout(is_package, root_package)


def package_prefix(root_path: str) -> str:
    """The dotted package name of a directory that is itself inside packages (the
    directories above it that hold an ``__init__.py``), "" when it is no package."""
    names, here = [], Path(root_path).resolve()
    while (here / PACKAGE_FILE).is_file() and here.parent != here:
        names.append(here.name)
        here = here.parent
    return ".".join(reversed(names))


def extract(detector: FileDetector, index, path: str, text: str,
            root_package: str = "") -> FileFacts:
    """``detector.extract`` with module names from the tree's current layout."""
    layout = tree_layout(index, root_package, present=path, paths=[path])
    with using(layout):
        facts = detector.extract(path, text)
    if path.endswith(MODULE_SUFFIXES) and (facts.relations or facts.data):
        # The names it was given, so a caller holding it can tell they still hold.
        facts = replace(facts, data={**facts.data, NAMES: list(module_names(path, layout))})
    return facts


def too_many_facts(facts: FileFacts, limit: int | None = None) -> str | None:
    """Why ``facts`` hold too many relation values to index, or None."""
    limit = MAX_FACTS if limit is None else limit
    count = sum(len(values) for values in facts.relations.values())
    if count <= limit:
        return None
    return f"too many facts ({count} relation values > {limit}); not indexed"


def apply_change(detector: FileDetector, index, path: str, text: str | None,
                 digest: str | None = None, facts: FileFacts | None = None, *,
                 root_package: str = "", reread: Reread | None = None,
                 stamp: float | None = None, readers: bool = True) -> Applied:
    """Store ``path``'s new facts (None text = the file is gone or unanalysable).

    A parse error keeps the previous facts: while someone types, the rest of the tree
    must not see the file's definitions vanish and come back.  A file with no previous
    facts that does not parse (a module in syntax this Python does not know) is stored
    with the detector's ``opaque(path, error)`` facts when it has that method: the
    module exists and binds names nobody can see, so its importers are not broken.

    ``facts`` may be extracted beforehand (outside a lock) with ``extract``; they are
    extracted again if the layout they were named by changed since.  ``stamp`` (when
    the change was sent) is stored with the facts, so a late older change can be told.
    When ``path`` is an ``__init__.py`` that appears or goes, the files below its
    directory change names: each is read again with ``reread`` and re-extracted.
    Without ``readers`` the owners are the changed files only, not the other files
    that read what changed: for a caller that will evaluate every file of the root.
    """
    def owners(touched) -> frozenset[str]:
        return frozenset({path} | (detector.affected(path, touched, index) if readers
                                   else set()))

    flips = is_package_file(path) and (not index.present_many([path])) != (text is None)
    if text is None:
        touched = index.update(path, None)
        applied = Applied(owners(touched))
        return _renamed(detector, index, path, applied, root_package, reread) if flips \
            else applied
    if facts is None or not _same_names(facts, index, path, root_package):
        facts = extract(detector, index, path, text, root_package)
    error = facts.error
    if error:
        indexed = bool(index.present_many([path]))
        opaque = None if indexed else _opaque(detector, index, path, error, root_package)
        if opaque is None:
            return Applied(frozenset() if indexed else frozenset({path}), error)
        facts = opaque  # never parsed here (newer syntax, say): it exists, names unknown
    skipped = too_many_facts(facts)
    if skipped is not None:  # retract what it had, as for a file grown past the size cap
        touched = index.update(path, None)
        return Applied(owners(touched), skipped=skipped)
    if digest is not None:
        facts = replace(facts, data={**facts.data, DIGEST: digest})
    if stamp:
        facts = replace(facts, data={**facts.data, STAMP: stamp})
    touched = index.update(path, facts)
    applied = Applied(owners(touched), error)
    return _renamed(detector, index, path, applied, root_package, reread) if flips else applied


def _opaque(detector: FileDetector, index, path: str, error: str,
            root_package: str) -> FileFacts | None:
    """The detector's facts for a file that exists but cannot be parsed, if it has any
    (``opaque(path, error)``, optional)."""
    make = getattr(detector, "opaque", None)
    if make is None:
        return None
    with using(tree_layout(index, root_package, present=path, paths=[path])):
        return make(path, error)


def _same_names(facts: FileFacts, index, path: str, root_package: str) -> bool:
    """Whether facts extracted earlier were named by the layout the index has now."""
    if not path.endswith(MODULE_SUFFIXES):
        return True  # a document or a declaration file has no module name
    named = facts.data.get(NAMES)
    if named is None:
        return False  # not extracted by ``extract`` (or did not parse): name it now
    return tuple(named) == module_names(
        path, tree_layout(index, root_package, present=path, paths=[path]))


def _renamed(detector: FileDetector, index, init: str, applied: Applied,
             root_package: str, reread: Reread | None) -> Applied:
    """Re-extract the indexed modules below ``init``'s directory: their names changed."""
    directory = init.rpartition("/")[0]
    below = [p for p in index.paths() if p != init and p.endswith(MODULE_SUFFIXES)
             and (not directory or p.startswith(directory + "/"))]
    owners, stale = set(applied.owners), set()
    for path in below:
        text = reread(path) if reread is not None else None
        if text is None:
            stale.add(path)
            continue
        digest = stored_digest(index, path)
        facts = extract(detector, index, path, text, root_package)
        if facts.error:
            continue  # keeps its previous facts, like any half-typed save
        if digest is not None:
            facts = replace(facts, data={**facts.data, DIGEST: digest})
        touched = index.update(path, facts)
        owners |= {path} | detector.affected(path, touched, index)
    return Applied(frozenset(owners), applied.error, stale=frozenset(stale))


def evaluate(detector: FileDetector, index, owners, root: str,
             root_package: str = "", view: Kept | None = None) -> dict[str, list[Question]]:
    """Every question each owner of ``root`` has now (an empty list resolves what it had).

    The owners' facts and the layout that names them are read up front, a round trip
    each; what the evaluations read is kept for the others (``detectors._kept``: the
    index does not change while they run, the caller holds the root's lock or is the
    only writer).  ``view``: a Kept view of ``index`` that served earlier batches
    under the same hold of the lock, whose answers still hold (the owners' facts are
    dropped from it after this batch).  A detector with
    ``evaluate_many(owners, view)`` evaluates them together, sharing what its lookups
    learn (integration); the others one owner at a time."""
    owners = sorted(owners)
    view = Kept(index) if view is None else view
    view.owners(owners)
    many = getattr(detector, "evaluate_many", None)
    with using(tree_layout(index, root_package, paths=owners)):
        found = (many(owners, view) if many is not None
                 else {owner: detector.evaluate(owner, view) for owner in owners})
        view.forget_owners()
        return {owner: [in_root(q, root) for q in found[owner]] for owner in owners}


def sent_later(facts: FileFacts | None, ts: float) -> bool:
    """Whether ``facts`` come from a change sent after ``ts``: a change sent at ``ts``
    and delivered only now (a redelivery, a retried batch) must not undo it."""
    stamp = facts.data.get(STAMP) if facts is not None else None
    return isinstance(stamp, int | float) and ts < stamp


def stored_digest(index, path: str) -> str | None:
    facts: FileFacts | None = index.facts(path)
    return None if facts is None else facts.data.get(DIGEST)
