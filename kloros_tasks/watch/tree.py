"""Walking and reading a watched tree safely: no symlink is ever followed, excluded
directories are pruned, a FIFO swapped in after the stat never blocks a read.

Shared by the producer's reconciliation and ``kloros-tasks scan``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator

from kloros_tasks.watch import filters

log = logging.getLogger(__name__)


def read_file(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; never follows a symlink and never
    blocks on a FIFO swapped in after the lstat."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return f.read(limit)


def walk_tree(root_path: str, exclude: Iterable[str] = (),
              start: str = "") -> Iterator[tuple[str, tuple[int, int]]]:
    """(relpath, (mtime_ns, size)) of every routed regular file under ``start``,
    pruning excluded directories and never following a symlink."""
    exclude = tuple(exclude)
    stack = [start]
    while stack:
        reldir = stack.pop()
        try:
            with os.scandir(os.path.join(root_path, reldir)) as it:
                entries = list(it)
        except OSError as exc:
            log.debug("cannot list %s/%s: %s", root_path, reldir, exc)
            continue
        for entry in entries:
            rel = f"{reldir}/{entry.name}" if reldir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not filters.dir_is_excluded(rel, exclude):
                        stack.append(rel)
                elif entry.is_file(follow_symlinks=False) and filters.should_enqueue(
                        rel, exclude):
                    st = entry.stat(follow_symlinks=False)
                    yield rel, (st.st_mtime_ns, st.st_size)
            except OSError:
                continue  # vanished while we looked; its own event follows
