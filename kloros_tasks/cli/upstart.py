"""``kloros-tasks up PATH...``: its first steps, before anything heavy is imported.

Before anything starts, the state dir must be writable and a given Redis must answer;
otherwise one line names the variable and the status is 2.  Then, in this order, so
that the slow parts of a start overlap instead of following each other:

1. the state dir is locked and the embedded ``redis-server`` (when no Redis is given)
   is started; it loads its append-only file while the rest goes on;
2. the workers, the watcher and the bridge are started through cli/prestart.py: each
   imports what it needs and then waits for the gate (``supervisor.Gate``); the four
   workers of ``--per-detector`` are forks of one zygote (cli/zygote.py) that imports
   Celery once for them;
3. this process imports the rest of ``up`` (cli/up.py: redis-py, the state modules),
   waits for Redis to answer, restores the snapshot if Redis holds no state, and only
   then opens the gate: no child touches Redis before that, as before.

SIGINT and SIGTERM are caught from the start, so a stop during start-up still stops
the server and every child.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from kloros_tasks.cli.embedded import EmbeddedRedis, EmbeddedRedisError, embedded_dir
from kloros_tasks.cli.supervisor import Gate, Supervisor, lock_state_dir, plan, stop_all
from kloros_tasks.cli.threadchild import beat_thread, bridge_thread, watcher_thread
from kloros_tasks.settings import Settings, check_state_dir

# glibc's allocator for the children, unless the environment says otherwise: two arenas
# instead of eight per core for the threads of the workers and the watcher, and freed
# heap handed back past 1 MiB instead of a threshold that only grows.  After a cold
# scan of Django this keeps about 20 MiB less resident (docs/performance.md).  At
# 128 KiB the heap's top was given back and taken again for every file (zlib's
# compressor alone needs a quarter of a MiB): 40 times the page faults, 9 % of the
# pool's CPU on a cold scan, for no memory saved at the peak of a burst.
CHILD_MALLOC = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def run_up(settings: Settings, roots: list[Path], *, fmt: str = "text",
           concurrency: tuple[int, int] | None = None, single_worker: bool = True,
           flower: bool = False) -> int:
    """Run the pipeline until SIGINT/SIGTERM; returns the exit status: 0 stopped, 1 a
    child could not be kept running, 2 configuration (SettingsError raised before
    anything started, or the embedded server refused its directory or did not come up).

    By default one worker consumes every detector queue: the queues stay one per
    detector, and the whole of ``up`` fits in the memory of the original daemons
    (docs/performance.md); beat, the watcher and the bridge (when configured) are
    threads of ``up``.  ``single_worker=False`` runs one worker per queue, as the
    per-queue systemd units do, so that one detector cannot stall or take down another;
    beat then runs in the exploration worker, the watcher and the bridge in processes
    of their own."""
    check_state_dir(settings.state_dir)
    if settings.redis_url_given:
        from kloros_tasks.cli.up import check_reachable  # noqa: PLC0415 - redis-py

        check_reachable(settings.redis_url)
    lock = lock_state_dir(settings.state_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = supervisor = None
    try:
        url = settings.redis_url
        if not settings.redis_url_given:
            server = EmbeddedRedis(embedded_dir(settings.state_dir), with_parent=True).spawn()
            url = server.url
        supervisor = start_gated(settings, roots, url, concurrency=concurrency,
                                 single_worker=single_worker, flower=flower)
        # Imported while the server loads its data and the children import theirs.
        from kloros_tasks.cli.up import run_pipeline  # noqa: PLC0415

        if server is not None:
            server.wait_ready()
            print(f"embedded redis-server on {server.socket}", file=sys.stderr)
        return run_pipeline(settings, roots, url, supervisor, stop,
                            embedded=server is not None, fmt=fmt)
    except EmbeddedRedisError as exc:
        print(f"kloros-tasks: embedded redis-server: {exc}", file=sys.stderr)
        return 2
    finally:
        if supervisor is not None:
            stop_all(supervisor.children)  # (done already when the pipeline ran)
            supervisor.close_gate()
        if server is not None:
            server.stop()
        lock.close()


def start_gated(settings: Settings, roots: list[Path], url: str, *,
                concurrency: tuple[int, int] | None, single_worker: bool,
                flower: bool) -> Supervisor:
    """The children of this ``up`` on ``url``, the gated ones started (waiting)."""
    env = {**CHILD_MALLOC, **os.environ, "KLOROS_REDIS_URL": url,
           "KLOROS_STATE_DIR": str(settings.state_dir), "PYTHONUNBUFFERED": "1"}
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    flower_auth = None
    if flower:
        # Never an open dashboard: the given credentials, or fresh ones printed once.
        flower_auth = settings.flower_auth or f"kloros:{secrets.token_urlsafe(12)}"
        print(f"flower on http://127.0.0.1:{settings.flower_port}/ (basic auth "
              f"{flower_auth if not settings.flower_auth else 'from KLOROS_FLOWER_AUTH'})",
              file=sys.stderr)
    children = plan(settings.with_overrides(redis_url=url), roots, concurrency=concurrency,
                    single_worker=single_worker, flower_auth=flower_auth,
                    bridge_in_process=bridge_thread if single_worker else None,
                    watcher_in_process=watcher_thread if single_worker else None,
                    beat_in_process=beat_thread if single_worker else None)
    supervisor = Supervisor(children, env, log_dir)
    supervisor.start_all(Gate())
    return supervisor
