"""What lives in Redis: the cross-file index (and its Lua scripts), the ledger of
open questions with its publisher, and the JSON snapshot of both.

May import ``kloros_tasks.detectors.base`` and the ground modules."""
