"""The Celery application: ``celery -A kloros_tasks.celery_app worker|beat|inspect|flower``.

Configuration follows docs/architecture.md ("Delivery and limits"): JSON only, late
acks with redelivery of tasks whose worker died, one task prefetched at a time, hard
time limits well below the Redis visibility timeout, results ignored, and transport
health checks so that a worker notices a restarted Redis.
"""

from __future__ import annotations

import logging
import resource
import sys

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

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

log = logging.getLogger(__name__)


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
            # Tasks of a dead worker come back within seconds, not kombu's default 100 s.
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
    """Bytes of data segment (RLIMIT_DATA: heap and private anonymous mappings) a pool
    child may use: HARD_MEMORY_FACTOR times the soft ceiling, and never less than what
    the child holds at start plus the soft ceiling, so that a small ceiling still
    leaves room to work."""
    soft = soft_mb * 1024 * 1024
    return max(HARD_MEMORY_FACTOR * soft, data_now + soft)


def _data_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@worker_process_init.connect
def limit_child_memory(**_kwargs) -> None:
    """In each prefork child as it starts: the hard memory limit.  An allocation past
    it raises MemoryError in the task, which parks the message with its file
    (work/tasks.py); the child lives on, and the soft ceiling then replaces it."""
    settings = getattr(app, "kloros_settings", None)
    if settings is None:
        return
    limit = hard_memory_limit(settings.worker_max_memory_mb, _data_bytes())
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (OSError, ValueError) as exc:  # not Linux, or not permitted: the soft one stays
        log.warning("could not set the hard memory limit of a pool child: %s", exc)


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("kloros_tasks", include=["kloros_tasks.work.tasks"])
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


def settings_of(celery_app: Celery) -> Settings:
    return celery_app.kloros_settings
