"""The Celery application: ``celery -A kloros_tasks.celery_app worker|beat|inspect|flower``.

Configuration follows docs/architecture.md ("Delivery and limits"): JSON only, late
acks with redelivery of tasks whose worker died, one task prefetched at a time, hard
time limits well below the Redis visibility timeout, results ignored, and transport
health checks so that a worker notices a restarted Redis.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import sys
import threading
from pathlib import Path

import redis.exceptions
from celery import Celery, bootsteps
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_before_create_process,
    worker_init,
    worker_process_init,
)
from celery.worker import state as worker_state
from kombu import Queue
from kombu.transport import redis as kombu_redis

from kloros_tasks import names
from kloros_tasks.connections import broker_url
from kloros_tasks.settings import Settings, SettingsError, from_env

SOFT_LIMIT_MARGIN = 5  # seconds between the soft and the hard time limit
WORKER_LOST_WAIT = 10.0
BEAT_SCHEDULER = "kloros_tasks.work.beatstore:JSONScheduler"
# The hard per-child memory limit, as a multiple of the soft ceiling
# (KLOROS_WORKER_MAX_MEMORY_MB): the soft one replaces a child after a task that grew
# it; the hard one stops the task that grows it too far, with a MemoryError.
HARD_MEMORY_FACTOR = 4
MEMORY_CHECK_EVERY = 0.02  # seconds of CPU time between checks while a task runs
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RECYCLE_CHECK_EVERY = 30.0  # seconds between checks for pool processes to replace
RECYCLE_ABOVE_MIB = 24  # private MiB above which an idle pool process is replaced

log = logging.getLogger(__name__)


def _closed_transport_is_a_connection_error() -> None:
    """kombu's Redis channel, closed with a task in flight after its connection's
    transport was closed already (a connection lost twice over, as across a Redis
    restart), rebuilds its client pool from the closed transport's settings to put the
    task back, and raises AttributeError ('NoneType' object has no attribute
    'hostname').  The consumer ignores connection errors while it closes a lost
    connection, but not that one, so the worker died instead of reconnecting.  As a
    connection error it is ignored: the task stays in ``unacked`` and is delivered
    again after the visibility timeout, as any task of a lost connection is."""
    original = kombu_redis.Channel._connparams
    if getattr(original, "kloros_guard", False):
        return

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return original(self, asynchronous)

    _connparams.kloros_guard = True
    kombu_redis.Channel._connparams = _connparams


_closed_transport_is_a_connection_error()


def configure(app: Celery, settings: Settings) -> None:
    """Apply every setting that the workers, beat and the producer must agree on."""
    import beat_schedule  # noqa: PLC0415 - top-level module installed with the package

    app.conf.update(
        broker_url=broker_url(settings.redis_url),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "health_check_interval": 10,
            "socket_keepalive": True,
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            # An idle worker re-issues BRPOP when it times out: every 5 s instead of
            # kombu's 1 s (a message still wakes it at once). Below socket_timeout.
            "polling_interval": 5,
            # Unacknowledged messages older than the visibility timeout (a killed worker's)
            # are looked for every 5 s, not every 100 s (kombu's default): they come back
            # within the timeout plus 5 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        broker_heartbeat=0,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task killed at the hard time limit is not acknowledged: it comes back, is
        # counted, and a file that always times out ends in the dead-letter list.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        # On a lost broker connection, cancel running tasks: their messages are
        # redelivered (late acks) instead of finishing into a dead connection.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - SOFT_LIMIT_MARGIN),
        worker_max_memory_per_child=settings.worker_max_memory_kib,
        worker_lost_wait=WORKER_LOST_WAIT,
        # Off: events cost every worker a message every 2 s while idle, and nothing
        # here reads them. Flower switches them on (its periodic enable_events) while
        # it runs, which is all it needs to show tasks.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=True,
        task_queues=[Queue(q, routing_key=q) for q in names.QUEUES],
        task_default_queue=names.KNOWLEDGE,
        task_create_missing_queues=False,
        # Each worker also consumes its own direct queue: the exploration scan fans out
        # to one worker per host through it, so every host reports its own hardware.
        worker_direct=True,
        task_routes={
            **{task: {"queue": det} for det, task in names.TASK_ANALYZE.items()},
            **{task: {"queue": det} for det, task in names.TASK_ANALYZE_BATCH.items()},
            **{task: {"queue": det} for det, task in names.TASK_SETTLE.items()},
            names.TASK_EXPLORATION_SCAN: {"queue": names.EXPLORATION},
        },
        beat_schedule=beat_schedule.schedule(settings.exploration_interval),
        beat_scheduler=BEAT_SCHEDULER,
        beat_schedule_filename=str(settings.state_dir / "celerybeat-schedule.json"),
        timezone="UTC",
        enable_utc=True,
    )
    # Kept on the app object, not in conf: conf is sent over the wire by `inspect conf`.
    app.kloros_settings = settings


def hard_memory_limit(soft_mb: int, data_now: int) -> int:
    """Bytes of data segment (heap and private mappings) a pool child may use:
    HARD_MEMORY_FACTOR times the soft ceiling, and never less than what the child holds
    at start plus the soft ceiling, so that a small ceiling still leaves room to work."""
    soft = soft_mb * 1024 * 1024
    return max(HARD_MEMORY_FACTOR * soft, data_now + soft)


def data_bytes() -> int:
    """This process's data segment (``VmData``: heap and private anonymous mappings)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[5]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class _MemoryGuard:
    """The hard limit of one pool child, in two layers.  While a task runs, a CPU-time
    timer checks the data segment every MEMORY_CHECK_EVERY s and raises MemoryError in
    the task past the limit, with memory still to spare, so the exception unwinds
    cleanly and the task parks its message (work/tasks.py).  RLIMIT_DATA, a quarter
    higher, stops what the timer cannot see: a single C call allocating without end
    (the MemoryError it raises may then be lost; the task's failure is parked too)."""

    limit = 0

    def start(self, soft_mb: int) -> None:
        self.limit = hard_memory_limit(soft_mb, data_bytes())
        signal.signal(signal.SIGVTALRM, self._check)
        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
            backstop = self.limit + self.limit // 4
            if hard != resource.RLIM_INFINITY:
                backstop = min(backstop, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (backstop, hard))
        except (OSError, ValueError) as exc:
            # systemd's units filter @resources (setrlimit): the timer and the unit's
            # MemoryMax guard there.
            log.debug("could not set RLIMIT_DATA for a pool child: %s", exc)

    def arm(self, on: bool) -> None:
        if self.limit:
            every = MEMORY_CHECK_EVERY if on else 0
            try:
                signal.setitimer(signal.ITIMER_VIRTUAL, every, every)
            except OSError as exc:  # a seccomp filter without timers: the rlimit stays
                log.warning("could not arm the memory check of a pool child: %s", exc)
                self.limit = 0

    def _check(self, _signum, _frame) -> None:
        used = data_bytes()
        if used > self.limit:
            self.arm(False)  # raised once; the task's end re-arms it for the next
            raise MemoryError(f"the task used {used >> 20} MB, past the hard limit of "
                              f"{self.limit >> 20} MB per worker child")


memory_guard = _MemoryGuard()


def private_mib(pid: int) -> float | None:
    """Memory only process ``pid`` holds (Private_Clean + Private_Dirty), in MiB."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    return sum(int(line.split()[1]) for line in lines if line.startswith("Private_")) / 1024


class RecycleIdlePool(bootsteps.StartStopStep):
    """Replace pool processes that hold a burst's memory once the worker is idle.

    After a cold scan a pool process keeps most of its peak: partly filled allocator
    arenas, and the parent's heap pages it copied on write.  Neither a collection nor
    ``malloc_trim`` gives them back; a fresh fork of the parent holds a fraction of it
    (docs/performance.md).  Every RECYCLE_CHECK_EVERY seconds, in the worker's event
    loop: when tasks ran since the last replacement, none started during the whole last
    interval, none is received or running, and a pool process holds more than
    RECYCLE_ABOVE_MIB of its own, the pool is shrunk by those processes (each exits
    between tasks, as the autoscaler shrinks it) and grown back by as many fresh ones."""

    label = "RecycleIdlePool"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w, **kwargs) -> None:
        super().__init__(w, **kwargs)
        self.last_count = self.recycled_count = 0

    def register_with_event_loop(self, w, hub) -> None:
        hub.call_repeatedly(RECYCLE_CHECK_EVERY, self.check, w)

    def check(self, w) -> None:
        count = worker_state.all_total_count[0]  # tasks started by this worker
        quiet = count == self.last_count and not (
            worker_state.active_requests or worker_state.reserved_requests)
        self.last_count = count
        if not quiet or count == self.recycled_count:
            return
        pids = w.pool.info.get("processes", [])
        heavy = [pid for pid in pids if (private_mib(pid) or 0) > RECYCLE_ABOVE_MIB]
        self.recycled_count = count
        if not heavy:
            return
        try:
            w.pool.shrink(len(heavy))
        except ValueError:  # a process busy after all: the next quiet interval
            self.recycled_count = 0
            return
        w.pool.grow(len(heavy))
        log.info("replaced %d idle pool process(es) holding over %d MiB of their own",
                 len(heavy), RECYCLE_ABOVE_MIB)


@worker_init.connect
@worker_before_create_process.connect
def freeze_heap(**_kwargs) -> None:
    """In the worker parent, before it forks its pool processes and embedded beat: move
    every object alive now to the collector's permanent generation (``gc.freeze``).
    A forked child shares the parent's heap pages until either writes to them, and a
    full collection in either process writes to every object it scans, so without this
    the first one copies most of the shared heap into both processes (Python's
    documentation of ``gc.freeze``; docs/performance.md)."""
    gc.collect()
    gc.freeze()


@worker_process_init.connect
def limit_child_memory(**_kwargs) -> None:
    """In each prefork child as it starts: the hard memory limit (see _MemoryGuard)."""
    settings = getattr(app, "kloros_settings", None)
    if settings is not None:
        memory_guard.start(settings.worker_max_memory_mb)


@task_prerun.connect
def _arm_memory_guard(**_kwargs) -> None:
    memory_guard.arm(True)


@task_postrun.connect
def _disarm_memory_guard(**_kwargs) -> None:
    memory_guard.arm(False)


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("kloros_tasks", include=["kloros_tasks.work.tasks"])
    app.steps["worker"].add(RecycleIdlePool)
    configure(app, settings or from_env())
    return app


def _load() -> Celery:
    try:
        return create_app()
    except SettingsError as exc:
        # One clear line instead of a traceback from deep inside Celery's loader.
        print(f"kloros-tasks: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _load()
_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def app_for(settings: Settings) -> Celery:
    """The app configured from ``settings``: this module's own when it talks to the same
    broker, else one made for them, once per broker (the threads of ``up`` that send
    tasks share it)."""
    wanted = broker_url(settings.redis_url)
    if app.conf.broker_url == wanted:
        return app
    with _apps_lock:
        if wanted not in _apps:
            _apps[wanted] = create_app(settings)
        return _apps[wanted]


def settings_of(celery_app: Celery) -> Settings:
    return celery_app.kloros_settings
