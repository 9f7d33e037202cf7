"""Soak: continuous edits for a while; memory of every process over time.

    .venv/bin/python bench/soak.py [--minutes M] [--quick] [--files N] [--interval S]
                                   [--sample S]

``up`` (one worker per queue, bridge, chem-proxy, a ZeroMQ subscriber) indexes a
generated tree (``--files``, 1,000; quick 100); then for ``--minutes`` (30; quick 1)
the toggle file is edited every ``--interval`` seconds (each edit timed to its
envelope on the Redis channel, as in latency.py), and every tenth edit also creates
one new module and deletes the one created ten edits before, so the index keeps
growing and shrinking.  PSS of every process and Redis ``used_memory`` are sampled
every ``--sample`` seconds (30; quick 10); the table compares the first sample
(after a minute of edits, or a quarter of the run if shorter) with the last.  The
stream grows by one entry per edit by design (trimmed at KLOROS_STREAM_MAXLEN), so
Redis grows with it.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from _measure import (
    REDIS,
    EditTimer,
    EditTimes,
    Listener,
    machine,
    mib,
    summary_ms,
    table,
    wait_quiet,
)
from _measure import workdir as make_workdir
from _pipeline import Up, pss_kib
from _trees import generate_tree, toggle_text

from kloros_tasks import names

FILES, QUICK_FILES = 1_000, 100
CHURN_EVERY = 10


def snapshot(up: Up) -> tuple[dict[str, int], set[int]]:
    """(PSS KiB per role, pids seen) now."""
    out: dict[str, int] = defaultdict(int)
    pids = set()
    for proc in up.processes():
        out[proc.role] += pss_kib(proc.pid) or 0
        pids.add(proc.pid)
    return dict(out), pids


def churn(root, step: int) -> None:
    directory = root / "soak"
    directory.mkdir(exist_ok=True)
    (directory / f"new_{step:06d}.py").write_text(toggle_text(step % 2))
    old = directory / f"new_{step - CHURN_EVERY:06d}.py"
    if old.exists():
        old.unlink()


def soak(up: Up, root, minutes: float, interval: float, every: float) -> dict:
    timer = EditTimer(root, Listener(up.url, up.xpub), (REDIS,))
    samples: list[tuple[float, dict[str, int], int, int]] = []
    latencies: list[tuple[float, list[float]]] = []
    pids: set[int] = set()
    started = time.monotonic()
    next_sample, step = started, 0
    try:
        while time.monotonic() - started < minutes * 60:
            wait_quiet(up)
            times = EditTimes()
            timer.edit(times)
            latencies.append((time.monotonic() - started, times.seconds[REDIS]))
            step += 1
            if step % CHURN_EVERY == 0:
                churn(root, step)
            if time.monotonic() >= next_sample:
                pss, seen = snapshot(up)
                pids |= seen
                samples.append((time.monotonic() - started, pss,
                                up.client.info("memory")["used_memory"],
                                up.client.xlen(names.STREAM)))
                next_sample += every
            time.sleep(interval)
    finally:
        timer.listener.close()
    return {"samples": samples, "latencies": latencies, "edits": step, "pids": pids}


def report(result: dict, minutes: float) -> None:
    samples = result["samples"]
    first_at = min(60.0, minutes * 60 / 4)
    base = next((s for s in samples if s[0] >= first_at), samples[0])
    last = samples[-1]
    rows = []
    for role in sorted(last[1]):
        series = [s[1].get(role, 0) for s in samples if s[0] >= base[0]]
        growth = last[1].get(role, 0) - base[1].get(role, 0)
        rows.append([role, mib(base[1].get(role)), mib(last[1].get(role)), mib(max(series)),
                     f"{growth / 1024:+.1f}"])
    rows.append(["Redis used_memory", mib(base[2] / 1024), mib(last[2] / 1024),
                 mib(max(s[2] for s in samples) / 1024), f"{(last[2] - base[2]) / 2**20:+.1f}"])
    print(table(["process (PSS MiB)", f"at {base[0]:.0f} s", f"at {last[0]:.0f} s", "max",
                 "growth"], rows))
    print(f"\nedits: {result['edits']}; stream entries {base[3]} -> {last[3]}; "
          f"processes seen: {len(result['pids'])}")
    half = minutes * 60 / 2
    for label, window in (("first half", lambda t: t < half), ("second half", lambda t: t >= half)):
        values = [v for t, vs in result["latencies"] if window(t) for v in vs]
        p50, p95, p99, worst, mean = summary_ms(values)
        print(f"latency to the Redis channel, {label}: p50 {p50} ms, p95 {p95} ms, "
              f"p99 {p99} ms, max {worst} ms ({len(values)} edits)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--quick", action="store_true", help="1 minute, 100 files")
    parser.add_argument("--files", type=int, help=f"generated tree size (default {FILES})")
    parser.add_argument("--interval", type=float, default=0.5, help="pause between edits")
    parser.add_argument("--sample", type=float, help="seconds between samples (30; quick 10)")
    args = parser.parse_args()
    minutes = args.minutes or (1.0 if args.quick else 30.0)
    files = args.files or (QUICK_FILES if args.quick else FILES)
    print(f"# soak: {minutes:g} minutes of edits every {args.interval:g} s on a {files}-file "
          "tree")
    print(f"machine: {machine()}\n")
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        up = Up(work, [root], chembus=True)
        try:
            up.start()
            up.wait_idle(expect_seen=files)
            every = args.sample or (10.0 if args.quick else 30.0)
            result = soak(up, root, minutes, args.interval, every)
        finally:
            up.stop()
    report(result, minutes)
    print("\ntarget: no growth beyond noise")


if __name__ == "__main__":
    main()
