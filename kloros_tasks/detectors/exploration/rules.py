"""ExplorationScanner, the pure part (2/2): the rules.  ``evaluate`` turns one host's
``Inventory`` plus the previous scan's state into the questions that hold now and the
next state; ``undetermined_rules`` names the rules a failed probe left undecided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kloros_tasks import names
from kloros_tasks.detectors.exploration.detector import (
    DISK_ERROR_PREFIX,
    Gpu,
    Inventory,
    normalize_package,
)
from kloros_tasks.questions import Question

# --- rules ----------------------------------------------------------------------------

STATE_VERSION = 1
GPU_LOW_UTIL = 20.0  # percent, sustained: medium
GPU_VERY_LOW_UTIL = 10.0  # percent, sustained: high
MEM_AVAILABLE_LOW = 0.10  # share of MemTotal still available: medium
MEM_AVAILABLE_VERY_LOW = 0.05  # high
SWAP_HEAVY = 0.50  # share of swap in use
DISK_FULL = 90.0  # percent used: medium
DISK_VERY_FULL = 95.0  # high
# A new kernel reserves a few MiB more or less; a DIMM or a VM resize changes far more.
MEMORY_CHANGE_TOLERANCE = 0.02

# Distributions that can drive an NVIDIA GPU.  A build whose local version names
# another target (torch 2.3.0+cpu, 2.3.0+rocm6.0) does not count; PyPI's plain jaxlib
# is CPU-only, so jaxlib counts only as a +cuda build (else via a jax-cuda plugin).
GPU_PACKAGES = frozenset({
    "cuda-python", "cupy", "numba", "onnxruntime-gpu", "paddlepaddle-gpu", "pycuda",
    "tensorflow", "tensorflow-gpu", "tensorrt", "torch", "xgboost",
})
GPU_PACKAGE_PREFIXES = ("cudf-cu", "cuml-cu", "cupy-cuda", "jax-cuda", "mxnet-cu")
_NOT_NVIDIA_BUILDS = ("+cpu", "+rocm")
_ML_PACKAGES = GPU_PACKAGES | {"jax", "jaxlib", "onnxruntime", "tensorflow-cpu"}
_CHANGE_KINDS = ("gpu_added", "gpu_removed", "memory_total", "logical_cores")


def gpu_capable(name: str, version: str) -> bool:
    """Whether this installed distribution can run work on an NVIDIA GPU."""
    name, version = normalize_package(name), version.lower()
    if any(tag in version for tag in _NOT_NVIDIA_BUILDS):
        return False
    if name == "jaxlib":
        return "+cuda" in version
    return name in GPU_PACKAGES or name.startswith(GPU_PACKAGE_PREFIXES)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _question(rule: str, host: str, tail: str, *, severity: str, hypothesis: str,
              question: str, evidence: list[str], suggestion: str,
              readings: Mapping[str, Any], confidence: float = 0.8) -> Question:
    # The subject names the host and the thing, never a reading, so a rescan with
    # other numbers is the same question.
    return Question(
        detector=names.EXPLORATION, rule=rule, subject=f"{rule}:{host}:{tail}",
        owner=host, hypothesis=hypothesis, question=question, severity=severity,
        confidence=confidence, suggestion=suggestion, evidence=tuple(evidence),
        paths=(), extra={"readings": dict(readings)},
    )


def _cpu_simd(inv: Inventory, host: str) -> list[Question]:
    cpu = inv.cpu
    if cpu is None:
        return []
    if "avx" in cpu.flags and "avx2" not in cpu.flags:
        tail, severity, have, lack = "avx_without_avx2", "low", "AVX", "AVX2"
        fix = ("Use builds that pick SIMD paths at run time or target AVX, or run "
               "vector-heavy work (inference, embeddings) on a host with AVX2.")
    elif "sse2" in cpu.flags and "avx" not in cpu.flags:
        # Medium: many prebuilt wheels assume AVX and die with "Illegal instruction".
        tail, severity, have, lack = "sse2_without_avx", "medium", "SSE2", "AVX"
        fix = "Use SSE-only builds of numeric libraries, or move that work to a host with AVX."
    else:
        return []
    simd = sorted(f for f in cpu.flags if f.startswith(("sse", "avx", "fma")))
    return [_question(
        "cpu_simd", host, tail, severity=severity,
        hypothesis=f"CPU_SIMD: {have} without {lack} on {host}",
        question=f"The CPU of {host} has {have} but no {lack}; are the numeric libraries "
                 "and models that run there built for it?",
        evidence=[f"{host}: {cpu.model}, {cpu.logical_cores} logical cores, "
                  f"flags include {have.lower()} but not {lack.lower()}"],
        suggestion=fix, readings={"model": cpu.model, "simd": simd})]


def _memory_pressure(inv: Inventory, host: str) -> list[Question]:
    mem = inv.memory
    if mem is None:
        return []
    available = mem.available / mem.total
    swap = mem.swap_used / mem.swap_total if mem.swap_total else 0.0
    low, heavy_swap = available < MEM_AVAILABLE_LOW, swap > SWAP_HEAVY
    if not (low or heavy_swap):
        return []
    if (low and heavy_swap) or available < MEM_AVAILABLE_VERY_LOW:
        severity = "high"
    else:  # swap alone is low: pages swapped out long ago may simply be idle
        severity = "medium" if low else "low"
    evidence = [f"{host}: MemAvailable {_size(mem.available)} of {_size(mem.total)} "
                f"({100 * available:.0f} %)"]
    if mem.swap_total:
        evidence.append(f"{host}: swap {_size(mem.swap_used)} of {_size(mem.swap_total)} "
                        f"in use ({100 * swap:.0f} %)")
    return [_question(
        "memory_pressure", host, "memory", severity=severity,
        hypothesis=f"MEMORY_PRESSURE: {host}",
        question=f"Is {host} running short of memory, and which process should be "
                 "limited or moved?",
        evidence=evidence,
        suggestion="Find the largest resident processes, cap them (worker memory limits, "
                   "cgroups) or add memory.",
        readings={"available_share": round(available, 4), "swap_share": round(swap, 4)})]


def _disk_pressure(inv: Inventory, host: str) -> list[Question]:
    out = []
    for disk in inv.disks or ():
        used = disk.percent_used
        if disk.mount.read_only or used is None or used <= DISK_FULL:
            continue
        point = disk.mount.mountpoint
        out.append(_question(
            "disk_pressure", host, point,
            severity="high" if used > DISK_VERY_FULL else "medium",
            hypothesis=f"DISK_PRESSURE: {point} on {host}",
            question=f"The filesystem at {point} on {host} is nearly full; what is filling "
                     "it, and can it be cleaned or grown?",
            evidence=[f"{host}: {point} ({disk.mount.device}, {disk.mount.fstype}) "
                      f"{used:.0f} % used, {_size(disk.free)} free"],
            suggestion="Remove old logs, caches and snapshots, or grow the filesystem.",
            readings={"percent_used": round(used, 1), "free": disk.free}))
    return out


def _gpu_history(previous: Mapping[str, list], gpus: tuple[Gpu, ...] | None,
                 n: int) -> dict[str, list]:
    if gpus is None:  # the probe failed: no reading, and no reason to forget old ones
        return {key: list(readings[-n:]) for key, readings in previous.items()}
    return {g.key: [*previous.get(g.key, []), g.utilization][-n:] for g in gpus}


def _gpu_underutilization(inv: Inventory, history: Mapping[str, list], host: str,
                          n: int) -> list[Question]:
    out = []
    for gpu in inv.gpus or ():
        readings = history.get(gpu.key, [])
        # Sustained means n known readings in a row; one idle moment is not a finding.
        if len(readings) < n or any(r is None for r in readings):
            continue
        peak = max(readings)
        if peak >= GPU_LOW_UTIL:
            continue
        shown = ", ".join(f"{r:g}" for r in readings)
        out.append(_question(
            "gpu_underutilization", host, gpu.key,
            severity="high" if peak < GPU_VERY_LOW_UTIL else "medium",
            hypothesis=f"GPU_UNDERUTILIZED: GPU {gpu.index} {gpu.name} on {host}",
            question=f"GPU {gpu.index} ({gpu.name}) on {host} has stayed nearly idle; could "
                     "work be moved onto it, or is it not needed there?",
            evidence=[f"{host}: GPU {gpu.index} {gpu.name} utilisation {shown} % over the "
                      f"last {n} scans"],
            suggestion="Route GPU-capable work (inference, embeddings, batch jobs) to this "
                       "GPU, or free it for another host.",
            readings={"utilization": list(readings), "memory_used_mib": gpu.memory_used_mib}))
    return out


def _accelerator_unused(inv: Inventory, host: str) -> list[Question]:
    if not inv.gpus or inv.packages is None:
        return []
    packages = {normalize_package(k): v for k, v in inv.packages.items()}
    if any(gpu_capable(name, version) for name, version in packages.items()):
        return []
    gpus = ", ".join(f"{g.index} {g.name}" for g in inv.gpus)
    evidence = [f"{host}: GPU {gpus}",
                f"{host}: none of {len(packages)} installed distributions can use a GPU"]
    cpu_only = sorted(f"{k} {v}" for k, v in packages.items() if k in _ML_PACKAGES)
    if cpu_only:
        evidence.append(f"{host}: CPU-only builds installed: {', '.join(cpu_only)}")
    return [_question(
        "accelerator_unused", host, "gpu", severity="medium",
        hypothesis=f"ACCELERATOR_UNUSED: {host}",
        question=f"{host} has a GPU but no installed library that can use it; should a "
                 "CUDA build of the numeric stack be installed?",
        evidence=evidence,
        suggestion="Install a CUDA build (torch, onnxruntime-gpu, cupy, jax[cuda12]) in "
                   "the environment that runs the work.",
        # Only the scanner's own environment is visible, so another venv may differ.
        readings={"gpus": len(inv.gpus), "cpu_only": cpu_only}, confidence=0.6)]


# --- hardware_change: a baseline inventory kept in the state ------------------------

def _summary(inv: Inventory) -> dict[str, Any]:
    return {
        "logical_cores": inv.cpu.logical_cores if inv.cpu else None,
        "memory_total": inv.memory.total if inv.memory else None,
        "gpus": {g.key: g.name for g in inv.gpus} if inv.gpus is not None else None,
    }


def _detect_changes(before: Mapping[str, Any] | None,
                    now: dict[str, Any]) -> tuple[list[dict], dict]:
    """Changes from the baseline, and the new baseline.  Unknown values (a failed probe)
    neither count as a change nor replace what the baseline knew."""
    if before is None:
        return [], now  # the first scan sets the baseline and reports nothing
    base, changes = dict(before), []
    for kind in ("logical_cores", "memory_total"):
        old, new = base.get(kind), now[kind]
        if new is None or old == new:
            continue
        if old is not None and kind == "memory_total" \
                and abs(new - old) <= MEMORY_CHANGE_TOLERANCE * old:
            continue  # the baseline stays, so that a slow drift still adds up
        if old is not None:
            changes.append({"kind": kind, "key": "", "name": "", "before": old, "after": new})
        base[kind] = new
    old_gpus, new_gpus = base.get("gpus"), now["gpus"]
    if new_gpus is not None:
        if old_gpus is not None:
            changes += [{"kind": "gpu_added", "key": k, "name": new_gpus[k]}
                        for k in sorted(new_gpus.keys() - old_gpus.keys())]
            changes += [{"kind": "gpu_removed", "key": k, "name": old_gpus[k]}
                        for k in sorted(old_gpus.keys() - new_gpus.keys())]
        base["gpus"] = new_gpus
    return changes, base


def _change_tail(change: Mapping[str, Any]) -> str:
    return f"{change['kind']}:{change['key']}" if change.get("key") else change["kind"]


def _hold(held: Mapping[str, dict], fresh: list[dict], hold_scans: int) -> dict[str, dict]:
    # A change is an event; it stays reported for hold_scans scans so that a rate-limited
    # channel and readers of the open questions still see it, then resolves.
    out = dict(held)
    for change in fresh:
        tail = _change_tail(change)
        opposite = {"gpu_added": "gpu_removed", "gpu_removed": "gpu_added"}.get(change["kind"])
        if opposite:  # a GPU that came back cancels its removal, and vice versa
            out.pop(f"{opposite}:{change['key']}", None)
        out[tail] = {**change, "left": hold_scans}
    return out


def _change_question(change: Mapping[str, Any], host: str) -> Question:
    kind, name, key = change["kind"], change.get("name", ""), change.get("key", "")
    if kind == "gpu_added":
        severity, hypothesis = "medium", f"GPU_ADDED: {name} on {host}"
        question = f"A GPU ({name}) appeared on {host}; should work be scheduled onto it?"
        evidence = f"{host}: GPU {name} ({key}) is new since the previous inventory"
        readings: dict[str, Any] = {"gpu": key}
    elif kind == "gpu_removed":
        severity, hypothesis = "high", f"GPU_REMOVED: {name} on {host}"
        question = f"GPU {name} is no longer visible on {host}; was it removed, or did it fail?"
        evidence = f"{host}: GPU {name} ({key}) was in the previous inventory and is gone"
        readings = {"gpu": key}
    else:
        what = "memory" if kind == "memory_total" else "logical core count"
        before, after = change["before"], change["after"]
        shown = _size if kind == "memory_total" else str
        severity = "low" if after > before else "medium"
        hypothesis = f"{kind.upper()}_CHANGED: {host}"
        question = f"The {what} of {host} changed since the last inventory; was that planned?"
        evidence = f"{host}: {what} {shown(before)} -> {shown(after)}"
        readings = {"before": before, "after": after}
    return _question("hardware_change", host, _change_tail(change), severity=severity,
                     hypothesis=hypothesis, question=question, evidence=[evidence],
                     suggestion="Confirm the change and update capacity plans and "
                                "placement; investigate if it was not planned.",
                     readings=readings)


# --- state ----------------------------------------------------------------------------

def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_reading(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _valid_change(c: Any) -> bool:
    if not isinstance(c, Mapping) or c.get("kind") not in _CHANGE_KINDS \
            or not isinstance(c.get("left"), int) or c["left"] < 1:
        return False
    if c["kind"].startswith("gpu_"):
        return isinstance(c.get("key"), str) and isinstance(c.get("name"), str)
    return _as_int(c.get("before")) is not None and _as_int(c.get("after")) is not None


def _clean_state(state: Any) -> dict[str, Any]:
    """The previous state with anything malformed dropped: a corrupt state costs one
    scan's worth of history, never an exception."""
    if not isinstance(state, Mapping) or state.get("v") != STATE_VERSION:
        state = {}
    inv = state.get("inventory")
    baseline = None
    if isinstance(inv, Mapping):
        gpus = inv.get("gpus")
        ok_gpus = isinstance(gpus, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in gpus.items())
        baseline = {"logical_cores": _as_int(inv.get("logical_cores")),
                    "memory_total": _as_int(inv.get("memory_total")),
                    "gpus": dict(gpus) if ok_gpus else None}
    util = state.get("gpu_util")
    history = {k: [_as_reading(r) for r in v] for k, v in util.items()
               if isinstance(k, str) and isinstance(v, list)} if isinstance(util, Mapping) else {}
    changes = state.get("changes")
    held = {t: dict(c) for t, c in changes.items()
            if isinstance(t, str) and _valid_change(c)} if isinstance(changes, Mapping) else {}
    return {"inventory": baseline, "gpu_util": history, "changes": held}


# --- the entry points ---------------------------------------------------------------

def evaluate(inventory: Inventory, state: Mapping[str, Any] | None, *, host: str,
             sustain_scans: int = 3, hold_scans: int = 3,
             ) -> tuple[list[Question], dict[str, Any]]:
    """Every question that holds for ``host`` now, and the state for the next scan.

    ``state`` is what the previous call returned (``{}`` or None on the first scan); it
    and the returned state are JSON-able and bounded (``sustain_scans`` utilisation
    readings per GPU, the baseline inventory, the changes still being reported).  GPU
    utilisation must stay low for ``sustain_scans`` scans in a row; a hardware change is
    reported for ``hold_scans`` scans from the one that saw it, never on the first scan.
    """
    sustain_scans, hold_scans = max(1, sustain_scans), max(1, hold_scans)
    prev = _clean_state(state)
    history = _gpu_history(prev["gpu_util"], inventory.gpus, sustain_scans)
    fresh, baseline = _detect_changes(prev["inventory"], _summary(inventory))
    held = _hold(prev["changes"], fresh, hold_scans)
    questions = [
        *_cpu_simd(inventory, host),
        *_memory_pressure(inventory, host),
        *_disk_pressure(inventory, host),
        *_gpu_underutilization(inventory, history, host, sustain_scans),
        *_accelerator_unused(inventory, host),
        *(_change_question(c, host) for c in held.values()),
    ]
    new_state = {
        "v": STATE_VERSION,
        "inventory": baseline,
        "gpu_util": history,
        "changes": {t: {**c, "left": c["left"] - 1} for t, c in held.items() if c["left"] > 1},
    }
    return questions, new_state


def undetermined_rules(inventory: Inventory) -> frozenset[str]:
    """Rules this inventory cannot decide because a probe failed.  Open questions of these
    rules must stay open (not be resolved) after this scan: a hung nvidia-smi is not a
    GPU that became busy."""
    out = set()
    if inventory.cpu is None:
        out.add("cpu_simd")
    if inventory.memory is None:
        out.add("memory_pressure")
    if inventory.disks is None or any(k.startswith(DISK_ERROR_PREFIX) for k in inventory.errors):
        out.add("disk_pressure")
    if inventory.gpus is None:
        out |= {"gpu_underutilization", "accelerator_unused"}
    if inventory.packages is None:
        out.add("accelerator_unused")
    return frozenset(out)
