"""ExplorationScanner: parsers on recorded /proc and nvidia-smi outputs, the rules and
their state, and the probes against fixtures, fake tools and this machine."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import wait_for

from kloros_tasks.detectors.exploration import probes
from kloros_tasks.detectors.exploration.detector import (
    DISK_ERROR_PREFIX,
    DiskUsage,
    Gpu,
    Inventory,
    Mount,
    parse_cpuinfo,
    parse_governor,
    parse_loadavg,
    parse_meminfo,
    parse_mountinfo,
    parse_mounts,
    parse_nvidia_smi,
)
from kloros_tasks.detectors.exploration.rules import evaluate, gpu_capable, undetermined_rules

DATA = Path(__file__).parent / "data" / "exploration"
HOST = "node7"
GIB = 2**30


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def rules_of(questions) -> list[str]:
    return sorted(q.rule for q in questions)


def subjects(questions, rule: str) -> list[str]:
    return sorted(q.subject for q in questions if q.rule == rule)


def gpu(utilization: float | None, index: int = 0, uuid: str | None = "GPU-aaaa") -> Gpu:
    return Gpu(index=index, name="NVIDIA A100", memory_total_mib=40960, memory_used_mib=512,
               utilization=utilization, temperature=40, uuid=uuid)


def scans(inventories, **kwargs):
    """Run evaluate over successive inventories, threading the state; the questions of each."""
    state, out = {}, []
    for inventory in inventories:
        questions, state = evaluate(inventory, state, host=HOST, **kwargs)
        out.append(questions)
    return out


# --- parsers ------------------------------------------------------------------------

def test_cpuinfo_counts_logical_cores_and_reads_model_and_flags():
    cpu = parse_cpuinfo(recorded("cpuinfo_avx2.txt"))
    assert cpu.logical_cores == 4
    assert cpu.model == "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz"
    assert {"sse2", "avx", "avx2", "fma"} <= cpu.flags


def test_cpu_flags_are_exact_tokens_so_avx512f_does_not_stand_for_avx2():
    cpu = parse_cpuinfo(recorded("cpuinfo_avx512f_no_avx2.txt"))
    assert "avx512f" in cpu.flags
    assert "avx2" not in cpu.flags


def test_cpuinfo_of_an_arm_board_reads_features_and_the_board_model():
    cpu = parse_cpuinfo(recorded("cpuinfo_arm.txt"))
    assert cpu.logical_cores == 4
    assert cpu.model == "Raspberry Pi 4 Model B Rev 1.4"
    assert "asimd" in cpu.flags


@pytest.mark.parametrize("text", ["", "garbage\n\x00\x01", "flags : avx avx2\n"])
def test_cpuinfo_without_a_processor_is_unknown(text):
    assert parse_cpuinfo(text) is None


def test_meminfo_reads_kibibytes_as_bytes():
    mem = parse_meminfo(recorded("meminfo_swap_heavy.txt"))
    assert mem.total == 16303044 * 1024
    assert mem.available == 6521200 * 1024
    assert mem.swap_used == (8388604 - 2516580) * 1024


def test_meminfo_of_an_old_kernel_estimates_available_memory():
    mem = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n")
    assert mem.available == 150 * 1024
    assert mem.swap_total == 0


@pytest.mark.parametrize("text", ["", "MemTotal: lots\n", "MemFree: 10 kB\n", "MemTotal: 0 kB"])
def test_meminfo_without_a_total_is_unknown(text):
    assert parse_meminfo(text) is None


def test_mounts_keep_real_filesystems_only():
    points = [m.mountpoint for m in parse_mounts(recorded("mounts_desktop.txt"))]
    assert points == ["/", "/boot/efi", "/home", "/media/alice/USB Stick",
                      "/media/alice/UBUNTU_22_04", "/mnt/nas"]


def test_a_bind_mount_of_one_device_is_measured_once_at_its_shortest_point():
    mounts = parse_mounts(recorded("mounts_container.txt"))
    assert [(m.device, m.mountpoint) for m in mounts] == [("overlay", "/"), ("/dev/vda1", "/data")]


def test_read_only_mounts_are_marked():
    mounts = {m.mountpoint: m for m in parse_mounts(recorded("mounts_desktop.txt"))}
    assert mounts["/media/alice/UBUNTU_22_04"].read_only
    assert not mounts["/home"].read_only


def test_a_later_pseudo_mount_hides_the_real_one_beneath_it():
    text = "/dev/sda2 /tmp ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\nshort line\n"
    assert parse_mounts(text) == ()


def test_loadavg_and_governor():
    load = parse_loadavg(recorded("loadavg.txt"))
    assert (load.one, load.running, load.total) == (3.42, 4, 1187)
    assert parse_loadavg("3.42 x") is None
    assert parse_governor("powersave\n") == "powersave"
    assert parse_governor("<unsupported>\n") is None


def test_nvidia_smi_with_no_gpu():
    assert parse_nvidia_smi(recorded("nvidia_smi_0.txt")) == ()
    assert parse_nvidia_smi("No devices were found\n") == ()


def test_nvidia_smi_with_one_gpu():
    (only,) = parse_nvidia_smi(recorded("nvidia_smi_1.txt"))
    assert (only.index, only.name, only.utilization) == (0, "NVIDIA GeForce RTX 3090", 3.0)
    assert only.key == "GPU-5f2c9a7e-1b3d-4c8e-9a0f-6d1e2b3c4a5f"


def test_nvidia_smi_with_two_gpus():
    gpus = parse_nvidia_smi(recorded("nvidia_smi_2.txt"))
    assert [(g.index, g.memory_used_mib, g.utilization) for g in gpus] == [
        (0, 38211.0, 97.0), (1, 4.0, 0.0)]


def test_unsupported_readings_are_none_and_index_and_name_identify_the_gpu():
    geforce, tesla = parse_nvidia_smi(recorded("nvidia_smi_na.txt"))
    assert geforce.utilization is None and geforce.temperature == 38.0
    assert tesla.memory_used_mib is None and tesla.utilization is None
    assert tesla.key == "1:Tesla K80"


def test_malformed_nvidia_smi_output_is_unknown_and_bad_lines_are_skipped():
    assert parse_nvidia_smi(recorded("nvidia_smi_malformed.txt")) is None
    assert [g.index for g in parse_nvidia_smi(recorded("nvidia_smi_partly_malformed.txt"))] == [0]


@pytest.mark.parametrize("junk", ["MemTotal: \u00b2 kB\nprocessor : \u00b2\n", "\x00\xff,,,\n",
                                  "0, , 1, 2, 3, 4\n\u00b2, GPU, 1, 1, 1, 1\n", ":\n:\n"])
def test_parsers_never_raise_on_junk(junk):
    for parse in (parse_cpuinfo, parse_meminfo, parse_mounts, parse_loadavg, parse_governor,
                  parse_nvidia_smi):
        assert parse(junk) in (None, ())


# --- rules --------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "subject", "severity"), [
    ("cpuinfo_avx_no_avx2.txt", f"cpu_simd:{HOST}:avx_without_avx2", "low"),
    ("cpuinfo_avx512f_no_avx2.txt", f"cpu_simd:{HOST}:avx_without_avx2", "low"),
    ("cpuinfo_sse2_no_avx.txt", f"cpu_simd:{HOST}:sse2_without_avx", "medium"),
])
def test_cpu_simd_names_the_missing_extension(fixture, subject, severity):
    (q,) = evaluate(Inventory(cpu=parse_cpuinfo(recorded(fixture))), {}, host=HOST)[0]
    assert (q.subject, q.severity, q.detector, q.owner, q.paths) == (
        subject, severity, "exploration", HOST, ())
    assert q.id.startswith("exploration.cpu_simd.")


def test_cpu_simd_matches_whole_flags_only():
    cpu = parse_cpuinfo("processor : 0\nflags : fpu sse sse2 avx512f avx512_vnni\n")
    (q,) = evaluate(Inventory(cpu=cpu), {}, host=HOST)[0]
    assert q.subject == f"cpu_simd:{HOST}:sse2_without_avx"


@pytest.mark.parametrize("fixture", ["cpuinfo_avx2.txt", "cpuinfo_arm.txt"])
def test_cpu_simd_is_silent_with_avx2_or_off_x86(fixture):
    assert evaluate(Inventory(cpu=parse_cpuinfo(recorded(fixture))), {}, host=HOST)[0] == []


@pytest.mark.parametrize(("fixture", "severity"), [
    ("meminfo_ok.txt", None),
    ("meminfo_swap_heavy.txt", "low"),
    ("meminfo_low_available.txt", "medium"),
    ("meminfo_critical.txt", "high"),
])
def test_memory_pressure_grades_low_memory_and_heavy_swap(fixture, severity):
    questions, _ = evaluate(Inventory(memory=parse_meminfo(recorded(fixture))), {}, host=HOST)
    assert [q.severity for q in questions] == ([severity] if severity else [])
    assert all(q.subject == f"memory_pressure:{HOST}:memory" for q in questions)


def disk(point: str, percent: float, read_only: bool = False) -> DiskUsage:
    total = 100 * GIB
    used = int(total * percent / 100)
    return DiskUsage(Mount("/dev/sda1", point, "ext4", read_only), total, used, total - used)


def test_disk_pressure_over_ninety_percent_on_writable_mounts():
    inventory = Inventory(disks=(disk("/", 89.0), disk("/home", 91.0), disk("/var", 97.0),
                                 disk("/media/cd", 100.0, read_only=True)))
    questions, _ = evaluate(inventory, {}, host=HOST)
    assert [(q.subject, q.severity) for q in questions] == [
        (f"disk_pressure:{HOST}:/home", "medium"), (f"disk_pressure:{HOST}:/var", "high")]


def test_gpu_underutilization_needs_every_one_of_the_last_n_scans():
    results = scans([Inventory(gpus=(gpu(4),)), Inventory(gpus=(gpu(6),)),
                     Inventory(gpus=(gpu(3),))], sustain_scans=3)
    assert [rules_of(r) for r in results] == [[], [], ["gpu_underutilization"]]
    (q,) = results[-1]
    assert (q.subject, q.severity) == (f"gpu_underutilization:{HOST}:GPU-aaaa", "high")
    assert q.extra["readings"]["utilization"] == [4.0, 6.0, 3.0]


@pytest.mark.parametrize(("readings", "severity"), [
    ([15, 12, 18], "medium"), ([5, 60, 5], None), ([5, None, 5], None), ([5, 5, 20], None)])
def test_gpu_underutilization_thresholds(readings, severity):
    results = scans([Inventory(gpus=(gpu(r),)) for r in readings])
    assert [q.severity for q in results[-1]] == ([severity] if severity else [])


def test_a_failed_gpu_probe_neither_resets_nor_extends_the_readings():
    results = scans([Inventory(gpus=(gpu(4),)), Inventory(gpus=(gpu(4),)),
                     Inventory(gpus=None), Inventory(gpus=(gpu(4),))])
    assert [rules_of(r) for r in results] == [[], [], [], ["gpu_underutilization"]]


def test_question_ids_do_not_change_with_the_readings():
    critical = parse_meminfo(recorded("meminfo_critical.txt"))
    low = parse_meminfo(recorded("meminfo_low_available.txt"))
    first = scans([Inventory(gpus=(gpu(2),), memory=critical, disks=(disk("/", 96.0),))] * 3)[-1]
    second = scans([Inventory(gpus=(gpu(9),), memory=low, disks=(disk("/", 93.5),))] * 3)[-1]
    assert sorted(q.id for q in first) == sorted(q.id for q in second)
    assert len(first) == 3


def test_hardware_change_is_never_reported_on_the_first_scan():
    assert scans([Inventory(gpus=(gpu(50),), cpu=parse_cpuinfo(recorded("cpuinfo_avx2.txt")))]) \
        == [[]]


def test_a_new_gpu_is_reported_from_the_scan_that_sees_it_for_hold_scans_scans():
    one, two = (gpu(50),), (gpu(50), gpu(50, index=1, uuid="GPU-bbbb"))
    results = scans([Inventory(gpus=one)] + [Inventory(gpus=two)] * 4, hold_scans=3)
    assert [subjects(r, "hardware_change") for r in results] == [
        [], [f"hardware_change:{HOST}:gpu_added:GPU-bbbb"]] + [
        [f"hardware_change:{HOST}:gpu_added:GPU-bbbb"]] * 2 + [[]]


def test_with_a_hold_of_one_scan_a_change_is_reported_on_the_second_scan_only():
    results = scans([Inventory(gpus=(gpu(50),)), Inventory(gpus=()), Inventory(gpus=())],
                    hold_scans=1)
    assert [rules_of(r) for r in results] == [[], ["hardware_change"], []]
    assert results[1][0].severity == "high"


def test_a_gpu_that_comes_back_cancels_its_removal():
    results = scans([Inventory(gpus=(gpu(50),)), Inventory(gpus=()), Inventory(gpus=(gpu(50),))])
    assert subjects(results[2], "hardware_change") == [f"hardware_change:{HOST}:gpu_added:GPU-aaaa"]


def test_a_failed_probe_is_not_a_removal():
    assert scans([Inventory(gpus=(gpu(50),)), Inventory(gpus=None), Inventory(gpus=(gpu(50),))]) \
        == [[], [], []]


def memory(total_gib: float) -> Inventory:
    total = int(total_gib * GIB)
    return Inventory(memory=parse_meminfo(f"MemTotal: {total // 1024} kB\n"
                                          f"MemAvailable: {total // 2048} kB\n"))


def test_memory_total_changes_beyond_a_small_tolerance_are_hardware_changes():
    results = scans([memory(64), memory(63.5), memory(32)], hold_scans=1)
    assert [subjects(r, "hardware_change") for r in results] == [
        [], [], [f"hardware_change:{HOST}:memory_total"]]
    assert results[2][0].extra["readings"] == {"before": 64 * GIB, "after": 32 * GIB}


def test_a_core_count_change_is_a_hardware_change():
    two = parse_cpuinfo(recorded("cpuinfo_sse2_no_avx.txt"))
    four = parse_cpuinfo(recorded("cpuinfo_avx_no_avx2.txt"))
    results = scans([Inventory(cpu=two), Inventory(cpu=four)])
    assert subjects(results[1], "hardware_change") == [f"hardware_change:{HOST}:logical_cores"]


@pytest.mark.parametrize(("packages", "fires"), [
    ({"numpy": "1.26.4"}, True),
    ({"torch": "2.3.0+cpu", "jaxlib": "0.4.30"}, True),
    ({"onnxruntime": "1.18.0"}, True),
    ({"torch": "2.3.0"}, False),
    ({"Jax_CUDA12.Plugin": "0.4.30"}, False),
    ({"cupy-cuda12x": "13.1.0"}, False),
    ({"onnxruntime-gpu": "1.18.0"}, False),
])
def test_accelerator_unused_when_no_installed_library_can_drive_the_gpu(packages, fires):
    questions, _ = evaluate(Inventory(gpus=(gpu(50),), packages=packages), {}, host=HOST)
    assert subjects(questions, "accelerator_unused") == (
        [f"accelerator_unused:{HOST}:gpu"] if fires else [])


def test_accelerator_unused_needs_a_gpu_and_a_package_list():
    assert evaluate(Inventory(gpus=(), packages={}), {}, host=HOST)[0] == []
    assert evaluate(Inventory(gpus=(gpu(50),), packages=None), {}, host=HOST)[0] == []


def test_gpu_capable_reads_build_tags():
    assert gpu_capable("torch", "2.3.0+cu121")
    assert not gpu_capable("torch", "2.3.0+rocm6.0")
    assert gpu_capable("jaxlib", "0.4.23+cuda12.cudnn89")


def test_every_question_is_well_formed():
    inventory = Inventory(cpu=parse_cpuinfo(recorded("cpuinfo_sse2_no_avx.txt")),
                          memory=parse_meminfo(recorded("meminfo_critical.txt")),
                          disks=(disk("/", 99.0),), gpus=(gpu(1),), packages={})
    questions = scans([inventory] * 3)[-1]
    assert rules_of(questions) == ["accelerator_unused", "cpu_simd", "disk_pressure",
                                   "gpu_underutilization", "memory_pressure"]
    for q in questions:
        assert q.question.endswith("?") and q.owner == HOST and q.paths == ()
        assert q.subject.startswith(f"{q.rule}:{HOST}:")
        assert all(line.startswith(f"{HOST}: ") for line in q.evidence)
        json.dumps(dict(q.extra))


def test_state_is_json_and_bounded():
    state = {}
    for reading in range(10):
        _, state = evaluate(Inventory(gpus=(gpu(reading),)), state, host=HOST, sustain_scans=3)
        state = json.loads(json.dumps(state))
    assert state["gpu_util"] == {"GPU-aaaa": [7.0, 8.0, 9.0]}


@pytest.mark.parametrize("state", [None, [], "x", {"v": 99}, {"v": 1, "inventory": "x",
                                   "gpu_util": {"a": "b"}, "changes": {"t": {"kind": "bad"}}},
                                   {"v": 1, "inventory": {"gpus": [1]}, "gpu_util": {"k": [1, "x"]},
                                    "changes": {"t": {"kind": "memory_total", "left": 2}}}])
def test_a_corrupt_state_is_a_fresh_start(state):
    questions, new_state = evaluate(Inventory(gpus=(gpu(5),)), state, host=HOST)
    assert questions == []
    assert new_state["gpu_util"] == {"GPU-aaaa": [5.0]}


def test_rules_whose_probe_failed_are_undetermined():
    assert undetermined_rules(Inventory(cpu=parse_cpuinfo(recorded("cpuinfo_avx2.txt")),
                                        memory=memory(8).memory, disks=(), gpus=(),
                                        packages={})) == frozenset()
    assert undetermined_rules(Inventory(disks=(), errors={DISK_ERROR_PREFIX + "/mnt": "hung"},
                                        gpus=None)) == {
        "cpu_simd", "memory_pressure", "disk_pressure", "gpu_underutilization",
        "accelerator_unused"}


# --- probes -------------------------------------------------------------------------

def tool(tmp_path: Path, body: str, name: str = "nvidia-smi") -> str:
    """An executable shell script standing in for a command."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_an_absent_nvidia_smi_means_no_gpu(tmp_path):
    assert probes.probe_gpus(str(tmp_path / "nvidia-smi"), timeout=2) == ((), None)
    assert probes.probe_gpus("kloros-no-such-nvidia-smi", timeout=2) == ((), None)


def test_nvidia_smi_is_asked_for_csv_and_its_gpus_are_parsed(tmp_path):
    args = tmp_path / "args"
    command = tool(tmp_path, f'echo "$@" > {args}\ncat {DATA / "nvidia_smi_2.txt"}\n')
    gpus, reason = probes.probe_gpus(command, timeout=10)
    assert reason is None and [g.index for g in gpus] == [0, 1]
    assert f"--query-gpu={probes.GPU_QUERY} --format=csv,noheader,nounits" in args.read_text()


def test_a_failing_nvidia_smi_is_unknown_with_a_reason(tmp_path):
    command = tool(tmp_path, 'echo "NVIDIA-SMI has failed because it could not communicate'
                             ' with the NVIDIA driver." >&2\nexit 9\n')
    gpus, reason = probes.probe_gpus(command, timeout=10)
    assert gpus is None and "status 9" in reason


def test_nvidia_smi_finding_no_devices_means_no_gpu(tmp_path):
    command = tool(tmp_path, 'echo "No devices were found"\nexit 6\n')
    assert probes.probe_gpus(command, timeout=10) == ((), None)


@pytest.mark.timeout(30)
def test_a_hanging_nvidia_smi_is_unknown_and_killed_with_what_it_started(tmp_path):
    pidfile = tmp_path / "pid"
    command = tool(tmp_path, f"sleep 600 &\necho $! > {pidfile}\nwait\n")
    gpus, reason = probes.probe_gpus(command, timeout=0.5)
    assert gpus is None and reason is not None
    # SIGKILL reaches the whole group at once, but a process dies when the kernel next
    # runs it: on a loaded machine the grandchild can still be exiting a moment later.
    pid = int(pidfile.read_text())
    wait_for(lambda: not alive(pid), 10, message="the grandchild sleep killed")


@pytest.mark.timeout(30)
def test_a_hung_mount_is_reported_and_does_not_hold_up_the_others():
    release = threading.Event()

    def usage(point: str):
        if point == "/mnt/hung":
            release.wait(60)
        return SimpleNamespace(total=100, used=95, free=5)

    mounts = [Mount("srv:/x", "/mnt/hung", "nfs4"), Mount("/dev/sda1", "/", "ext4")]
    try:
        disks, reasons = probes.probe_disks(mounts, timeout=0.3, usage=usage)
        assert [d.mount.mountpoint for d in disks] == ["/"]
        assert list(reasons) == ["/mnt/hung"]
        # The next scan does not strand a second thread on the same mount.
        _, reasons = probes.probe_disks(mounts[:1], timeout=0.3, usage=usage)
        assert list(reasons) == ["/mnt/hung"]
    finally:
        release.set()


def test_packages_come_from_metadata_without_importing(tmp_path):
    dist = tmp_path / "torch-2.3.0+cpu.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.3.0+cpu\n")
    # A package whose import would fail loudly: only its metadata is read.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise SystemExit('imported')\n")
    broken = tmp_path / "broken-1.0.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_bytes(b"Name: br\xffoken\nVersion: 1.0\n")
    assert probes.probe_packages([str(tmp_path)]) == ({"torch": "2.3.0+cpu"}, None)


def test_collect_from_recorded_sources(tmp_path):
    command = tool(tmp_path, f'cat {DATA / "nvidia_smi_1.txt"}\n')
    sources = probes.Sources(
        cpuinfo=str(DATA / "cpuinfo_avx_no_avx2.txt"), meminfo=str(DATA / "meminfo_ok.txt"),
        mounts=str(DATA / "mounts_container.txt"), loadavg=str(DATA / "loadavg.txt"),
        governor=str(tmp_path / "no-cpufreq"), nvidia_smi=command, library_path=(str(tmp_path),))
    inventory = probes.collect(timeout=10, sources=sources)
    assert inventory.cpu.logical_cores == 4 and inventory.load.running == 4
    assert [g.name for g in inventory.gpus] == ["NVIDIA GeForce RTX 3090"]
    assert inventory.packages == {} and inventory.governor is None
    assert "governor" not in inventory.errors
    questions, _ = evaluate(inventory, {}, host=HOST)
    assert {"cpu_simd", "accelerator_unused"} <= set(rules_of(questions))


@pytest.mark.timeout(30)
def test_collect_survives_a_hanging_tool_and_missing_files(tmp_path):
    command = tool(tmp_path, "sleep 600\n")
    sources = probes.Sources(cpuinfo=str(tmp_path / "missing"), nvidia_smi=command)
    inventory = probes.collect(timeout=0.5, sources=sources)
    assert inventory.gpus is None and inventory.cpu is None
    assert {"gpus", "cpu"} <= set(inventory.errors)
    assert inventory.memory is not None
    assert {"gpu_underutilization", "cpu_simd"} <= undetermined_rules(inventory)


def test_collect_on_this_machine_is_sane_and_a_rescan_finds_nothing_new():
    inventory = probes.collect()
    assert inventory.cpu.logical_cores >= 1
    assert inventory.memory.total > 0
    assert inventory.load is not None and inventory.packages
    assert all(d.total > 0 for d in inventory.disks)
    if shutil.which("nvidia-smi") is None:
        assert inventory.gpus == ()
    host = os.uname().nodename
    first, state = evaluate(inventory, {}, host=host)
    second, _ = evaluate(probes.collect(), json.loads(json.dumps(state)), host=host)
    assert {q.id for q in second} <= {q.id for q in first}


def test_mountinfo_takes_read_only_from_the_superblock_not_the_sandboxed_mount():
    mounts = {m.mountpoint: m for m in parse_mountinfo(
        (DATA / "mountinfo_sandboxed.txt").read_text())}
    assert set(mounts) == {"/", "/srv/data", "/media/cdrom"}
    assert not mounts["/"].read_only and not mounts["/srv/data"].read_only
    assert mounts["/media/cdrom"].read_only
    assert mounts["/srv/data"].fstype == "xfs" and mounts["/srv/data"].device == "/dev/vdb"
