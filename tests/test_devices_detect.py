"""Device detection on fabricated /proc and /sys trees (tests/fixtures/devices) and on the host."""

import os
import shutil
from pathlib import Path

import psutil
import pytest

from edgellm.devices.detect import (SAFETY_MARGIN_FRACTION, SAFETY_MARGIN_MIN, ThermalZone,
                                    ZramDevice, detect_device)
from edgellm.devices.profiles import CoreCluster

FIXTURES = Path(__file__).parent / "fixtures" / "devices"
KB, MiB, GiB = 1024, 1 << 20, 1 << 30


def tree(tmp_path, name: str, files: dict[str, str]) -> Path:
    """A copy of a fixture tree with some files replaced or added."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_pi4_tree_matches_pi4_without_memory_cgroup():
    d = detect_device(FIXTURES / "pi4")
    assert d.profile_name == "pi4"
    assert d.model == "Raspberry Pi 4 Model B Rev 1.4"
    assert d.arch == "aarch64"
    assert d.clusters == (CoreCluster("Cortex-A72", 4, "big", 1800),)
    assert d.features == {"neon"}
    assert d.threads == 4
    assert d.mem_total == 3882564 * KB
    assert d.mem_available == 3358212 * KB
    # Raspberry Pi OS: cgroup v2 without the memory controller is not an error, just no limit
    assert d.cgroup.version is None and d.cgroup_limit is None
    assert "no memory controller" in d.cgroup.reason
    assert d.effective_limit == d.mem_total
    assert d.effective_available == d.mem_available
    assert d.swap_total == 102396 * KB
    assert d.thermal == (ThermalZone("cpu-thermal", 47.712, None),)
    assert d.throttled == 0x50000
    assert d.throttled_flags == ["under-voltage has occurred", "throttling has occurred"]
    assert d.self_rss == 34816 * KB


def test_pi5_tree_reads_model_from_sysfs_devicetree_and_dotprod_features():
    d = detect_device(FIXTURES / "pi5")
    assert d.profile_name == "pi5"
    assert d.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert d.clusters == (CoreCluster("Cortex-A76", 4, "big", 2400),)
    assert d.features == {"neon", "fp16", "dotprod"}
    assert d.cgroup.version == 2
    assert d.cgroup.limit is None  # memory.max is "max" all the way up
    assert d.cgroup.usage == 52428800
    assert d.effective_limit == 8245568 * KB


def test_pi_zero_2w_tree_with_zram_swap():
    d = detect_device(FIXTURES / "pi-zero-2w")
    assert d.profile_name == "pi-zero-2w"
    assert d.model == "Raspberry Pi Zero 2 W Rev 1.0"
    # four A53s and nothing else: all of them compute
    assert d.clusters == (CoreCluster("Cortex-A53", 4, "big", 1000),)
    assert d.n_little == 0 and d.threads == 4
    assert d.features == {"neon"}
    assert d.mem_total == 436632 * KB
    assert d.zram == (ZramDevice("zram0", 223551488, "zstd", 12288),)  # zram1 is unconfigured
    assert d.swap_total == 218312 * KB


def test_android_tree_is_big_little_with_i8mm():
    d = detect_device(FIXTURES / "android")
    assert d.profile_name == "android-arm64"
    assert d.model == "samsung SM-S911B (SM8550)"
    assert d.clusters == (
        CoreCluster("Cortex-X3", 1, "big", 3360),
        CoreCluster("Cortex-A715", 2, "big", 2803),
        CoreCluster("Cortex-A710", 2, "big", 2803),
        CoreCluster("Cortex-A510", 3, "little", 2016),
    )
    assert (d.n_big, d.n_little) == (5, 3)
    assert d.threads == 5  # matmuls on the big cores only
    assert d.features == {"neon", "fp16", "dotprod", "i8mm", "bf16"}
    assert d.cgroup.limit is None
    assert [z.name for z in d.thermal] == ["cpu-1-0-0", "battery"]


def test_x86_mini_pc_tree_with_cgroup_v1_limit_and_cpu_quota():
    d = detect_device(FIXTURES / "x86-n100")
    assert d.profile_name == "x86-mini-pc"
    assert d.model == "AZW MINI S"
    assert d.arch == "x86_64"
    assert d.clusters == (CoreCluster("Intel(R) N100", 4, "big", 3400),)
    assert d.features == {"sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avxvnni"}
    assert d.cgroup.version == 1
    assert d.cgroup_limit == 2 * GiB  # the service's limit; its parents are unlimited
    assert d.cgroup.limit_path == "/system.slice/edgellm.service"
    assert d.mem_total == 16131568 * KB
    assert d.effective_limit == 2 * GiB
    # headroom: limit - (usage - page cache)
    assert d.effective_available == 2 * GiB - (157286400 - 52428800)
    assert d.usable_cpus == 2 and d.threads == 2  # CPUQuota=200%
    assert d.thermal[1] == ThermalZone("x86_pkg_temp", 45.0, 100.0)


def test_cgroup_v2_limit_below_physical_ram_is_the_effective_limit(tmp_path):
    cg = "sys/fs/cgroup"
    root = tree(tmp_path, "pi4", {
        "proc/self/cgroup": "0::/system.slice/edgellm.service\n",
        f"{cg}/cgroup.controllers": "cpuset cpu io memory pids\n",
        f"{cg}/system.slice/memory.max": "max\n",
        f"{cg}/system.slice/edgellm.service/memory.max": "536870912\n",
        f"{cg}/system.slice/edgellm.service/memory.current": "104857600\n",
        f"{cg}/system.slice/edgellm.service/memory.stat": "anon 73400320\nfile 31457280\n",
    })
    d = detect_device(root)
    assert d.profile_name == "pi4"
    assert d.cgroup.version == 2
    assert d.cgroup_limit == 512 * MiB < d.mem_total
    assert d.effective_limit == 512 * MiB
    assert d.effective_available == 512 * MiB - (104857600 - 31457280)
    usable = d.effective_available + d.self_rss
    assert d.default_budget() == usable - max(SAFETY_MARGIN_MIN,
                                              int(usable * SAFETY_MARGIN_FRACTION))
    assert any("below physical memory" in r for r in d.reasons)


def test_cgroup_v2_smallest_limit_on_the_way_up_wins(tmp_path):
    cg = "sys/fs/cgroup"
    root = tree(tmp_path, "pi4", {
        "proc/self/cgroup": "0::/system.slice/edgellm.service\n",
        f"{cg}/cgroup.controllers": "cpuset cpu io memory pids\n",
        f"{cg}/system.slice/memory.max": "419430400\n",
        f"{cg}/system.slice/memory.current": "209715200\n",
        f"{cg}/system.slice/edgellm.service/memory.max": "536870912\n",
    })
    d = detect_device(root)
    assert d.cgroup_limit == 400 * MiB
    assert d.cgroup.limit_path == "/system.slice"
    assert d.effective_available == 200 * MiB  # the parent's headroom, no page cache listed


def test_cgroup_v1_limit_inside_a_container_namespace(tmp_path):
    # Docker on cgroup v1: /proc/self/cgroup names the host path /docker/<id>, and the mount's
    # root is that cgroup, so its limit file sits at the top of the mount.
    mem = "sys/fs/cgroup/memory"
    root = tree(tmp_path, "pi5", {
        "proc/self/cgroup": "5:memory:/docker/3f2a\n1:name=systemd:/docker/3f2a\n0::/\n",
        "proc/self/mountinfo":
            "1 0 0:50 / / rw,relatime - overlay overlay rw\n"
            "30 25 0:27 /docker/3f2a /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
            "31 25 0:28 / /sys/fs/cgroup/unified ro,nosuid - cgroup2 cgroup2 rw\n",
        f"{mem}/memory.limit_in_bytes": "1073741824\n",
        f"{mem}/memory.usage_in_bytes": "62914560\n",
        f"{mem}/memory.stat": "cache 20971520\nrss 41943040\ntotal_cache 20971520\n",
        "sys/fs/cgroup/unified/cgroup.controllers": "\n",
    })
    d = detect_device(root)
    assert d.cgroup.version == 1
    assert d.cgroup_limit == 1 * GiB
    assert d.effective_limit == 1 * GiB
    assert d.effective_available == 1 * GiB - (62914560 - 20971520)


def test_cgroup_v1_huge_sentinel_means_unlimited(tmp_path):
    leaf = "sys/fs/cgroup/memory/system.slice/edgellm.service"
    root = tree(tmp_path, "x86-n100", {f"{leaf}/memory.limit_in_bytes": "9223372036854771712\n"})
    d = detect_device(root)
    assert d.cgroup.version == 1
    assert d.cgroup_limit is None
    assert d.effective_limit == d.mem_total


def test_unknown_arm_core_is_classified_by_cpu_capacity(tmp_path):
    text = (FIXTURES / "android" / "proc" / "cpuinfo").read_text().replace("0xd46", "0x123")
    root = tree(tmp_path, "android", {"proc/cpuinfo": text})
    d = detect_device(root)
    assert d.clusters[-1] == CoreCluster("ARM part 0x41:0x123", 3, "little", 2016)
    assert d.n_big == 5


def test_host_detection_agrees_with_psutil_and_affinity():
    d = detect_device()
    assert d.mem_total == psutil.virtual_memory().total
    assert d.usable_cpus <= len(os.sched_getaffinity(0))
    assert d.profile is not None
    assert d.self_rss > 0
    assert 0 < d.default_budget() < d.effective_limit


@pytest.mark.parametrize("name,profile", [("pi4", "pi4"), ("pi5", "pi5"),
                                          ("pi-zero-2w", "pi-zero-2w"),
                                          ("android", "android-arm64"),
                                          ("x86-n100", "x86-mini-pc")])
def test_every_fixture_tree_matches_its_profile(name, profile):
    assert detect_device(FIXTURES / name).profile_name == profile
