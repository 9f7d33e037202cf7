"""``up`` asks its embedded Redis to rewrite the AOF only after a quiet spell at rest,
once per spell (cli/up.py), so that the fork never copies the pages of a burst."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

from kloros_tasks.cli import up
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client


def rewrites(client) -> int:
    return int(client.info("persistence").get("aof_rewrites", 0))


def test_the_aof_is_rewritten_once_the_analysis_was_idle_long_enough_and_once_only():
    with EmbeddedRedis(Path(tempfile.mkdtemp(prefix="kl-cmp-"))) as server:
        client = redis_client(server.url)
        pipe = client.pipeline(transaction=False)
        for i in range(up.IDLE_REWRITE_GROWTH // 4096 + 100):
            pipe.set("kloros:test", f"{i % 10}" * 4096)
        pipe.execute()
        progress = up.Progress(stream=io.StringIO())
        progress.busy, progress.idle_since = False, time.monotonic()  # idle just now
        up._compact_when_quiet(client, progress)
        assert rewrites(client) == 0 and progress.idle_since is not None
        progress.idle_since -= up.REWRITE_AFTER_IDLE  # the quiet spell is long enough
        up._compact_when_quiet(client, progress)
        deadline = time.monotonic() + 30
        while client.info("persistence")["aof_rewrite_in_progress"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert rewrites(client) == 1 and progress.idle_since is None
        up._compact_when_quiet(client, progress)  # the same spell: not again
        assert rewrites(client) == 1
        client.close()
