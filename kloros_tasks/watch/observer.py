"""watchdog's observer, plus a report of inotify queue overflows.

On IN_Q_OVERFLOW watchdog 7's inotify backend logs a warning, drops the events its
watch groups held and re-adds their watches, but tells no event handler: the changes
in between are lost silently.  The observer made here (Linux) has emitters whose watch
group, once its watches are back, queues a ``QueueOverflowEvent`` through the normal
event queue, so the producer reconciles the root at once.  It reuses watchdog's
``InotifyEmitter.on_thread_start`` wiring (``_inotify_fd``, ``_emitter_class``); where
that hook is missing (other platforms or releases) the plain ``Observer`` is used and
lost events wait for the periodic reconciliation.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchdog import events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.utils import UnsupportedLibcError

from kloros_tasks.watch import filters

OVERFLOW = "overflow"  # event type (and inbox kind): the kernel dropped events under a root


class QueueOverflowEvent(FileSystemEvent):
    """Not a change: the kernel's inotify queue overflowed and events under ``src_path``
    (a watched root) were lost."""

    event_type = OVERFLOW
    is_directory = True
    is_synthetic = True


try:  # watchdog 7's inotify backend (Linux) tells its watch groups about an overflow
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
except (ImportError, UnsupportedLibcError):
    InotifyWatchGroup = None
# Elsewhere lost events wait for the periodic reconciliation.
REPORTS_OVERFLOW = hasattr(InotifyWatchGroup, "on_queue_overflow")

if REPORTS_OVERFLOW:

    @dataclass
    class _OverflowWatchGroup(InotifyWatchGroup):
        on_overflow: Callable[[], None] | None = None

        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()  # watchdog drops what it held and re-adds its watches
            if self.is_active and self.on_overflow is not None:
                self.on_overflow()

    class _OverflowEmitter(InotifyEmitter):
        """Queues a QueueOverflowEvent, from watchdog's inotify reader thread, once the
        watches are back: the reconciliation it starts then walks a watched tree."""

        def on_thread_start(self) -> None:
            # watchdog's InotifyEmitter.on_thread_start, with the reporting watch group.
            self._inotify = _OverflowWatchGroup(
                self._inotify_fd, os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink, on_overflow=self._overflowed)

        def _overflowed(self) -> None:
            self.queue_event(QueueOverflowEvent(self.watch.path))

    class _OverflowObserver(InotifyObserver):
        def __init__(self) -> None:
            super().__init__()
            self._emitter_class = _OverflowEmitter  # what schedule() makes for each root


# The events that can carry a change (filters.event_changes).  Opens, closes without a
# write and directory modifications are left out of the inotify mask, so the kernel
# queues none: the watcher reading every file of a reconciliation, and the workers
# reading them again, would otherwise each raise two events the watcher reads, decodes
# and drops (a sixth of its CPU in a cold scan of Django).
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    cls for cls in (
        events.FileCreatedEvent, events.FileModifiedEvent, events.FileClosedEvent,
        events.FileDeletedEvent, events.FileMovedEvent, events.DirCreatedEvent,
        events.DirDeletedEvent, events.DirMovedEvent,
        getattr(events, "FileAttribEvent", None),  # watchdog < 6: a FileModifiedEvent
        QueueOverflowEvent)  # watchdog passes on only the events of the filter's classes
    if cls is not None]


def watch_root(observer: Any, handler: FileSystemEventHandler, path: str) -> None:
    """Watch ``path`` recursively for the events that can carry a change."""
    observer.schedule(handler, path, recursive=True, event_filter=CHANGE_EVENTS)


def overflow_observer() -> Any:
    """The watcher's observer: watchdog's, and on Linux one whose emitters also report an
    inotify queue overflow as a QueueOverflowEvent (watchdog itself only logs it)."""
    return _OverflowObserver() if REPORTS_OVERFLOW else Observer()


class InboxHandler(FileSystemEventHandler):
    """Only pushes into the inbox: anything slower would stall watchdog's threads."""

    def __init__(self, root: str, inbox: queue.SimpleQueue) -> None:
        self.root = root
        self.inbox = inbox

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type == OVERFLOW:
            self.inbox.put((self.root, "", OVERFLOW))
            return
        src, dest = os.fsdecode(event.src_path), os.fsdecode(event.dest_path)
        for path, kind in filters.event_changes(event.event_type, src, dest, event.is_directory):
            self.inbox.put((self.root, path, kind))
