"""The watchdog producer on real files, a real private Redis and real inotify events.

A recording sender stands in for Celery: it is the boundary the producer sends
through, so what it records is exactly what would have been enqueued.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.settings import Settings
from kloros_tasks.watch.filters import should_enqueue
from kloros_tasks.watch.observer import REPORTS_OVERFLOW, overflow_observer, watch_root
from kloros_tasks.watch.producer import (
    EXIT_CONFIG,
    EXIT_INOTIFY,
    EXIT_THREAD_DIED,
    Watcher,
    run_watch,
)
from kloros_tasks.watch.send import CelerySender
from kloros_tasks.watch.sync import BATCH, count_dirs
from kloros_tasks.watch.tree import read_file
from kloros_tasks.work.payload import Change, parse, parse_batch

# How long a wait may take before the test fails: generous, because waiting only lasts
# that long when something is wrong, and a loaded machine is slow, not wrong.
DEADLINE = 30.0
LOGGER = "kloros_tasks.watch.producer"
SYNC_LOGGER = "kloros_tasks.watch.sync"
MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")
SMALL_QUEUE = 16  # events a test's inotify instance holds before it overflows
MAX_FILES_TO_OVERFLOW = 20_000  # where the queue cannot be lowered, at most this many files


def wait_until(condition, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def detectors_for(relpath: str) -> list[str]:
    return sorted(should_enqueue(relpath))


class RecordingSender:
    """Records what would have been enqueued, checking each payload as a worker would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.batches: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    def send(self, detector: str, payload: dict) -> None:
        parse(json.loads(json.dumps(payload)))  # JSON-clean and valid, or the test fails
        with self._lock:
            self.sent.append((detector, payload))

    def send_batch(self, detector: str, payload: dict) -> None:
        """A batch is recorded whole, and as the single-file payloads it stands for."""
        root, entries = parse_batch(json.loads(json.dumps(payload)))
        assert all(isinstance(e, Change) for e in entries), entries
        with self._lock:
            self.batches.append((detector, payload))
            self.sent += [(detector, e.to_json()) for e in entries]

    def tasks(self, path: str) -> list[tuple[str, dict]]:
        with self._lock:
            return [(d, p) for d, p in self.sent if p["path"] == path]

    def paths(self) -> set[str]:
        with self._lock:
            return {p["path"] for _, p in self.sent}


class Running:
    """A Watcher running in a thread, as ``kloros-tasks watch`` runs it."""

    def __init__(self, watcher: Watcher, sender: RecordingSender) -> None:
        self.watcher, self.sender = watcher, sender
        self.root = Path(watcher.roots[0].path)
        self.stop_event = threading.Event()
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._barriers = 0

    def _run(self) -> None:
        self.status = self.watcher.run(self.stop_event)

    def start(self, ready: bool = True) -> Running:
        """Start; with ``ready``, wait until the initial reconciliation is done."""
        self.thread.start()
        if ready:
            wait_until(lambda: self.watcher.initial_done)
        return self

    def stop(self) -> int | None:
        self.stop_event.set()
        self.thread.join(10)
        return self.status

    def barrier(self) -> None:
        """Write a fresh file and wait for its task: every earlier change is handled by then."""
        self._barriers += 1
        name = f"zz_barrier_{self._barriers}.md"
        (self.root / name).write_text("barrier\n")
        wait_until(lambda: self.sender.tasks(name))

    def task_paths(self) -> set[str]:
        return {p for p in self.sender.paths() if not p.startswith("zz_barrier_")}


@pytest.fixture
def root(tmp_path) -> Path:
    directory = tmp_path / "proj"
    directory.mkdir()
    return directory


@pytest.fixture
def watch(redis_url):
    started: list[Running] = []

    def start(root: Path, **options) -> Running:
        reader, ready = options.pop("reader", read_file), options.pop("ready", True)
        factory = options.pop("observer_factory", overflow_observer)
        settings = Settings(redis_url=options.pop("redis_url", redis_url), **options)
        sender = RecordingSender()
        watcher = Watcher(settings, [root], sender=sender, reader=reader,
                          observer_factory=factory)
        running = Running(watcher, sender)
        started.append(running)
        return running.start(ready)

    yield start
    for running in started:
        if running.status is None:
            assert running.stop() == 0


def test_a_burst_of_writes_sends_one_task_per_detector_after_the_quiet_window(root, watch):
    w = watch(root, debounce_ms=200)
    for i in range(5):
        with open(root / "mod.py", "a") as f:
            f.write(f"x{i} = {i}\n")
    wait_until(lambda: w.sender.tasks("mod.py"))
    w.barrier()
    tasks = w.sender.tasks("mod.py")
    assert sorted(d for d, _ in tasks) == detectors_for("mod.py")
    final = (root / "mod.py").read_bytes()
    assert {(p["event"], p["sha256"]) for _, p in tasks} == {("created", sha(final))}


def test_an_editor_style_save_is_one_change_of_the_real_path(root, watch):
    (root / "mod.py").write_text("old = 1\n")
    w = watch(root, debounce_ms=200)
    (root / "mod.py.tmp-save.py").write_text("new = 2\n")
    os.replace(root / "mod.py.tmp-save.py", root / "mod.py")
    wait_until(lambda: len(w.sender.tasks("mod.py")) == 2 * len(detectors_for("mod.py")))
    w.barrier()
    assert w.task_paths() == {"mod.py"}
    events = [(p["event"], p["sha256"]) for _, p in w.sender.tasks("mod.py")]
    assert events.count(("modified", sha(b"new = 2\n"))) == len(detectors_for("mod.py"))


def test_deleting_a_file_sends_a_deletion_without_a_blob(root, watch, r):
    (root / "gone.py").write_text("x = 1\n")
    w = watch(root)
    (root / "gone.py").unlink()
    wait_until(lambda: any(p["event"] == "deleted" for _, p in w.sender.tasks("gone.py")))
    deletions = [p for _, p in w.sender.tasks("gone.py") if p["event"] == "deleted"]
    assert len(deletions) == len(detectors_for("gone.py"))
    assert all(p["sha256"] is None and p["skip"] is None for p in deletions)
    assert r.hget(names.seen("proj"), "gone.py") is None


def test_rewriting_the_same_bytes_sends_nothing_and_keeps_the_stat_current(root, watch, r):
    (root / "same.py").write_text("x = 1\n")
    w = watch(root)
    first = list(w.sender.tasks("same.py"))
    (root / "same.py").write_text("x = 1\n")
    os.utime(root / "same.py", ns=(1_000_000_000, 1_000_000_000))
    w.barrier()
    assert w.sender.tasks("same.py") == first
    st, digest = os.lstat(root / "same.py"), sha(b"x = 1\n")
    expected = f"{digest} {st.st_mtime_ns} {st.st_size}".encode()
    wait_until(lambda: r.hget(names.seen("proj"), "same.py") == expected)


def test_the_blob_waits_in_redis_with_one_reference_per_task_and_a_ttl(root, watch, r):
    w = watch(root, blob_ttl=600)
    (root / "mod.py").write_bytes(b"def f():\n    return 1\n")
    wait_until(lambda: w.sender.tasks("mod.py"))
    digest = sha(b"def f():\n    return 1\n")
    assert r.get(names.blob(digest)) == b"def f():\n    return 1\n"
    assert int(r.get(names.blob_refs(digest))) == len(detectors_for("mod.py"))
    assert 0 < r.ttl(names.blob(digest)) <= 600


def test_reconciliation_at_start_sends_only_added_changed_and_deleted_files(root, watch, r):
    for name in ("keep.py", "change.py", "gone.py", "touch.py"):
        (root / name).write_text(f"# {name}\n")
    watch(root).stop()
    (root / "change.py").write_text("# changed\n")
    (root / "gone.py").unlink()
    (root / "new.py").write_text("# new\n")
    os.utime(root / "touch.py", ns=(2_000_000_000, 2_000_000_000))
    w = watch(root)
    events = {(p["path"], p["event"]) for _, p in w.sender.sent}
    assert events == {("change.py", "modified"), ("gone.py", "deleted"), ("new.py", "created")}
    assert r.hget(names.seen("proj"), "touch.py").endswith(b" 2000000000 11")


def test_files_excluded_since_the_last_run_are_deleted_at_start(root, watch):
    (root / "vendor").mkdir()
    (root / "vendor" / "lib.py").write_text("x = 1\n")
    (root / "app.py").write_text("x = 1\n")
    watch(root).stop()
    w = watch(root, exclude=("vendor",))
    assert {(p["path"], p["event"]) for _, p in w.sender.sent} == {("vendor/lib.py", "deleted")}


def test_reconciling_ten_thousand_files_reads_the_seen_hash_once(root, watch, r):
    pipe = r.pipeline(transaction=False)
    for n in range(10_000):
        rel, body = f"pkg{n // 100}/m{n % 100}.md", f"{n}\n".encode()
        if n % 100 == 0:
            os.mkdir(root / f"pkg{n // 100}")
        with open(root / rel, "wb") as f:
            f.write(body)
        st = os.lstat(root / rel)
        digest, mtime = sha(body), st.st_mtime_ns
        if n % 1000 == 1:  # touched since: same bytes, older stored mtime
            mtime -= 1
        if n % 1000 == 2:  # rewritten since: another digest and stat
            digest, mtime = sha(b"before"), mtime - 1
        if n % 1000 != 3:  # n % 1000 == 3: added since
            pipe.hset(names.seen("proj"), rel, f"{digest} {mtime} {st.st_size}")
    for n in range(10):
        pipe.hset(names.seen("proj"), f"removed/m{n}.md", f"{sha(b'x')} 1 1")
    pipe.execute()
    r.config_resetstat()
    started = time.monotonic()
    w = watch(root)
    events = [p["event"] for _, p in w.sender.sent]
    per_file = len(detectors_for("m.md"))
    assert sorted(events) == ["created"] * 10 * per_file + ["deleted"] * 10 * per_file + [
        "modified"] * 10 * per_file
    stats = r.info("commandstats")
    heartbeats = 1 + (time.monotonic() - started) / w.watcher.heartbeat_every
    assert stats["cmdstat_hgetall"]["calls"] == 1
    assert "cmdstat_hget" not in stats
    # The one HMGET per heartbeat checks the watcher's registration (a flushed Redis).
    assert stats.get("cmdstat_hmget", {"calls": 0})["calls"] <= heartbeats



@pytest.mark.parametrize(("heartbeat_ms", "beats"), [(250, [0.0, 0.25, 0.5]), (5000, [0.0])])
def test_the_watcher_beats_at_the_interval_its_settings_give(root, redis_url, heartbeat_ms,
                                                             beats):
    settings = Settings(redis_url=redis_url, watcher_heartbeat_ms=heartbeat_ms)
    watcher = Watcher(settings, [root], sender=RecordingSender())
    seen = []
    for now in (0.0, 0.2, 0.25, 0.4, 0.5):  # the pump's clock, driven by hand
        watcher._tick(now)
        seen.append(watcher._last_beat)
    assert sorted(set(seen)) == beats
    assert json.loads(watcher.client.get(names.WATCHER_HEARTBEAT))["roots"] == ["proj"]
    watcher.client.close()

def test_reconciling_many_new_files_stores_their_blobs_in_one_transaction_per_batch(
    root, watch, r
):
    count = 2 * BATCH + 7
    for n in range(count):
        (root / f"m{n}.md").write_text(f"# {n}\n")
    r.config_resetstat()
    w = watch(root)
    assert len(w.sender.paths()) == count
    stats = r.info("commandstats")
    assert stats["cmdstat_exec"]["calls"] == 3
    assert len(r.keys(names.blob("*"))) == count
    assert int(r.get(names.blob_refs(sha(b"# 7\n")))) == len(detectors_for("m.md"))


def test_the_watcher_leaves_retrying_to_its_own_backoff(root, redis_url):
    watcher = Watcher(Settings(redis_url=redis_url), [root], sender=RecordingSender())
    assert watcher.client.get_retry().get_retries() == 0
    watcher.client.close()


def test_symlinks_are_never_followed(root, tmp_path, watch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("secret = 1\n")
    (root / "real.py").write_text("real = 1\n")
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "link.py").symlink_to(outside / "secret.py")
    w = watch(root)
    (root / "link2.py").symlink_to(outside / "secret.py")
    (outside / "secret.py").write_text("secret = 2\n")
    w.barrier()
    assert w.task_paths() == {"real.py"}


def test_a_file_replaced_by_a_symlink_is_deleted_for_the_workers(root, tmp_path, watch):
    (tmp_path / "elsewhere.py").write_text("x = 2\n")
    (root / "mod.py").write_text("x = 1\n")
    w = watch(root)
    (root / "mod.py").unlink()
    (root / "mod.py").symlink_to(tmp_path / "elsewhere.py")
    wait_until(lambda: any(p["event"] == "deleted" for _, p in w.sender.tasks("mod.py")))
    w.barrier()
    assert [p["event"] for _, p in w.sender.tasks("mod.py")].count("created") == len(
        detectors_for("mod.py"))


def test_a_fifo_is_skipped_without_blocking(root, watch):
    w = watch(root)
    os.mkfifo(root / "pipe.py")
    w.barrier()
    assert w.task_paths() == set()


def test_a_file_over_the_size_cap_is_sent_without_content(root, watch, r):
    w = watch(root, max_file_bytes=100)
    (root / "big.py").write_bytes(b"#" * 200)
    wait_until(lambda: w.sender.tasks("big.py"))
    payloads = [p for _, p in w.sender.tasks("big.py")]
    assert {(p["sha256"], p["skip"]) for p in payloads} == {(None, "too large (200 bytes > 100)")}
    assert r.keys("kloros:blob*") == []


def test_an_unreadable_file_is_skipped_with_a_warning_until_its_next_change(
    root, watch, caplog
):
    locked = {str(root / "secret.py")}

    def reader(path: str, limit: int) -> bytes:
        if path in locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return read_file(path, limit)

    caplog.set_level(logging.WARNING, logger=SYNC_LOGGER)
    w = watch(root, reader=reader)
    (root / "secret.py").write_text("x = 1\n")
    wait_until(lambda: "secret.py" in caplog.text)
    w.barrier()
    assert w.sender.tasks("secret.py") == []
    locked.clear()
    (root / "secret.py").write_text("x = 2\n")
    wait_until(lambda: w.sender.tasks("secret.py"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_a_chmod_000_file_is_not_sent(root, watch):
    w = watch(root)
    (root / "secret.py").write_text("x = 1\n")
    os.chmod(root / "secret.py", 0)
    w.barrier()
    assert all(p["event"] != "deleted" for _, p in w.sender.tasks("secret.py"))


def test_ignored_directories_and_excluded_globs_send_nothing(root, watch):
    w = watch(root, exclude=("vendor",))
    for rel in (".git/hooks.py", "vendor/lib.py", "__pycache__/m.py", "a/.venv/x.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "mod.py.swp").write_text("swap")
    w.barrier()
    assert w.task_paths() == set()


def test_a_directory_moved_in_is_walked(root, tmp_path, watch):
    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "a.py").write_text("a = 1\n")
    (staged / "sub" / "b.md").write_text("# b\n")
    w = watch(root)
    staged.rename(root / "pkg")
    wait_until(lambda: {"pkg/a.py", "pkg/sub/b.md"} <= w.task_paths())
    assert {p["event"] for _, p in w.sender.sent} == {"created"}


def test_a_renamed_directory_deletes_the_old_paths_and_creates_the_new(root, watch):
    (root / "old").mkdir()
    (root / "old" / "a.py").write_text("a = 1\n")
    w = watch(root)
    (root / "old").rename(root / "new")
    wait_until(lambda: w.sender.tasks("new/a.py") and len(w.sender.tasks("old/a.py")) == 2 * len(
        detectors_for("a.py")))
    assert {p["event"] for _, p in w.sender.tasks("old/a.py")} == {"created", "deleted"}


def test_a_directory_moved_out_or_removed_deletes_everything_under_it(root, tmp_path, watch):
    for d in ("moved", "removed"):
        (root / d / "deep").mkdir(parents=True)
        (root / d / "deep" / "x.py").write_text("x = 1\n")
    w = watch(root)
    (root / "moved").rename(tmp_path / "elsewhere")
    shutil.rmtree(root / "removed")

    def deleted() -> set[str]:
        return {p["path"] for _, p in w.sender.sent if p["event"] == "deleted"}

    wait_until(lambda: deleted() == {"moved/deep/x.py", "removed/deep/x.py"})


def test_the_pump_registers_and_reconciles_before_it_first_waits_for_events(root, redis_url):
    # A start (a warm restart's last step) must not wait out an idle inbox first.
    watcher = Watcher(Settings(redis_url=redis_url), [root], sender=RecordingSender())
    calls: list[str] = []
    tick, receive = watcher._tick, watcher._receive
    watcher._tick = lambda now: (calls.append("tick"), tick(now))[1]
    watcher._receive = lambda timeout: (calls.append("receive"), receive(timeout))[1]
    running = Running(watcher, RecordingSender()).start()
    assert running.stop() == 0
    assert calls[0] == "tick"


def test_the_watcher_registers_its_root_and_beats(root, watch, r):
    watch(root)
    registered = json.loads(r.hget(names.ROOTS, "proj"))
    assert registered["path"] == str(root.resolve())
    assert registered["host"]
    wait_until(lambda: r.exists(names.WATCHER_HEARTBEAT))
    beat = json.loads(r.get(names.WATCHER_HEARTBEAT))
    assert beat["roots"] == ["proj"] and beat["pid"] == os.getpid()
    assert {"host", "ts", "pending"} <= set(beat)
    assert 0 < r.ttl(names.WATCHER_HEARTBEAT) <= 30


@pytest.fixture
def flaky_redis():
    directory = Path(tempfile.mkdtemp(prefix="kl-"))
    server = EmbeddedRedis(directory, persist=True).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_changes_made_while_redis_is_down_are_held_and_sent_once_it_is_back(
    root, watch, flaky_redis, caplog
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    w = watch(root, redis_url=flaky_redis.url)
    flaky_redis.stop()
    (root / "a.py").write_text("a = 1\n")
    (root / "b.py").write_text("b = 1\n")
    wait_until(lambda: not w.watcher.redis_up and w.watcher.held == 2)
    time.sleep(0.5)  # several retries fail meanwhile; none may log again
    assert w.task_paths() == set()
    flaky_redis.start()
    wait_until(lambda: {"a.py", "b.py"} <= w.task_paths())
    w.barrier()
    for name in ("a.py", "b.py"):
        assert sorted(d for d, _ in w.sender.tasks(name)) == detectors_for(name)
    messages = [(rec.levelname, rec.getMessage()) for rec in caplog.records]
    assert sum(level == "WARNING" and "unreachable" in m for level, m in messages) == 1
    assert sum(level == "INFO" and "reachable again" in m for level, m in messages) == 1


def test_a_watcher_started_while_redis_is_down_reconciles_once_it_is_up(
    root, watch, flaky_redis
):
    (root / "a.py").write_text("a = 1\n")
    flaky_redis.stop()
    w = watch(root, redis_url=flaky_redis.url, ready=False)
    wait_until(lambda: not w.watcher.redis_up)
    assert not w.watcher.initial_done
    flaky_redis.start()
    wait_until(lambda: w.watcher.initial_done)
    assert w.task_paths() == {"a.py"}


def test_past_the_pending_limit_the_watcher_reconciles_when_redis_is_back(
    root, watch, flaky_redis
):
    w = watch(root, redis_url=flaky_redis.url, pending_limit=1)
    flaky_redis.stop()
    for name in ("a.py", "b.py", "c.py"):
        (root / name).write_text(f"# {name}\n")
    wait_until(lambda: w.watcher.pending.overflow or w.watcher.reconcile_needed)
    flaky_redis.start()
    wait_until(lambda: {"a.py", "b.py", "c.py"} <= w.task_paths())
    w.barrier()
    sent = [p for _, p in w.sender.sent if not p["path"].startswith("zz_barrier_")]
    assert len(sent) == 3 * len(detectors_for("a.py"))


def gated_observer(gate: threading.Event, queued_events: int | None):
    """The watcher's own observer, whose inotify instance is not read before ``gate`` is
    set: events pile up in the kernel's queue meanwhile, so an overflow is certain
    rather than a race between the writes and watchdog's reader thread (which copies
    the kernel's queue into an unbounded one as fast as it can).

    With ``queued_events``, the instance holds that many events: the kernel reads the
    system-wide fs.inotify.max_queued_events when an instance is created, so it is
    lowered only around that and restored at once, even on failure."""
    from watchdog.observers.inotify_c import InotifyFD  # noqa: PLC0415 - Linux only

    class GatedFD(InotifyFD):
        def _read_event_buffer(self, *args, **kwargs) -> bytes:
            while not gate.wait(0.05):
                if not self.should_keep_running() or self._closed:
                    return b""
            return super()._read_event_buffer(*args, **kwargs)

    original = MAX_QUEUED_EVENTS.read_text()
    if queued_events is not None:
        MAX_QUEUED_EVENTS.write_text(f"{queued_events}\n")
    try:
        fd = GatedFD()
    finally:
        if queued_events is not None:
            MAX_QUEUED_EVENTS.write_text(original)
    fd.start()
    observer = overflow_observer()
    # What InotifyObserver.schedule() would create on first use; watchdog 7.1 internals.
    observer._inotify_fd = fd  # noqa: SLF001
    observer._emitter_kwargs["inotify_fd"] = fd  # noqa: SLF001
    return observer


def overflow_plan() -> tuple[int | None, int]:
    """(queue size to set or None, files to write) that overflow the kernel's queue for
    sure while nothing reads it: a queue lowered to SMALL_QUEUE when this process may
    (root), else more files than the current queue holds events (each new file raises at
    least IN_CREATE and IN_CLOSE_WRITE)."""
    try:
        MAX_QUEUED_EVENTS.write_text(MAX_QUEUED_EVENTS.read_text())
        return SMALL_QUEUE, 300
    except OSError:
        pass
    try:
        limit = int(MAX_QUEUED_EVENTS.read_text())
    except (OSError, ValueError):
        pytest.skip(f"no {MAX_QUEUED_EVENTS} here: not Linux inotify")
    if limit > MAX_FILES_TO_OVERFLOW * 2:
        pytest.skip(f"{MAX_QUEUED_EVENTS} is {limit}: too many files needed to overflow it")
    return None, limit // 2 + 100


def test_events_lost_to_an_inotify_queue_overflow_are_sent_by_a_reconciliation_at_once(
    root, watch, r, caplog
):
    if not (REPORTS_OVERFLOW and hasattr(overflow_observer(), "_emitter_kwargs")):
        pytest.skip("this watchdog does not report inotify queue overflows")
    queued_events, count = overflow_plan()
    caplog.set_level(logging.WARNING)
    gate = threading.Event()
    w = watch(root, observer_factory=lambda: gated_observer(gate, queued_events))
    files = {f"n{i:05d}.md": f"# Note {i}\n".encode() for i in range(count)}
    for name, body in files.items():  # nobody reads the kernel's queue meanwhile
        (root / name).write_bytes(body)
    gate.set()

    # The periodic reconciliation is 600 s away: only the one the overflow started can
    # send the files whose events the kernel dropped.
    wait_until(lambda: set(files) <= w.task_paths(), timeout=120)
    w.barrier()
    assert any(rec.name == LOGGER and "overflowed" in rec.getMessage()
               and "reconciling" in rec.getMessage() for rec in caplog.records)
    for name, body in files.items():
        assert w.sender.tasks(name)[-1][1]["sha256"] == sha(body)
    seen = r.hgetall(names.seen("proj"))
    assert {k.decode() for k in seen} >= set(files)


def test_reading_the_watched_files_raises_no_event(root):
    """Only events that can carry a change are queued by the kernel: the watcher and the
    workers reading every file of a reconciliation raise no open and no close without
    a write for the watcher to read and drop."""
    for i in range(20):
        (root / f"f{i:02d}.py").write_text("x = 1\n")
    seen: queue.SimpleQueue = queue.SimpleQueue()

    class Recording(FileSystemEventHandler):
        def dispatch(self, event) -> None:
            seen.put((event.event_type, os.path.basename(os.fsdecode(event.src_path))))

    observer = overflow_observer()
    watch_root(observer, Recording(), str(root))
    observer.start()
    try:
        for i in range(20):
            (root / f"f{i:02d}.py").read_bytes()
        (root / "written.py").write_text("y = 2\n")  # queued after whatever the reads raised
        got: list[tuple[str, str]] = []
        while ("closed", "written.py") not in got:
            got.append(seen.get(timeout=DEADLINE))
    finally:
        observer.stop()
        observer.join(DEADLINE)
    assert {name for _, name in got} == {"written.py"}
    assert {kind for kind, _ in got} <= {"created", "modified", "closed"}


def test_the_watcher_exits_non_zero_when_its_observer_dies(root, watch):
    w = watch(root)
    w.watcher.observers[0].stop()
    w.thread.join(DEADLINE)
    assert w.status == EXIT_THREAD_DIED


class BrokenSender:
    def send(self, detector: str, payload: dict) -> None:
        raise RuntimeError("a bug, not an outage")


def test_the_watcher_exits_non_zero_when_its_pump_dies(root, redis_url):
    (root / "a.py").write_text("a = 1\n")
    watcher = Watcher(Settings(redis_url=redis_url), [root], sender=BrokenSender())
    assert watcher.run(threading.Event()) == EXIT_THREAD_DIED


def test_run_watch_stops_cleanly_and_reports_initial_progress(root, redis_url, r):
    for i in range(3):
        (root / f"m{i}.py").write_text(f"x = {i}\n")
    sender, stop, calls, result = RecordingSender(), threading.Event(), [], []
    settings = Settings(redis_url=redis_url)
    thread = threading.Thread(target=lambda: result.append(run_watch(
        settings, [root], sender=sender, stop_event=stop, progress=lambda *a: calls.append(a))))
    thread.start()
    wait_until(lambda: calls and calls[-1] == (3, 3))
    stop.set()
    thread.join(DEADLINE)
    assert result == [0]
    assert calls[0] == (0, 3)


def test_two_roots_with_the_same_name_are_refused(tmp_path, capsys):
    for parent in ("a", "b"):
        (tmp_path / parent / "src").mkdir(parents=True)
    status = run_watch(Settings(), [tmp_path / "a" / "src", tmp_path / "b" / "src"])
    assert status == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "'src'" in err and len(err.strip().splitlines()) == 1


def test_a_root_that_is_not_a_directory_is_refused(tmp_path, capsys):
    assert run_watch(Settings(), [tmp_path / "missing"]) == EXIT_CONFIG
    assert "not a directory" in capsys.readouterr().err


class ExhaustedObserver(Observer):
    """Fails to start as watchdog does when fs.inotify.max_user_watches is exhausted."""

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


def test_an_exhausted_inotify_watch_limit_exits_1_naming_the_sysctl(root, redis_url, capsys):
    watcher = Watcher(Settings(redis_url=redis_url), [root], sender=RecordingSender(),
                      observer_factory=ExhaustedObserver)
    assert watcher.run(threading.Event()) == EXIT_INOTIFY
    err = capsys.readouterr().err.strip()
    assert "fs.inotify.max_user_watches" in err and len(err.splitlines()) == 1


def test_the_celery_sender_enqueues_by_task_name_on_the_detector_queue(redis_url, r):
    change = {"root": "proj", "path": "a.py", "event": "deleted", "sha256": None,
              "skip": None, "ts": 1.0, "v": 1}
    CelerySender(Settings(redis_url=redis_url)).send(names.KNOWLEDGE, change)
    assert r.llen(names.KNOWLEDGE) == 1
    message = json.loads(r.lindex(names.KNOWLEDGE, 0))
    assert message["headers"]["task"] == names.TASK_ANALYZE[names.KNOWLEDGE]
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [change] and kwargs == {}


def test_a_tree_with_more_directories_than_inotify_watches_exits_1(root, redis_url, capsys):
    for d in ("a", "b/c"):
        (root / d).mkdir(parents=True)
    watcher = Watcher(Settings(redis_url=redis_url), [root], sender=RecordingSender(),
                      watch_limit=lambda: 3)
    assert watcher.run(threading.Event()) == EXIT_INOTIFY
    assert "fs.inotify.max_user_watches" in capsys.readouterr().err
    assert count_dirs(str(root), 100) == 4
