"""A capability worker reads its target environment from the cache in Redis for every
task; it parses it again only when the cached bytes changed."""

from __future__ import annotations

import hashlib
import json
import sys

from kloros_tasks import names
from kloros_tasks.settings import Settings
from kloros_tasks.work.registry import worker_detector

HOST = "node-env.example"


def _key() -> str:
    return names.environment(HOST, hashlib.sha256(sys.executable.encode()).hexdigest()[:16])


def test_an_unchanged_cache_gives_the_same_detector_and_no_change(redis_url, r):
    settings = Settings(redis_url=redis_url, host=HOST)
    first, _ = worker_detector(names.CAPABILITY, settings, r)
    again, changed = worker_detector(names.CAPABILITY, settings, r)
    assert again is first
    assert changed is False


def test_an_environment_another_worker_cached_is_the_one_judged_against(redis_url, r):
    settings = Settings(redis_url=redis_url, host=HOST)
    before, _ = worker_detector(names.CAPABILITY, settings, r)
    cached = json.loads(r.get(_key()))
    gone = cached["modules"][0]
    cached["modules"] = cached["modules"][1:]  # same fingerprint: still fresh
    r.set(_key(), json.dumps(cached))
    after, changed = worker_detector(names.CAPABILITY, settings, r)
    assert gone in before.environment.modules
    assert gone not in after.environment.modules
    assert changed is False  # a re-read cache, not a re-probed target
    assert worker_detector(names.CAPABILITY, settings, r)[0] is after
