"""Every queue, task, channel, stream and Redis key name, in one place.

These names are an outside-facing contract (see docs/architecture.md): operators
type them into ``redis-cli`` and other programs subscribe to them.  Nothing else
in the package spells a key by hand.
"""

from __future__ import annotations

PREFIX = "kloros:"

# --- detectors, queues and tasks -------------------------------------------------
INTEGRATION = "integration"
CAPABILITY = "capability"
KNOWLEDGE = "knowledge"
EXPLORATION = "exploration"

DETECTORS = (INTEGRATION, CAPABILITY, KNOWLEDGE, EXPLORATION)
QUEUES = DETECTORS  # one Redis list per detector, named after it

TASK_ANALYZE = {
    INTEGRATION: "kloros.integration.analyze",
    CAPABILITY: "kloros.capability.analyze",
    KNOWLEDGE: "kloros.knowledge.analyze",
}
# One task for a bounded batch of changes of one root (a reconciliation, a storm), on
# the same queue as the single-file task of its detector.
TASK_ANALYZE_BATCH = {
    INTEGRATION: "kloros.integration.analyze_batch",
    CAPABILITY: "kloros.capability.analyze_batch",
    KNOWLEDGE: "kloros.knowledge.analyze_batch",
}
TASK_SETTLE = {
    INTEGRATION: "kloros.integration.settle",
    CAPABILITY: "kloros.capability.settle",
    KNOWLEDGE: "kloros.knowledge.settle",
}
TASK_EXPLORATION_SCAN = "kloros.exploration.scan"

# A Python package's marker: where one appears or goes, the modules below it change
# names (detectors/layout.py); the watcher sends a bulk change's markers first.
PACKAGE_FILE = "__init__.py"

# File detectors that are live, and the file suffixes each one analyses.  The
# producer routes changes with this table; a detector joins it when its rules land.
# Entries starting with "." and holding no other "." are suffixes; others are globs
# matched against the file's basename.
FILE_DETECTOR_SUFFIXES: dict[str, tuple[str, ...]] = {
    # Configuration files: where a docstring policy is declared (``[.]flake8``: a
    # glob, since an entry starting with "." and no other "." would be a suffix);
    # PKG-INFO: an sdist's name and version.
    KNOWLEDGE: (".py", ".md", ".rst", ".txt", "pyproject.toml", "ruff.toml", ".ruff.toml",
                "setup.cfg", "tox.ini", "[.]flake8", "[.]pydocstyle*", "PKG-INFO"),
    INTEGRATION: (".py",),
    # capability also reads what sets or documents environment variables (see
    # detectors/capability/envfiles.py): a variable a README or docs page documents is
    # documented.  Its wants_path narrows ".txt" to requirements and docs, and PKG-INFO
    # (an sdist's Requires-Dist) to the root's.
    CAPABILITY: (".py", "pyproject.toml", "setup.cfg", ".txt", ".md", ".rst", ".sh", ".bash",
                 ".service", "*.env", ".env.*", "env.example", "*.env.example",
                 "docker-compose*.yml", "docker-compose*.yaml", "compose*.yml", "compose*.yaml",
                 "Dockerfile*", "*.dockerfile", "PKG-INFO"),
}

# --- pub/sub channels (equal to the envelope's ``signal``) -----------------------
CHANNEL = {
    INTEGRATION: "curiosity.integration_question",
    CAPABILITY: "curiosity.capability_question",
    KNOWLEDGE: "curiosity.knowledge_question",
    EXPLORATION: "curiosity.exploration_question",
}
CHANNEL_RESOLVED = "curiosity.question_resolved"
CHANNEL_PATTERN = "curiosity.*"

CATEGORY = {d: f"{d}_discovery" for d in DETECTORS}
SOURCE = {
    INTEGRATION: "integration_monitor",
    CAPABILITY: "capability_discovery",
    KNOWLEDGE: "knowledge_discovery",
    EXPLORATION: "exploration_scanner",
}

# --- durable stream ---------------------------------------------------------------
STREAM = "kloros:questions"
STREAM_FIELD = "envelope"
BRIDGE_GROUP = "chembus-bridge"

# --- keys ---------------------------------------------------------------------------
LEDGER = "kloros:ledger"  # HASH question_id -> open envelope JSON
RESOLUTIONS = "kloros:resolutions"  # HASH stable question id -> times it was resolved
ROOTS = "kloros:roots"  # HASH root name -> JSON {path, host}
# LIST of JSON {task, id, args, reason, ts, file, detector, exception, deliveries}
DEADLETTER = "kloros:deadletter"
SYNTAX_ERRORS = "kloros:syntax_errors"  # HASH "<root>:<path>" -> "line N: message"
WATCHER_HEARTBEAT = "kloros:watcher:heartbeat"  # STRING JSON, with TTL
UP_STATE = "kloros:up"  # STRING JSON {pid, host, ts, children}, with TTL: kloros-tasks up
EXPLORATION_LAST_SCAN = "kloros:exploration:last_scan"  # HASH host -> time of the last scan
EXPLORATION_NODES = "kloros:exploration:nodes"  # HASH worker node -> JSON {host, seen}


def blob(sha256: str) -> str:
    """STRING: a file's content, addressed by its sha256 (with a TTL)."""
    return f"kloros:blob:{sha256}"


def blob_refs(sha256: str) -> str:
    """STRING counter: tasks that still need the blob; the last one deletes it."""
    return f"kloros:blobrefs:{sha256}"


def seen(root: str) -> str:
    """HASH relpath -> "sha256 mtime_ns size" of what the producer last enqueued."""
    return f"kloros:seen:{root}"


def facts(detector: str, root: str) -> str:
    """HASH relpath -> "<file id>:" and the zlib-compressed facts JSON the detector
    extracted from that file (see index.py)."""
    return f"kloros:facts:{detector}:{root}"


# The inverted index of one detector on one root lives under one prefix, so that
# ``redis-cli --scan --pattern 'kloros:ix:<detector>:<root>:*'`` lists all of it.
def index_meta(detector: str, root: str) -> str:
    """HASH: the index's ``level`` and ``split`` (bucket addressing), ``entries``, the
    last file id handed out (``ids``), and ``ordered`` ("1" once the index keeps its
    ordered relations' holders in ``index_order`` sets: every index created since)."""
    return f"kloros:ix:{detector}:{root}:meta"


# Given "" for the bucket or digest, these give the prefix to which index.py's
# lookup script appends the bucket number or digest it computes.
def index_bucket(detector: str, root: str, bucket: int | str) -> str:
    """HASH 8-byte value digest -> packed holder file ids (or "*": see index_spill)."""
    return f"kloros:ix:{detector}:{root}:b:{bucket}"


def index_spill(detector: str, root: str, digest_hex: str) -> str:
    """STRING: the packed holder ids of one value with too many holders to stay inline."""
    return f"kloros:ix:{detector}:{root}:h:{digest_hex}"


def index_order(detector: str, root: str, digest_hex: str) -> str:
    """ZSET (every score 0, so in byte order): the holder paths of one value of a
    relation the index keeps in path order (``detectors.base.ORDERED``)."""
    return f"kloros:ix:{detector}:{root}:o:{digest_hex}"


def index_paths(detector: str, root: str, bucket: int | str) -> str:
    """HASH file id -> relpath, for ids in [bucket * 128, bucket * 128 + 127]."""
    return f"kloros:ix:{detector}:{root}:p:{bucket}"


def index_pending(detector: str, root: str) -> str:
    """HASH relpath -> "<file id>:" and the zlib-compressed JSON of the (relation, value)
    pairs of its last change, from before the index is touched until the questions it
    affects are published or deferred: what a retry needs to finish or settle it."""
    return f"kloros:ix:{detector}:{root}:pending"


def owned(detector: str, root: str, path: str) -> str:
    """SET of open question ids owned by (raised about) one file."""
    return f"kloros:owned:{detector}:{root}:{path}"


def lock(detector: str, root: str) -> str:
    """Short lock serialising index updates of one detector on one root."""
    return f"kloros:lock:{detector}:{root}"


def lock_waiting(detector: str, root: str) -> str:
    """STRING (with a TTL of a few lock polls): set by a worker that found the root's
    lock held and waits for it, so that a settle pauses between two holds only then."""
    return f"kloros:lock-waiting:{detector}:{root}"


def deferred(detector: str, root: str) -> str:
    """SET of relpaths whose evaluation waits until the detector's queue is drained."""
    return f"kloros:deferred:{detector}:{root}"


# A member of the deferred set that no relpath can be: every file of the root is to be
# evaluated (listed from the index when the settle begins).
WHOLE_ROOT = "/"


def settling(detector: str, root: str) -> str:
    """STRING (with a TTL): the id of the task settling (detector, root) now; another
    settle task of the root comes back later instead of taking turns with it."""
    return f"kloros:settling:{detector}:{root}"


def deferred_since(detector: str, root: str) -> str:
    """STRING: when the oldest deferred evaluation of (detector, root) was deferred."""
    return f"kloros:deferred-since:{detector}:{root}"


def burst(root: str) -> str:
    """STRING (with a TTL): held by the watcher while it sends a reconciliation or a
    storm of changes of ``root``; workers defer judging the root's files meanwhile."""
    return f"kloros:burst:{root}"


def batch_claim(root: str, digest_hex: str) -> str:
    """STRING: the task id of the batch task that applies a batch's Python files for
    every file detector its worker serves (TTL the task time limit), then "done" (TTL
    CLAIM_DONE_TTL): the other detectors' tasks of the same batch leave those files to
    it instead of parsing them again (work/claims.py)."""
    return f"kloros:claim:{root}:{digest_hex}"


def claiming(root: str) -> str:
    """ZSET "<task id> <claim key>" -> when its claim expires: the batch tasks applying
    a claimed batch of ``root`` for several detectors now.  The root's burst goes on
    while one does: no settle judges a detector whose share is still to come."""
    return f"kloros:claiming:{root}"


def layout_order(root: str) -> str:
    """ZSET "<task id> <claim key>" -> batch stamp: the claimants applying package
    markers of ``root`` now; a claimant of a later batch waits for them before it
    names its modules (work/claims.py)."""
    return f"kloros:layout:{root}"


def attempts(task_id: str) -> str:
    """Counter of deliveries of one task message (for the dead-letter path)."""
    return f"kloros:attempts:{task_id}"


def instance_lock(state_dir_id: str) -> str:
    return f"kloros:up:{state_dir_id}"


SKIPPED = "kloros:skipped"  # HASH "<detector>:<root>:<path>" -> why the file was not analysed

# --- the ChemBus bridge ---------------------------------------------------------------
# HASH question_id (a question) or incident_id (a resolution) -> envelope waiting to be sent
BRIDGE_HELD = "kloros:bridge:held"
BRIDGE_HEARTBEAT = "kloros:bridge:heartbeat"  # STRING JSON, with TTL
# ZSET incident_id scored by time: resolution notices waiting for a subscriber, oldest first
BRIDGE_RESOLUTIONS = "kloros:bridge:backlog:resolved"
# HASH detector -> questions resolved while they waited, never sent (and
# "resolutions_trimmed": resolution notices dropped from an over-long backlog)
BRIDGE_CANCELLED = "kloros:bridge:cancelled"
# HASH topic -> since when the bridge has had something of it to send and no subscriber
BRIDGE_UNSUBSCRIBED = "kloros:bridge:unsubscribed"


def bridge_backlog(detector: str) -> str:
    """ZSET question_id scored by severity then age: what waits for the detector's budget
    or for a subscriber of its topic."""
    return f"kloros:bridge:backlog:{detector}"


BRIDGE_BACKLOGS = (*(bridge_backlog(d) for d in DETECTORS), BRIDGE_RESOLUTIONS)


def bridge_sent(detector: str) -> str:
    """ZSET incident_id -> send time: the sliding window the budget is counted in."""
    return f"kloros:bridge:sent:{detector}"


# --- exploration ---------------------------------------------------------------------
def exploration_state(host: str) -> str:
    """STRING JSON: one host's previous inventory and recent readings."""
    return f"kloros:exploration:state:{host}"


def exploration_lock(host: str) -> str:
    """Held while (and shortly after) a host scans, so duplicate sends do nothing."""
    return f"kloros:exploration:lock:{host}"


def exploration_opened(host: str) -> str:
    """ZSET question_id -> time opened: the channel rate window of one host."""
    return f"kloros:exploration:opened:{host}"


def environment(host: str, python_digest: str) -> str:
    """STRING JSON: the probed target environment of one interpreter on one host."""
    return f"kloros:env:{host}:{python_digest}"
