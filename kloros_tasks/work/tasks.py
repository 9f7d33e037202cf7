"""Thin Celery tasks: count the delivery, hand the payload to analysis, log the outcome.

Cross-cutting behaviour lives in ``KlorosTask``: one Redis client and Publisher per
worker process (created after the fork), a delivery counter that parks a message
which keeps killing its worker in ``kloros:deadletter``, and retries with backoff
for transient Redis errors only.  Bad input is never retried.  Every task ends as a
success, a retry, or a dead-letter entry: an unexpected exception (a bug, a
``MemoryError`` at the hard memory limit) parks the message with the file, the
detector, the exception and the deliveries, instead of letting it vanish.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time

from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, worker_before_create_process, worker_init, worker_ready
from celery.utils.nodenames import worker_direct
from redis.exceptions import LockError

from kloros_tasks import names
from kloros_tasks.celery_app import SOFT_LIMIT_MARGIN, app, settings_of
from kloros_tasks.connections import TRANSIENT_ERRORS, is_transient, redis_client
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work import claims, deferral
from kloros_tasks.work.analysis import Context, handle_change
from kloros_tasks.work.batch import HANDED_OVER, handle_batch, split
from kloros_tasks.work.payload import file_of
from kloros_tasks.work.registry import preload, worker_detector
from kloros_tasks.work.settling import SETTLE_BEHIND, settle_for, settle_task

log = logging.getLogger(__name__)
TRANSIENT = TRANSIENT_ERRORS  # BUSY and LOADING replies included (connections.py)
CONTROL = (Reject, Retry, Ignore)  # Celery's own flow: never parked

REDIS_WAIT_FIRST, REDIS_WAIT_MAX = 0.25, 8.0
REDIS_WAIT_MARGIN = 10  # seconds kept free before the soft time limit
# A task gives up waiting for its root's lock this long before the soft time limit
# (the lock of a killed holder lasts up to the time limit) and is tried again later:
# waiting is not the file's fault, so it must not be parked as a poison.
LOCK_WAIT_MARGIN = 2


def _retryable(exc: BaseException) -> bool:
    """Redis unavailable for now, or the root's lock not had in time."""
    return is_transient(exc) or isinstance(exc, LockError)


class KlorosTask(Task):
    """Base of every task.  Transient Redis errors are waited out *inside* the task
    (tasks are idempotent, so running the body again is safe): Celery's own retry
    would have to publish through the broker that is down, and a failed retry
    rejects the message for good.  If Redis stays away past the deadline the task
    fails without an ack reaching Redis, so the message comes back after the
    visibility timeout."""

    abstract = True
    _client = None
    _pid = None

    @property
    def settings(self):
        return settings_of(self.app)

    @property
    def client(self):
        # One client per process: a client inherited across fork shares its sockets.
        if self._client is None or self._pid != os.getpid():
            type(self)._client = redis_client(self.settings.redis_url)
            type(self)._pid = os.getpid()
        return self._client

    def context(self) -> Context:
        publisher = Publisher(self.client, host=self.settings.host,
                              stream_maxlen=self.settings.stream_maxlen)
        return Context(self.client, publisher, self.settings.max_file_bytes,
                       schedule_settle=self.schedule_settle,
                       lock_timeout=self.settings.task_time_limit,
                       lock_wait=max(1.0, self.settings.task_time_limit - SOFT_LIMIT_MARGIN
                                     - LOCK_WAIT_MARGIN),
                       companions=self._companions if claims.sharing() else None,
                       claimant=self.request.id)

    def _companions(self, detector: str, root: str) -> list[tuple[object, bool]]:
        return [worker_detector(name, self.settings, self.client, root)
                for name in claims.others(detector)]

    def schedule_settle(self, detector: str, root: str, countdown: float | None = None, *,
                        behind: bool = False) -> None:
        """Queue a settle task behind the tasks waiting on ``detector``'s queue;
        ``behind``: the root's burst was over when it was queued (see _settle_task)."""
        self.app.send_task(names.TASK_SETTLE[detector],
                           args=[root, SETTLE_BEHIND] if behind else [root], queue=detector,
                           countdown=countdown)

    def __call__(self, *args, **kwargs):
        budget = self.settings.task_time_limit - SOFT_LIMIT_MARGIN - REDIS_WAIT_MARGIN
        deadline = time.monotonic() + max(1.0, budget)
        delay = REDIS_WAIT_FIRST
        while True:
            try:
                return self._call_once(*args, **kwargs)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    # A small exception without its chain: a long chained traceback
                    # sent back over the pool's pipe has desynchronised it before.
                    raise Reject(f"redis or the root's lock unavailable: {exc}",
                                 requeue=True) from None
                log.warning("%s: redis or the root's lock unavailable (%s); trying again"
                            " in %.2f s",
                            self.name, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, REDIS_WAIT_MAX)

    def _call_once(self, *args, **kwargs):
        task_id = self.request.id
        if task_id and self._over_delivered(task_id, args):
            return "dead-lettered"
        try:
            result = super().__call__(*args, **kwargs)
        except SoftTimeLimitExceeded:
            # Deterministic: the same input would time out again, so park it now.
            self._give_up(task_id, args, f"exceeded the {self.settings.task_time_limit} s"
                          " time limit")
            return "dead-lettered"
        except CONTROL:
            raise
        except Exception as exc:
            if _retryable(exc):
                raise  # waited out by __call__
            # A bug or a MemoryError: running it again would fail the same way, and
            # with late acks and no requeue Celery would drop the message silently.
            exc.__traceback__ = None  # let what the failed task held be freed first
            self._give_up(task_id, args, "raised an unexpected exception",
                          exception=_exception_line(exc))
            return "dead-lettered"
        if task_id:
            self.client.delete(names.attempts(task_id))
        return result

    def _over_delivered(self, task_id: str, args) -> bool:
        key = names.attempts(task_id)
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.settings.visibility_timeout * (self.settings.max_deliveries + 2))
        deliveries = pipe.execute()[0]
        if deliveries <= self.settings.max_deliveries:
            return False
        self._give_up(task_id, args, f"delivered {deliveries} times; its worker died each time")
        self.client.delete(key)
        return True

    def _give_up(self, task_id, args, reason: str, exception: str | None = None) -> None:
        """What becomes of a message that cannot succeed: parked as a dead letter."""
        self._dead_letter(task_id, args, reason, exception)

    def _dead_letter(self, task_id, args, reason: str, exception: str | None = None) -> None:
        deliveries = self.client.get(names.attempts(task_id)) if task_id else None
        file = file_of(args)
        entry = {"task": self.name, "id": task_id, "args": list(args), "reason": reason,
                 "ts": time.time(), "file": file, "detector": self.name.split(".")[1],
                 "exception": exception, "deliveries": int(deliveries or 1)}
        log.error("%s %s parked in %s: %s%s%s", self.name, task_id, names.DEADLETTER,
                  reason, f" ({file})" if file else "", f": {exception}" if exception else "")
        pipe = self.client.pipeline()
        pipe.rpush(names.DEADLETTER, json.dumps(entry, default=str))
        if task_id:
            pipe.delete(names.attempts(task_id))
        pipe.execute()


class BatchTask(KlorosTask):
    """Base of the batch tasks: a batch that cannot succeed is split, not parked, so
    one poison file does not take the rest of its batch with it."""

    abstract = True

    def _give_up(self, task_id, args, reason: str, exception: str | None = None) -> None:
        detector = self.name.split(".")[1]
        sent = split(self.client, args[0] if len(args) == 1 else None,
                     lambda payload: self.app.send_task(names.TASK_ANALYZE[detector],
                                                        args=[payload], queue=detector))
        if sent is None:
            super()._give_up(task_id, args, reason, exception)
            return
        log.warning("%s %s %s%s; sent its %d changes again one by one", self.name, task_id,
                    reason, f": {exception}" if exception else "", sent)
        if task_id:
            self.client.delete(names.attempts(task_id))


def _exception_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:500]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _analyze(task: KlorosTask, detector_name: str, args: tuple, kwargs: dict) -> str:
    # Accept any call shape so that a malformed message is refused and acknowledged
    # by handle_change instead of failing inside Celery's argument binding.
    payload = args[0] if len(args) == 1 and not kwargs else {"args": list(args), **kwargs}
    root = payload.get("root") if isinstance(payload, dict) else None
    detector, environment_changed = worker_detector(detector_name, task.settings, task.client,
                                                    root if isinstance(root, str) else None)
    context = task.context()
    handle = handle_batch if isinstance(task, BatchTask) else handle_change
    outcome = handle(context, detector, payload, reevaluate_all=environment_changed)
    log.debug("%s %s: %s", task.name, task.request.id, outcome)
    if outcome == HANDED_OVER:  # sent again before this delivery is acknowledged
        task.app.send_task(task.name, args=[payload], queue=detector_name,
                           countdown=claims.recheck_after(task.client, detector_name))
        return outcome
    pipe = task.client.pipeline(transaction=False)
    pipe.llen(detector_name)
    pipe.hkeys(names.ROOTS)
    waiting, registered = pipe.execute()
    if not waiting:
        # The burst is over: evaluate what its changes deferred (see analysis.py); a
        # batch leaves it to a settle task, whose time limit is all its own.
        for root in deferral.deferred_roots(task.client, detector_name, registered):
            if handle is handle_batch:
                task.schedule_settle(detector_name, root)
            else:
                settle_for(task, context, detector, root)
    return outcome


@app.task(name=names.TASK_ANALYZE[names.KNOWLEDGE], base=KlorosTask, bind=True)
def analyze_knowledge(self, *args, **kwargs):
    return _analyze(self, names.KNOWLEDGE, args, kwargs)


@app.task(name=names.TASK_ANALYZE[names.INTEGRATION], base=KlorosTask, bind=True)
def analyze_integration(self, *args, **kwargs):
    return _analyze(self, names.INTEGRATION, args, kwargs)


@app.task(name=names.TASK_ANALYZE[names.CAPABILITY], base=KlorosTask, bind=True)
def analyze_capability(self, *args, **kwargs):
    return _analyze(self, names.CAPABILITY, args, kwargs)


@app.task(name=names.TASK_ANALYZE_BATCH[names.KNOWLEDGE], base=BatchTask, bind=True)
def analyze_batch_knowledge(self, *args, **kwargs):
    return _analyze(self, names.KNOWLEDGE, args, kwargs)


@app.task(name=names.TASK_ANALYZE_BATCH[names.INTEGRATION], base=BatchTask, bind=True)
def analyze_batch_integration(self, *args, **kwargs):
    return _analyze(self, names.INTEGRATION, args, kwargs)


@app.task(name=names.TASK_ANALYZE_BATCH[names.CAPABILITY], base=BatchTask, bind=True)
def analyze_batch_capability(self, *args, **kwargs):
    return _analyze(self, names.CAPABILITY, args, kwargs)


@app.task(name=names.TASK_SETTLE[names.KNOWLEDGE], base=KlorosTask, bind=True)
def settle_knowledge(self, *args, **kwargs):
    return settle_task(self, names.KNOWLEDGE, args, kwargs)


@app.task(name=names.TASK_SETTLE[names.INTEGRATION], base=KlorosTask, bind=True)
def settle_integration(self, *args, **kwargs):
    return settle_task(self, names.INTEGRATION, args, kwargs)


@app.task(name=names.TASK_SETTLE[names.CAPABILITY], base=KlorosTask, bind=True)
def settle_capability(self, *args, **kwargs):
    return settle_task(self, names.CAPABILITY, args, kwargs)


@app.task(name=names.TASK_EXPLORATION_SCAN, base=KlorosTask, bind=True)
def exploration_scan(self, *args, fanned: bool = False, **kwargs):
    """Scan this host; a scan from beat (not ``fanned``) also asks one exploration worker
    on every other host to scan its own, through that worker's direct queue."""
    from kloros_tasks.work.exploration_scan import other_hosts_nodes, register_node, run_scan  # noqa: PLC0415

    if args or kwargs:
        log.warning("%s takes no arguments; ignoring %r %r", self.name, args, kwargs)
    settings = self.settings
    now = time.time()
    register_node(self.client, self.request.hostname, settings.host, now)
    if not fanned:
        expires = max(1.0, settings.exploration_interval * 0.9)
        for node in other_hosts_nodes(self.client, settings.host,
                                      settings.exploration_interval, now):
            self.app.send_task(self.name, kwargs={"fanned": True},
                               queue=worker_direct(node), expires=expires)
    result = run_scan(self.client, self.context().publisher, settings)
    return "skipped" if result is None else f"{len(result.opened)} opened"


@task_failure.connect
def park_failed_task(sender=None, task_id=None, exception=None, args=None, **_kwargs):
    """The last net: a task that failed past KlorosTask's own handling (an exception
    lost at the hard memory limit surfaces as a SystemError) is parked, not dropped.
    A hard time limit or a lost worker is not: its message comes back and is counted."""
    if not isinstance(sender, KlorosTask) or isinstance(
            exception, (*CONTROL, TimeLimitExceeded, WorkerLostError)):
        return
    try:
        sender._give_up(task_id, tuple(args or ()), "failed",
                            exception=_exception_line(exception) if exception else None)
    except Exception as exc:  # noqa: BLE001 - logged; the message is lost to Celery anyway
        log.error("could not park failed task %s %s: %s", sender.name, task_id, exc)


@worker_before_create_process.connect
def preload_task_modules(**_kwargs) -> None:
    """In the worker parent, before it forks a pool process: import what the tasks of
    its queues use, and freeze it with the rest of the parent's heap (celery_app's
    freeze_heap ran just before), so that every pool process, a replacement included,
    shares those pages instead of importing them at its first task."""
    before = len(sys.modules)
    preload(app.amqp.queues.consume_from)
    if len(sys.modules) != before:
        gc.freeze()


@worker_init.connect
def prepare_pool(sender=None, **_kwargs) -> None:
    """In the worker parent, before its pool forks (which inherits the setting)."""
    claims.serve(app.amqp.queues.consume_from)


@worker_ready.connect
def register_exploration_worker(sender=None, **_kwargs):
    """An exploration worker joins the fan-out as soon as it starts, not at its first scan."""
    from kloros_tasks.work.exploration_scan import register_node  # noqa: PLC0415

    consumer = sender
    if consumer is None or names.EXPLORATION not in consumer.app.amqp.queues.consume_from:
        return
    settings = settings_of(consumer.app)
    client = redis_client(settings.redis_url)
    try:
        register_node(client, consumer.hostname, settings.host, time.time())
    except TRANSIENT as exc:
        log.warning("could not register %s for exploration fan-out: %s", consumer.hostname, exc)
    finally:
        client.close()
