"""The exploration scanner's thin I/O edge: read /proc and /sys, measure mounts, ask
``nvidia-smi``, list installed distributions; every parse is in
``kloros_tasks.detectors.exploration.detector`` (parsers) and ``exploration_rules`` (rules).

Every probe is optional and bounded in time.  A probe that fails gives None and a
reason instead of raising, so one broken source never costs the whole scan.  Blocking
calls (``statvfs`` on a hung NFS mount, a wedged GPU driver) run in daemon threads or
child processes that are abandoned at their deadline: a daemon thread does not keep
the worker from exiting, which a ``concurrent.futures`` pool would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from kloros_tasks.detectors.exploration.detector import (
    DISK_ERROR_PREFIX,
    DiskUsage,
    Inventory,
    Mount,
    normalize_package,
    parse_cpuinfo,
    parse_governor,
    parse_loadavg,
    parse_meminfo,
    parse_mountinfo,
    parse_mounts,
    parse_nvidia_smi,
)

T = TypeVar("T")
Result = tuple[Any, str | None]  # (value, or None and the reason it failed)
DEFAULT_TIMEOUT = 5.0
# The uuid column, after the six fields the parser requires, gives each GPU an identity
# that survives a reordering of indexes.
GPU_QUERY = "index,name,memory.total,memory.used,utilization.gpu,temperature.gpu,uuid"
# After a kill, how long to wait for the killed process group to let go of its pipes.
KILL_GRACE = 1.0

# Mount points whose usage call has not returned yet.  A mount that hangs in the kernel
# would otherwise strand one more thread on every scan.
_pending_mounts: set[str] = set()
_pending_lock = threading.Lock()


@dataclass(frozen=True)
class Sources:
    """Where each probe looks; tests point these at recorded files and fake commands."""

    cpuinfo: str = "/proc/cpuinfo"
    meminfo: str = "/proc/meminfo"
    mounts: str = "/proc/self/mountinfo"  # a file named *mounts is read as /proc/mounts
    loadavg: str = "/proc/loadavg"
    governor: str = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
    nvidia_smi: str = "nvidia-smi"
    library_path: tuple[str, ...] | None = None  # sys.path of this interpreter when None


def read_text(path: str) -> str:
    """A small text file, decoded leniently (kernel files are ASCII, but be safe)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read(1 << 20)


def _parsed(path: str, parse: Callable[[str], T]) -> tuple[T | None, str | None]:
    try:
        text = read_text(path)
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    value = parse(text)
    return value, None if value is not None else f"{path}: nothing readable"


def probe_cpu(path: str = Sources.cpuinfo) -> Result:
    return _parsed(path, parse_cpuinfo)


def probe_memory(path: str = Sources.meminfo) -> Result:
    return _parsed(path, parse_meminfo)


def probe_load(path: str = Sources.loadavg) -> Result:
    return _parsed(path, parse_loadavg)


def probe_governor(path: str = Sources.governor) -> Result:
    """The cpufreq governor of CPU 0; (None, None) where there is no cpufreq (most
    virtual machines), which is normal and not a failure."""
    if not os.path.exists(path):
        return None, None
    return _parsed(path, parse_governor)


def probe_disks(mounts: Sequence[Mount], timeout: float = DEFAULT_TIMEOUT,
                usage: Callable[[str], Any] = shutil.disk_usage,
                ) -> tuple[tuple[DiskUsage, ...], dict[str, str]]:
    """Usage of every mount, measured in parallel within ``timeout`` seconds in all;
    a mount that errs or hangs is left out and named in the returned reasons."""
    results: dict[str, tuple[Any, str | None]] = {}
    threads, reasons = [], {}
    for mount in mounts:
        point = mount.mountpoint
        with _pending_lock:
            if point in _pending_mounts:
                reasons[point] = "an earlier usage call on it has not returned"
                continue
            _pending_mounts.add(point)
        thread = threading.Thread(target=_measure, args=(point, usage, results),
                                  name="kloros-statvfs", daemon=True)
        thread.start()
        threads.append((mount, thread))
    deadline = time.monotonic() + timeout
    disks = []
    for mount, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        value, reason = results.get(mount.mountpoint, (None, None))
        if thread.is_alive() or value is None:
            reasons[mount.mountpoint] = reason or f"no answer within {timeout:g} s"
        else:
            disks.append(DiskUsage(mount, int(value.total), int(value.used), int(value.free)))
    return tuple(disks), reasons


def _measure(point: str, usage: Callable[[str], Any], results: dict) -> None:
    try:
        results[point] = (usage(point), None)
    except OSError as exc:
        results[point] = (None, exc.strerror or str(exc))
    finally:
        with _pending_lock:
            _pending_mounts.discard(point)


def probe_gpus(command: str = Sources.nvidia_smi, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """NVIDIA GPUs from ``nvidia-smi``.  No such command: ``((), None)``, a host without
    GPUs.  A non-zero exit, a timeout or unreadable output: None and the reason."""
    executable = shutil.which(command)
    if executable is None:
        return (), None
    argv = [executable, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"]
    try:
        # A session of its own, so that a timeout kills whatever the tool started too.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
    except FileNotFoundError:
        return (), None
    except OSError as exc:
        return None, f"{command}: {exc.strerror or exc}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None, f"{command} gave no answer within {timeout:g} s"
    if proc.returncode != 0:
        if "no devices were found" in out.lower():
            return (), None
        first = next((ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()), "")
        return None, f"{command} exited with status {proc.returncode}: {first[:200]}"
    gpus = parse_nvidia_smi(out)
    return (gpus, None) if gpus is not None else (None, f"{command}: no readable GPU line")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        # Stuck in the kernel (a wedged driver): SIGKILL lands when it returns.  Close
        # our ends of the pipes rather than wait for it.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def probe_packages(path: Sequence[str] | None = None) -> Result:
    """Installed distributions as {normalised name: version}, from their metadata only:
    nothing is imported, so a broken CUDA install cannot crash or slow the scan."""
    found: dict[str, str] = {}
    dists = metadata.distributions() if path is None else metadata.distributions(path=list(path))
    for dist in dists:
        try:
            meta = dist.metadata
            name, version = meta.get("Name"), meta.get("Version")
        except (OSError, UnicodeDecodeError, TypeError):
            continue  # one broken .dist-info must not hide every other package
        if name:
            found.setdefault(normalize_package(name), version or "")
    return found, None


def collect(timeout: float = DEFAULT_TIMEOUT, sources: Sources | None = None) -> Inventory:
    """This host's Inventory, the probes running side by side; returns within about
    ``timeout`` seconds plus a short grace, whatever hangs.  Failed probes leave their
    field None and a reason in ``Inventory.errors``."""
    src = sources or Sources()
    jobs: dict[str, Callable[[], Any]] = {
        "cpu": lambda: probe_cpu(src.cpuinfo),
        "memory": lambda: probe_memory(src.meminfo),
        "load": lambda: probe_load(src.loadavg),
        "governor": lambda: probe_governor(src.governor),
        "gpus": lambda: probe_gpus(src.nvidia_smi, timeout),
        "packages": lambda: probe_packages(src.library_path),
        "disks": lambda: _disks_from(src.mounts, timeout),
    }
    # Inner probes own their timeouts; the outer bound (plus the kill grace) only
    # catches what they could not, so they get the chance to clean up first.
    started = {name: _start(job) for name, job in jobs.items()}
    deadline = time.monotonic() + timeout + KILL_GRACE + 0.5
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, (thread, box) in started.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        value, reason = box.get("result", (None, f"no answer within {timeout:g} s"))
        values[name] = value
        if reason:
            errors[name] = reason
    disks = values.pop("disks")
    if disks is not None:
        disks, disk_errors = disks
        errors.update({DISK_ERROR_PREFIX + point: why for point, why in disk_errors.items()})
    return Inventory(disks=disks, errors=errors, **values)


def _disks_from(mounts_path: str, timeout: float) -> Result:
    parser = parse_mountinfo if mounts_path.endswith("mountinfo") else parse_mounts
    mounts, reason = _parsed(mounts_path, parser)
    if mounts is None:
        return None, reason
    return probe_disks(mounts, timeout), None


def _start(job: Callable[[], Result]) -> tuple[threading.Thread, dict[str, Result]]:
    box: dict[str, Result] = {}

    def run() -> None:
        try:
            box["result"] = job()
        except Exception as exc:  # a bug in one probe must not end the scan
            box["result"] = (None, f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="kloros-probe", daemon=True)
    thread.start()
    return thread, box
