"""kloros-tasks: event-driven code-curiosity questions on Celery and Redis.

Importing the package has no side effects: the Celery app lives in
``kloros_tasks.celery_app`` and is created only when that module is imported.
"""

__version__ = "0.1.0"
