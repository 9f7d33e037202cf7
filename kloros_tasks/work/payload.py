"""The file-change task payload: built by the producer, checked by the workers.

A payload names a change, not content: the watched root's name, the path relative to
it, the event, and the sha256 of the content, which travels separately as the blob
``kloros:blob:<sha256>``.  Deletions and files the producer refused to upload
(``skip`` says why) carry no digest.  JSON only.

A batch payload names up to BATCH_FILES changes of one root whose blobs hold at most
BATCH_BYTES together: ``{"v": 1, "root": ..., "changes": [{path, event, sha256, skip,
ts}, ...]}``.  Each entry is checked as a single change is; a malformed entry is
refused alone, a malformed batch as a whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

VERSION = 1
EVENTS = ("created", "modified", "deleted")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ROOT = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
MAX_PATH = 4096
# The bounds of one batch task: what the watcher packs into one, and what a worker
# holds in memory and under its root's lock at once; a task that claims the batch's
# Python files (work/claims.py) holds their facts for every file detector at once.
BATCH_FILES = 100
BATCH_BYTES = 512 * 1024
ENTRY_FIELDS = ("path", "event", "sha256", "skip", "ts")


class PayloadError(ValueError):
    """A task payload is malformed; such a task is refused, logged and acknowledged."""


@dataclass(frozen=True)
class Change:
    root: str
    path: str
    event: str
    sha256: str | None = None
    skip: str | None = None
    ts: float = 0.0
    v: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a clean relative POSIX path inside its root."""
    if not path or len(path) > MAX_PATH or "\x00" in path or "\\" in path:
        raise PayloadError(f"path {path!r} is empty, too long or has forbidden characters")
    p = PurePosixPath(path)
    if p.is_absolute() or any(part in ("..", ".", "") for part in path.split("/")):
        raise PayloadError(f"path {path!r} is outside its watched root")
    return str(p)


def decoded(obj: Any, what: str = "payload") -> Any:
    """``obj`` itself, or the JSON it holds when it is a str or bytes; PayloadError
    naming ``what`` when that is not JSON."""
    if not isinstance(obj, str | bytes):
        return obj
    try:
        return json.loads(obj)
    except ValueError as exc:
        raise PayloadError(f"{what} is not JSON: {exc}") from exc


def parse(obj: Any) -> Change:
    """Validate a decoded payload; raise PayloadError naming what is wrong."""
    if not isinstance(obj, dict):
        raise PayloadError(f"payload is {type(obj).__name__}, not an object")
    if obj.get("v", VERSION) != VERSION:
        raise PayloadError(f"payload version {obj.get('v')!r} is not {VERSION}")
    root, path, event = obj.get("root"), obj.get("path"), obj.get("event")
    if not isinstance(root, str) or not _ROOT.match(root):
        raise PayloadError(f"root {root!r} is not a watched root name")
    if not isinstance(path, str):
        raise PayloadError(f"path {path!r} is not a string")
    check_relpath(path)
    if event not in EVENTS:
        raise PayloadError(f"event {event!r} is not one of {EVENTS}")
    sha, skip = obj.get("sha256"), obj.get("skip")
    if event == "deleted" and sha is not None:
        raise PayloadError("a deletion carries no digest")
    if event != "deleted" and skip is None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise PayloadError(f"sha256 {sha!r} is not a hex digest")
    if skip is not None and not isinstance(skip, str):
        raise PayloadError("skip must be a string")
    ts = obj.get("ts", 0.0)
    if not isinstance(ts, int | float):
        raise PayloadError("ts must be a number")
    return Change(root=root, path=path, event=event, sha256=sha, skip=skip, ts=float(ts))


def parse_batch(obj: Any) -> tuple[str, list[Change | PayloadError]]:
    """Validate a decoded batch payload: (root, one Change or PayloadError per entry, in
    order).  Raise PayloadError when the batch itself is malformed."""
    if not isinstance(obj, dict):
        raise PayloadError(f"batch payload is {type(obj).__name__}, not an object")
    if obj.get("v", VERSION) != VERSION:
        raise PayloadError(f"batch payload version {obj.get('v')!r} is not {VERSION}")
    root, changes = obj.get("root"), obj.get("changes")
    if not isinstance(root, str) or not _ROOT.match(root):
        raise PayloadError(f"root {root!r} is not a watched root name")
    if not isinstance(changes, list) or not changes:
        raise PayloadError("changes is not a non-empty list")
    if len(changes) > BATCH_FILES:
        raise PayloadError(f"{len(changes)} changes in one batch (at most {BATCH_FILES})")
    extra = set(obj) - {"v", "root", "changes"}
    if extra:
        raise PayloadError(f"unknown batch fields {sorted(extra)}")
    return root, [_entry(root, entry) for entry in changes]


def _entry(root: str, entry: Any) -> Change | PayloadError:
    if not isinstance(entry, dict):
        return PayloadError(f"entry is {type(entry).__name__}, not an object")
    extra = set(entry) - set(ENTRY_FIELDS)
    if extra:
        return PayloadError(f"unknown entry fields {sorted(extra)}")
    try:
        return parse({**entry, "root": root})
    except PayloadError as exc:
        return exc


def batch_json(root: str, changes: list[Change]) -> dict[str, Any]:
    """The batch payload of ``changes`` (all of ``root``)."""
    return {"v": VERSION, "root": root,
            "changes": [{f: getattr(c, f) for f in ENTRY_FIELDS} for c in changes]}


def file_of(args) -> str | None:
    """"root:path" of a file task's arguments, when its payload names one."""
    payload = args[0] if len(args) == 1 else None
    if isinstance(payload, dict) and isinstance(payload.get("root"), str) \
            and isinstance(payload.get("path"), str):
        return f"{payload['root']}:{payload['path']}"
    return None
