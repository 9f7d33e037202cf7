"""How the watcher sends tasks: by name, through Celery, never importing the task module.

``Sender`` is the boundary the Syncer sends through (tests record what crosses it);
``CelerySender`` is the real one.
"""

from __future__ import annotations

from typing import Any, Protocol

from kloros_tasks import names
from kloros_tasks.settings import Settings


class Sender(Protocol):
    def send(self, detector: str, payload: dict[str, Any]) -> None:
        """Enqueue one analyze task for ``detector``; raise on a broker failure."""

    def send_batch(self, detector: str, payload: dict[str, Any]) -> None:
        """Enqueue one batch analyze task for ``detector``; raise on a broker failure."""


class CelerySender:
    """Sends tasks by name through the Celery app of ``kloros_tasks.celery_app``, loaded
    on first use; when the producer was given another Redis than the environment names,
    an app configured from the producer's settings, so both talk to the same Redis."""

    def __init__(self, settings: Settings | None = None, app: Any = None) -> None:
        self._settings, self._app = settings, app

    def _load(self) -> Any:
        from kloros_tasks import celery_app  # noqa: PLC0415 - configure Celery only when sending

        return celery_app.app if self._settings is None else celery_app.app_for(self._settings)

    def send(self, detector: str, payload: dict[str, Any]) -> None:
        if self._app is None:
            self._app = self._load()
        self._app.send_task(names.TASK_ANALYZE[detector], args=[payload], queue=detector)

    def send_batch(self, detector: str, payload: dict[str, Any]) -> None:
        if self._app is None:
            self._app = self._load()
        self._app.send_task(names.TASK_ANALYZE_BATCH[detector], args=[payload],
                            queue=detector)

    def declare(self) -> None:
        """(Re)create every task queue's binding in Redis.  kombu routes a message through
        ``_kombu.binding.<queue>`` and drops it silently when that key is gone (a flushed
        Redis); it declares a queue once per connection, so it would not notice."""
        if self._app is None:
            self._app = self._load()
        with self._app.connection_for_write() as connection:
            channel = connection.default_channel
            for queue in self._app.amqp.queues.values():
                queue.bind(channel).declare()
