"""Pure detectors: source text (and a read-only view of the cross-file index) in,
facts and questions out.  Nothing here imports Celery, Redis, ZeroMQ or watchdog,
touches files or reads the environment."""
