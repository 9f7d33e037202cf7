"""Which detectors a file is routed to, by its name alone (no exclusion rules).

Ground: the watcher routes changes with it, and the snapshot uses it to tell which
detectors must confirm a file's digest.  The table itself is ``names.FILE_DETECTOR_SUFFIXES``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from kloros_tasks import names


def is_suffix_entry(entry: str) -> bool:
    """A routing entry is a suffix when it starts with "." and has no other "."."""
    return entry.startswith(".") and "." not in entry[1:]


def route(relpath: str, table: Mapping[str, Iterable[str]] | None = None) -> set[str]:
    """Detectors whose routing entries match the file's name; no exclusion rules applied."""
    table = names.FILE_DETECTOR_SUFFIXES if table is None else table
    base = posixpath.basename(relpath)
    suffix = posixpath.splitext(base)[1]
    wanted = set()
    for detector, entries in table.items():
        for entry in entries:
            hit = entry == suffix if is_suffix_entry(entry) else fnmatchcase(base, entry)
            if hit:
                wanted.add(detector)
                break
    return wanted
