"""ExplorationScanner, the pure part (1/2): parsers of /proc and nvidia-smi output and
the ``Inventory`` of one host.  ``exploration_rules.evaluate`` turns an inventory plus
the previous scan's state into questions.

Nothing here reads a file, runs a command or looks at the environment:
``probes`` (this package's one edge) collects the texts and builds the Inventory, and
the scan task keeps the state.  Parsers never raise: malformed lines are skipped, and a text with
nothing usable gives None, which the rules read as "unknown", never as "absent".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

RULES = (
    "gpu_underutilization", "cpu_simd", "memory_pressure",
    "disk_pressure", "hardware_change", "accelerator_unused",
)

# Filesystems that hold no user data, or whose "usage" means nothing (squashfs images
# are always 100 % full).  tmpfs and ramfs live in memory: memory_pressure covers them.
PSEUDO_FILESYSTEMS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
    "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nfsd", "nsfs",
    "proc", "pstore", "ramfs", "rootfs", "rpc_pipefs", "securityfs", "selinuxfs",
    "squashfs", "sysfs", "tmpfs", "tracefs",
    "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "fuse.snapfuse",
})

_MODEL_KEYS = ("model name", "cpu model", "model", "cpu")  # x86, MIPS, ARM boards, POWER
_MISSING = ("", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]")
_GOVERNOR = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


DISK_ERROR_PREFIX = "disk:"  # Inventory.errors key of one mount whose usage is unknown


def normalize_package(name: str) -> str:
    """PEP 503 form of a distribution name (``Jax_CUDA12.Plugin`` -> ``jax-cuda12-plugin``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- parsed values --------------------------------------------------------------------

@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical_cores: int
    flags: frozenset[str]  # exact tokens: "avx512f" never stands for "avx2"


@dataclass(frozen=True)
class MemInfo:
    """Bytes.  ``available`` is MemAvailable (or its pre-3.14 estimate)."""

    total: int
    available: int
    swap_total: int = 0
    swap_free: int = 0

    @property
    def swap_used(self) -> int:
        return max(0, self.swap_total - self.swap_free)


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    read_only: bool = False


@dataclass(frozen=True)
class DiskUsage:
    """Bytes, as ``shutil.disk_usage`` reports them (``free`` is what users may still use)."""

    mount: Mount
    total: int
    used: int
    free: int

    @property
    def percent_used(self) -> float | None:
        """Used share the way ``df`` computes it (root's reserve does not count as free)."""
        usable = self.used + self.free
        return 100.0 * self.used / usable if usable > 0 else None


@dataclass(frozen=True)
class LoadAvg:
    one: float
    five: float
    fifteen: float
    running: int
    total: int


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees C
    uuid: str | None = None

    @property
    def key(self) -> str:
        """Stable identity: the UUID when known, else index and name."""
        return self.uuid or f"{self.index}:{self.name}"


@dataclass(frozen=True)
class Inventory:
    """One host's hardware as one scan saw it.  None means the probe failed (``errors``
    says why); an empty tuple of GPUs means the host has none."""

    cpu: CpuInfo | None = None
    memory: MemInfo | None = None
    disks: tuple[DiskUsage, ...] | None = None
    load: LoadAvg | None = None
    governor: str | None = None
    gpus: tuple[Gpu, ...] | None = None
    packages: Mapping[str, str] | None = None  # installed distribution -> version
    errors: Mapping[str, str] = field(default_factory=dict)  # probe -> reason


# --- parsers --------------------------------------------------------------------------

def _is_count(value: str) -> bool:
    # ASCII only: "²".isdigit() is true, yet int("²") raises.
    return value.isascii() and value.isdigit()


def _pairs(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip().lower(), value.strip()


def parse_cpuinfo(text: str) -> CpuInfo | None:
    """Model, logical cores (numbered ``processor`` entries) and the first CPU's flags
    (``flags`` on x86, ``Features`` on ARM) as exact tokens; None without a processor."""
    cores, flags, seen = 0, None, {}
    for key, value in _pairs(text):
        if key == "processor" and _is_count(value):
            cores += 1
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        # On x86 "model" is a number; on ARM boards it is the board's name.
        elif key in _MODEL_KEYS and value and not _is_count(value):
            seen.setdefault(key, value)
    if cores == 0:
        return None
    model = next((seen[k] for k in _MODEL_KEYS if k in seen), "unknown")
    return CpuInfo(model=model, logical_cores=cores, flags=flags or frozenset())


def _kib_to_bytes(value: str) -> int | None:
    parts = value.split()
    if not parts or not _is_count(parts[0]):
        return None
    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
    return int(parts[0]) * scale


def parse_meminfo(text: str) -> MemInfo | None:
    """Total, available and swap in bytes; None without a positive MemTotal.  Kernels
    older than 3.14 lack MemAvailable: MemFree + Buffers + Cached stands in for it."""
    fields = {k: v for k, raw in _pairs(text) if (v := _kib_to_bytes(raw)) is not None}
    total = fields.get("memtotal", 0)
    if total <= 0:
        return None
    available = fields.get("memavailable")
    if available is None:
        available = sum(fields.get(k, 0) for k in ("memfree", "buffers", "cached"))
    return MemInfo(total=total, available=min(available, total),
                   swap_total=fields.get("swaptotal", 0), swap_free=fields.get("swapfree", 0))


def _unescape(field_text: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as \040, \011, \012, \134.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def _is_real(fstype: str, mountpoint: str) -> bool:
    if fstype in PSEUDO_FILESYSTEMS:
        return False
    # overlay at / is a container's root and its usage is real; anywhere else it is a
    # container runtime's merged directory that repeats its backing filesystem's usage.
    return fstype != "overlay" or mountpoint == "/"


def parse_mounts(text: str) -> tuple[Mount, ...]:
    """Real mounts from /proc/mounts, in file order: pseudo filesystems skipped, one entry
    per mount point (a later mount hides an earlier one) and one per device path (bind
    mounts and subvolumes of one filesystem report the same usage; the shortest mount
    point is kept)."""
    by_point: dict[str, Mount] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[1].startswith("/"):
            continue
        device, point = _unescape(parts[0]), _unescape(parts[1])
        by_point.pop(point, None)  # re-insert so that file order follows the last mount
        if _is_real(parts[2], point):
            by_point[point] = Mount(device, point, parts[2], "ro" in parts[3].split(","))
    best: dict[str, Mount] = {}
    for m in by_point.values():
        held = best.get(m.device)
        if m.device.startswith("/") and (held is None or _shorter(m, held)):
            best[m.device] = m
    return tuple(m for m in by_point.values()
                 if not m.device.startswith("/") or best[m.device] is m)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Real mounts from /proc/self/mountinfo.  Read-only-ness comes from the superblock
    options, not the per-mount ones: a sandbox (systemd's ProtectSystem=strict) remounts
    everything read-only *for us*, yet the filesystem still fills up."""
    lines = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            continue
        lines.append(f"{rest[1]} {fields[4]} {rest[0]} {rest[2]}")
    return parse_mounts("\n".join(lines))


def _shorter(a: Mount, b: Mount) -> bool:
    return (len(a.mountpoint), a.mountpoint) < (len(b.mountpoint), b.mountpoint)


def parse_loadavg(text: str) -> LoadAvg | None:
    """The five fields of /proc/loadavg; None if they are not there."""
    parts = text.split()
    try:
        running, _, total = parts[3].partition("/")
        return LoadAvg(float(parts[0]), float(parts[1]), float(parts[2]),
                       int(running), int(total))
    except (IndexError, ValueError):
        return None


def parse_governor(text: str) -> str | None:
    """A cpufreq governor name such as ``performance`` or ``powersave``, else None."""
    value = text.strip()
    return value if _GOVERNOR.match(value) else None


def _number(value: str) -> float | None:
    if value.strip().lower() in _MISSING:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _gpu_line(line: str) -> Gpu | None:
    cols = [c.strip() for c in line.split(",")]
    if len(cols) < 6 or not _is_count(cols[0]) or not cols[1]:
        return None
    uuid = cols[6] if len(cols) > 6 and cols[6].lower() not in _MISSING else None
    return Gpu(index=int(cols[0]), name=cols[1], memory_total_mib=_number(cols[2]),
               memory_used_mib=_number(cols[3]), utilization=_number(cols[4]),
               temperature=_number(cols[5]), uuid=uuid)


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...] | None:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,memory.used,
    utilization.gpu,temperature.gpu[,uuid] --format=csv,noheader,nounits``.  Readings of
    ``[N/A]`` or ``[Not Supported]`` become None; unreadable lines are skipped.  Empty
    output (or "No devices were found") is no GPU; output with lines but no readable
    GPU line is None (unknown)."""
    gpus, junk = [], False
    for line in text.splitlines():
        if not line.strip() or line.strip().lower().startswith("no devices were found"):
            continue
        gpu = _gpu_line(line)
        if gpu is None:
            junk = True
        else:
            gpus.append(gpu)
    if junk and not gpus:
        return None
    return tuple(gpus)
