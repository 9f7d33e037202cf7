"""What a task does: the thin Celery tasks, payload checks, content blobs, the
analysis and engine steps, the detector registry, the exploration scan and beat store.

May import ``state``, ``detectors`` and the ground modules."""
