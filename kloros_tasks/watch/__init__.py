"""The producer's edge: the watchdog observer, pure path filters, debounce, the
reconciliation against Redis (``sync``) and safe tree walking.

May import ``kloros_tasks.work.payload`` and ``kloros_tasks.work.blobs`` (what a task
carries) and the ground modules; it sends tasks by name and never imports the tasks."""
