"""Detect the running device: board model, cores, ISA features, memory and its limits, swap,
temperatures; and match it to a profile.

Everything is read below a root directory (default "/") so tests can point detection at a
fabricated /proc and /sys tree. Only two things come from the running process instead of
the tree, and only when root is "/": HWCAP bits from getauxval (aarch64) and the CPU
affinity mask.

Memory limits come from three places, the smallest wins:
  - /proc/meminfo MemTotal / MemAvailable (what psutil reports; it ignores cgroups);
  - the cgroup v2 `memory.max` of our cgroup and every ancestor up to the mount root
    (our cgroup is the `0::/path` line of /proc/self/cgroup);
  - the cgroup v1 `memory.limit_in_bytes`, walked the same way.
A missing memory controller is normal: Raspberry Pi OS boots with cgroup_disable=memory.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgellm.devices.profiles import PROFILES, CoreCluster, DeviceProfile

__all__ = ["DeviceInfo", "CgroupMemory", "ThermalZone", "ZramDevice", "detect_device",
           "read_cgroup_memory", "ARM_CORES", "SAFETY_MARGIN_MIN", "SAFETY_MARGIN_FRACTION"]

MiB = 1 << 20

# Default budget = effective available memory minus this margin: room for other processes'
# growth, the kernel's own allocations (zram, page tables) and estimation error.
SAFETY_MARGIN_MIN = 64 * MiB
SAFETY_MARGIN_FRACTION = 0.10

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX * page size (9223372036854771712 with 4 KiB
# pages, other values with 16/64 KiB pages): anything this large is unlimited.
_V1_UNLIMITED = 1 << 62

# (CPU implementer, CPU part) of /proc/cpuinfo -> (core name, kind). Part numbers from the
# Arm Technical Reference Manuals (MIDR_EL1.PartNum) and the Linux kernel's cputype.h.
ARM_CORES: dict[tuple[int, int], tuple[str, str]] = {
    (0x41, 0xD03): ("Cortex-A53", "little"),
    (0x41, 0xD04): ("Cortex-A35", "little"),
    (0x41, 0xD05): ("Cortex-A55", "little"),
    (0x41, 0xD07): ("Cortex-A57", "big"),
    (0x41, 0xD08): ("Cortex-A72", "big"),
    (0x41, 0xD09): ("Cortex-A73", "big"),
    (0x41, 0xD0A): ("Cortex-A75", "big"),
    (0x41, 0xD0B): ("Cortex-A76", "big"),
    (0x41, 0xD0C): ("Neoverse-N1", "big"),
    (0x41, 0xD0D): ("Cortex-A77", "big"),
    (0x41, 0xD0E): ("Cortex-A76AE", "big"),
    (0x41, 0xD40): ("Neoverse-V1", "big"),
    (0x41, 0xD41): ("Cortex-A78", "big"),
    (0x41, 0xD44): ("Cortex-X1", "big"),
    (0x41, 0xD46): ("Cortex-A510", "little"),
    (0x41, 0xD47): ("Cortex-A710", "big"),
    (0x41, 0xD48): ("Cortex-X2", "big"),
    (0x41, 0xD49): ("Neoverse-N2", "big"),
    (0x41, 0xD4B): ("Cortex-A78C", "big"),
    (0x41, 0xD4D): ("Cortex-A715", "big"),
    (0x41, 0xD4E): ("Cortex-X3", "big"),
    (0x41, 0xD4F): ("Neoverse-V2", "big"),
    (0x41, 0xD80): ("Cortex-A520", "little"),
    (0x41, 0xD81): ("Cortex-A720", "big"),
    (0x41, 0xD82): ("Cortex-X4", "big"),
    (0x41, 0xD85): ("Cortex-X925", "big"),
    (0x41, 0xD87): ("Cortex-A725", "big"),
    (0x51, 0x800): ("Kryo Gold", "big"),  # Qualcomm Kryo 2xx-4xx Gold (A73/A75/A76-based)
    (0x51, 0x801): ("Kryo Silver", "little"),  # A53-based
    (0x51, 0x802): ("Kryo 385 Gold", "big"),
    (0x51, 0x803): ("Kryo 385 Silver", "little"),
    (0x51, 0x804): ("Kryo 485 Gold", "big"),
    (0x51, 0x805): ("Kryo 4xx/5xx Silver", "little"),  # A55-based
}

# /proc/cpuinfo feature names -> our normalised names.
FEATURE_NAMES: dict[str, str] = {
    # aarch64 "Features" (arch/arm64/kernel/cpuinfo.c hwcap_str)
    "asimd": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm",
    "sve": "sve", "sve2": "sve2", "bf16": "bf16",
    # 32-bit ARM kernels ("neon", "vfpv4", ...)
    "neon": "neon",
    # x86 "flags"
    "pni": "sse3", "ssse3": "ssse3", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx_vnni": "avxvnni", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512_vnni": "avx512vnni",
}

# getauxval bits (arch/arm64/include/uapi/asm/hwcap.h) -> our names.
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_BITS = {1: "neon", 10: "fp16", 20: "dotprod", 22: "sve"}  # ASIMD, ASIMDHP, ASIMDDP, SVE
_HWCAP2_BITS = {1: "sve2", 13: "i8mm", 14: "bf16"}

# Raspberry Pi firmware get_throttled bits (raspberrypi.com docs, vcgencmd get_throttled).
_THROTTLED_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled",
                   3: "soft temperature limit", 16: "under-voltage has occurred",
                   17: "frequency capping has occurred", 18: "throttling has occurred",
                   19: "soft temperature limit has occurred"}

_MINI_PC_CPU = re.compile(r"Intel\(R\) (N\d{2,3}\b|Processor N\d{2,3}|Celeron\(R\) [NJ]\d{4}|"
                          r"Core\(TM\) i3-N\d{3})")


@dataclass(frozen=True)
class CgroupMemory:
    version: int | None  # 1, 2, or None when no memory controller is available
    path: str  # our cgroup (the one we walked up from)
    limit: int | None  # bytes, the smallest limit on the way to the root; None: unlimited
    limit_path: str  # the cgroup that sets the limit
    usage: int | None  # bytes charged to the limiting cgroup (memory.current / usage_in_bytes)
    file_cache: int  # of which page cache, reclaimable
    reason: str


@dataclass(frozen=True)
class ThermalZone:
    name: str  # the zone's type: "cpu-thermal", "x86_pkg_temp", ...
    temp_c: float
    passive_c: float | None  # the first passive trip point: where the kernel starts throttling


@dataclass(frozen=True)
class ZramDevice:
    name: str
    disksize: int  # bytes of uncompressed capacity
    algorithm: str
    used: int  # bytes of compressed memory in use (mm_stat mem_used_total)


@dataclass
class DeviceInfo:
    root: str
    model: str  # "Raspberry Pi 4 Model B Rev 1.4", "samsung SM-S911B", "Beelink MINI S12 Pro"
    profile: DeviceProfile
    arch: str  # "aarch64", "armv7l", "x86_64"
    cpu_name: str
    clusters: tuple[CoreCluster, ...]
    features: frozenset[str]
    features_source: str  # "getauxval" or "/proc/cpuinfo"
    usable_cpus: int  # online CPUs we may run on (affinity mask, cgroup CPU quota)
    mem_total: int
    mem_available: int
    cgroup: CgroupMemory
    swap_total: int
    swap_free: int
    zram: tuple[ZramDevice, ...]
    thermal: tuple[ThermalZone, ...]
    throttled: int | None  # Raspberry Pi firmware get_throttled bits, if exposed
    self_rss: int  # this process's resident set now (part of what it may use)
    reasons: list[str] = field(default_factory=list)

    @property
    def profile_name(self) -> str:
        return self.profile.name

    @property
    def n_big(self) -> int:
        return sum(c.count for c in self.clusters if c.kind == "big")

    @property
    def n_little(self) -> int:
        return sum(c.count for c in self.clusters if c.kind == "little")

    @property
    def cgroup_limit(self) -> int | None:
        return self.cgroup.limit

    @property
    def effective_limit(self) -> int:
        """The most memory this process could ever hold: RAM, or the cgroup limit if lower."""
        if self.cgroup.limit is None:
            return self.mem_total
        return min(self.mem_total, self.cgroup.limit)

    @property
    def effective_available(self) -> int:
        """Memory available now: MemAvailable, or the cgroup's headroom if lower (its page
        cache counts as free, as MemAvailable counts reclaimable cache)."""
        avail = self.mem_available
        cg = self.cgroup
        if cg.limit is not None:
            used = max(0, (cg.usage or 0) - cg.file_cache)
            avail = min(avail, max(0, cg.limit - used))
        return avail

    @property
    def threads(self) -> int:
        """Threads for matmuls: the big cores, within the CPUs we may use."""
        return max(1, min(self.n_big or self.usable_cpus, self.usable_cpus))

    @property
    def throttled_flags(self) -> list[str]:
        if not self.throttled:
            return []
        return [name for bit, name in _THROTTLED_BITS.items() if self.throttled >> bit & 1]

    def default_budget(self) -> int:
        """Bytes the planner may use by default: what is available now plus what this process
        already holds (the plan counts the whole process), minus a safety margin."""
        usable = self.effective_available + self.self_rss
        margin = max(SAFETY_MARGIN_MIN, int(usable * SAFETY_MARGIN_FRACTION))
        return max(0, usable - margin)


# -- reading the tree ---------------------------------------------------------------------------

def _path(root: str | os.PathLike, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def _read(root, rel: str) -> str | None:
    try:
        return _path(root, rel).read_text(errors="replace")
    except OSError:
        return None


def _read_int(root, rel: str) -> int | None:
    text = _read(root, rel)
    if text is None:
        return None
    try:
        return int(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


def _parse_cpuinfo(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Per-processor blocks and the trailing global fields (Model, Hardware, Revision)."""
    cpus, glob_fields = [], {}
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if not fields:
            continue
        if "processor" in fields and fields["processor"].isdigit():
            cpus.append(fields)
        else:
            glob_fields.update(fields)
    return cpus, glob_fields


def _parse_meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def _parse_cpu_list(text: str | None) -> set[int]:
    """ "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11} """
    cpus: set[int] = set()
    for part in (text or "").strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            cpus.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return cpus


def _device_tree_model(root) -> str | None:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        text = _read(root, rel)
        if text:
            return text.strip("\x00").strip()
    return None


def _android_props(root) -> dict[str, str] | None:
    text = _read(root, "system/build.prop")
    if text is None:
        return None
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            props[key.strip()] = value.strip()
    return props


def _is_android(root) -> bool:
    if _path(root, "system/build.prop").exists():
        return True
    return str(root) == "/" and any(k in os.environ for k in ("TERMUX_VERSION", "ANDROID_ROOT"))


# -- CPU -------------------------------------------------------------------------------------

def _arm_clusters(root, cpus: list[dict[str, str]]) -> tuple[tuple[CoreCluster, ...], list[str]]:
    reasons = []
    per_cpu = []  # (cpu index, name, kind or None, max MHz)
    for c in cpus:
        idx = int(c["processor"])
        try:
            key = (int(c.get("cpu implementer", "0"), 16), int(c.get("cpu part", "0"), 16))
        except ValueError:
            key = (0, 0)
        name, kind = ARM_CORES.get(key, (f"ARM part {key[0]:#x}:{key[1]:#x}", None))
        khz = _read_int(root, f"sys/devices/system/cpu/cpu{idx}/cpufreq/cpuinfo_max_freq")
        per_cpu.append((idx, name, kind, khz // 1000 if khz else None))

    # Parts we do not know are classified by the kernel's cpu_capacity (1024 = the biggest).
    if any(k is None for _, _, k, _ in per_cpu):
        caps = {i: _read_int(root, f"sys/devices/system/cpu/cpu{i}/cpu_capacity")
                for i, *_ in per_cpu}
        top = max((v for v in caps.values() if v), default=None)
        fixed = []
        for i, name, kind, mhz in per_cpu:
            if kind is None:
                kind = "little" if top and caps[i] and caps[i] < 0.6 * top else "big"
                reasons.append(f"cpu{i}: unknown core {name}, classed {kind} by cpu_capacity")
            fixed.append((i, name, kind, mhz))
        per_cpu = fixed

    # One core design everywhere: those cores are the ones that compute, whatever their kind.
    if len({k for _, _, k, _ in per_cpu}) == 1:
        per_cpu = [(i, n, "big", m) for i, n, _, m in per_cpu]

    groups: dict[str, list] = {}
    for _, name, kind, mhz in per_cpu:
        g = groups.setdefault(name, [kind, 0, None])
        g[1] += 1
        if mhz:
            g[2] = max(g[2] or 0, mhz)
    clusters = [CoreCluster(n, cnt, kind, mhz) for n, (kind, cnt, mhz) in groups.items()]
    clusters.sort(key=lambda c: (c.kind != "big", -(c.max_mhz or 0)))
    return tuple(clusters), reasons


def _x86_clusters(root, cpus: list[dict[str, str]]) -> tuple[CoreCluster, ...]:
    model = cpus[0].get("model name", "x86 cpu") if cpus else "x86 cpu"
    # Intel hybrid parts list their P- and E-cores under /sys/devices/cpu_core and cpu_atom.
    p_cores = _parse_cpu_list(_read(root, "sys/devices/cpu_core/cpus"))
    e_cores = _parse_cpu_list(_read(root, "sys/devices/cpu_atom/cpus"))
    # SMT siblings share a (physical id, core id): count physical cores.
    cores: dict[tuple[str, str], list[int]] = {}
    for c in cpus:
        idx = int(c["processor"])
        key = (c.get("physical id", "0"), c.get("core id", str(idx)))
        cores.setdefault(key, []).append(idx)
    if p_cores and e_cores:
        n_p = sum(1 for ids in cores.values() if ids[0] in p_cores)
        n_e = sum(1 for ids in cores.values() if ids[0] in e_cores)
        return (CoreCluster(f"{model} P-core", n_p, "big"),
                CoreCluster(f"{model} E-core", n_e, "little"))
    mhz = _read_int(root, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return (CoreCluster(model, len(cores), "big", mhz // 1000 if mhz else None),)


def _features(root, cpus: list[dict[str, str]], arch: str) -> tuple[frozenset[str], str]:
    if str(root) == "/" and arch == "aarch64" and platform.machine() in ("aarch64", "arm64"):
        hw = _getauxval_features()
        if hw is not None:
            return hw, "getauxval"
    names = set()
    if cpus:
        raw = cpus[0].get("features") or cpus[0].get("flags") or ""
        for word in raw.split():
            if word in FEATURE_NAMES:
                names.add(FEATURE_NAMES[word])
    if arch == "aarch64":
        names.add("neon")  # Advanced SIMD is mandatory in ARMv8-A
    return frozenset(names), "/proc/cpuinfo"


def _getauxval_features() -> frozenset[str] | None:
    try:
        libc = ctypes.CDLL(None)
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
    names = {n for bit, n in _HWCAP_BITS.items() if hwcap >> bit & 1}
    names |= {n for bit, n in _HWCAP2_BITS.items() if hwcap2 >> bit & 1}
    return frozenset(names)


def _arch(root, cpus: list[dict[str, str]], glob_fields: dict[str, str]) -> str:
    if str(root) == "/":
        m = platform.machine()
        return {"arm64": "aarch64", "AMD64": "x86_64"}.get(m, m)
    if cpus and "flags" in cpus[0]:
        return "x86_64" if " lm " in f" {cpus[0]['flags']} " else "i686"
    if cpus and "cpu architecture" in cpus[0]:
        return "aarch64" if cpus[0]["cpu architecture"].startswith("8") and \
            "asimd" in cpus[0].get("features", "") else "armv7l"
    return "unknown"


def _usable_cpus(root, n_cpus: int) -> tuple[int, list[str]]:
    reasons = []
    n = n_cpus
    if str(root) == "/" and hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(root)
    if quota is not None and quota < n:
        reasons.append(f"cgroup CPU quota allows {quota:g} CPUs")
        n = max(1, int(quota + 0.999))
    return max(1, n), reasons


# -- cgroups ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mount:
    point: Path  # where it is mounted (under root)
    root: str  # the cgroup path the mount shows at its top ("/" unless a namespace/bind)


def _cgroup_mounts(root) -> tuple[_Mount | None, _Mount | None]:
    """(cgroup2 mount, cgroup v1 mount carrying the memory controller)."""
    v2 = v1 = None
    text = _read(root, "proc/self/mountinfo")
    if text:
        for line in text.splitlines():
            # id parent major:minor root mount-point options [optional...] - fstype source super
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            f, r = left.split(), right.split()
            if len(f) < 5 or not r:
                continue
            point = _path(root, f[4])
            if r[0] == "cgroup2" and v2 is None:
                v2 = _Mount(point, f[3])
            elif r[0] == "cgroup" and len(r) >= 3 and "memory" in r[2].split(","):
                v1 = _Mount(point, f[3])
        return v2, v1
    # No mountinfo (a sparse fabricated tree): the conventional places.
    base = _path(root, "sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        v2 = _Mount(base, "/")
    elif (base / "unified" / "cgroup.controllers").exists():
        v2 = _Mount(base / "unified", "/")
    if (base / "memory").is_dir():
        v1 = _Mount(base / "memory", "/")
    return v2, v1


def _own_cgroups(root) -> tuple[str | None, str | None, str | None]:
    """(v2 path, v1 memory path, v1 cpu path) from /proc/self/cgroup."""
    v2 = v1_mem = v1_cpu = None
    for line in (_read(root, "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1_mem = path
        elif "cpu" in controllers.split(","):
            v1_cpu = path
    return v2, v1_mem, v1_cpu


def _cgroup_dirs(mount: _Mount, path: str) -> tuple[list[Path], str]:
    """Directories from our cgroup up to the mount's top, innermost first.

    Inside a container the path in /proc/self/cgroup may name a host cgroup that is not under
    the mount (no cgroup namespace); then we start from its deepest ancestor that exists.
    """
    rel = path
    if mount.root != "/" and (rel == mount.root or rel.startswith(mount.root.rstrip("/") + "/")):
        rel = rel[len(mount.root.rstrip("/")):]
    parts = [p for p in rel.split("/") if p]
    note = ""
    while parts and not (mount.point.joinpath(*parts)).is_dir():
        parts.pop()
        note = f" ({path} is not visible under {mount.point}; using its nearest visible ancestor)"
    dirs = [mount.point.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return dirs, note


def _stat_value(text: str | None, *keys: str) -> int:
    values = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            values[k] = int(v)
    for k in keys:
        if k in values:
            return values[k]
    return 0


def read_cgroup_memory(root: str | os.PathLike = "/") -> CgroupMemory:
    """Our cgroup's memory limit: the smallest limit from our cgroup up to the root."""
    v2_path, v1_path, _ = _own_cgroups(root)
    v2_mount, v1_mount = _cgroup_mounts(root)

    if v2_path is not None and v2_mount is not None:
        dirs, note = _cgroup_dirs(v2_mount, v2_path)
        controllers = _read_abs(v2_mount.point / "cgroup.controllers") or ""
        has_memory = "memory" in controllers.split() or any(
            (d / "memory.max").exists() for d in dirs)
        if has_memory:
            best, best_dir = None, dirs[0]
            for d in dirs:
                text = _read_abs(d / "memory.max")
                if text is None or text.strip() == "max":
                    continue
                try:
                    value = int(text.strip())
                except ValueError:
                    continue
                if best is None or value < best:
                    best, best_dir = value, d
            usage = _int_abs(best_dir / "memory.current")
            cache = _stat_value(_read_abs(best_dir / "memory.stat"), "file")
            where = "/" + str(best_dir.relative_to(v2_mount.point)).lstrip(".")
            if best is None:
                reason = f"cgroup v2 {v2_path}: memory.max is 'max' up to the root{note}"
            else:
                reason = f"cgroup v2 memory.max of {where} is {best} bytes{note}"
            return CgroupMemory(2, v2_path, best, where if best is not None else "", usage,
                                cache, reason)
        v2_reason = (f"cgroup v2 {v2_path}: no memory controller (Raspberry Pi OS disables it "
                     f"with cgroup_disable=memory)")
    else:
        v2_reason = "no cgroup v2 hierarchy"

    if v1_path is not None and v1_mount is not None:
        dirs, note = _cgroup_dirs(v1_mount, v1_path)
        best, best_dir = None, dirs[0]
        for d in dirs:
            value = _int_abs(d / "memory.limit_in_bytes")
            if value is None or value >= _V1_UNLIMITED:
                continue
            if best is None or value < best:
                best, best_dir = value, d
        usage = _int_abs(best_dir / "memory.usage_in_bytes")
        cache = _stat_value(_read_abs(best_dir / "memory.stat"), "total_cache", "cache")
        where = "/" + str(best_dir.relative_to(v1_mount.point)).lstrip(".")
        if best is None:
            reason = f"cgroup v1 {v1_path}: memory.limit_in_bytes unlimited up to the root{note}"
        else:
            reason = f"cgroup v1 memory.limit_in_bytes of {where} is {best} bytes{note}"
        return CgroupMemory(1, v1_path, best, where if best is not None else "", usage, cache,
                            reason)

    return CgroupMemory(None, v2_path or "", None, "", None, 0,
                        v2_reason + "; no cgroup v1 memory controller")


def _cgroup_cpu_quota(root) -> float | None:
    """CPUs allowed by a CPU quota (cpu.max / cfs_quota_us), smallest on the way up."""
    v2_path, _, v1_cpu = _own_cgroups(root)
    best = None
    v2_mount, _ = _cgroup_mounts(root)
    if v2_path is not None and v2_mount is not None:
        dirs, _ = _cgroup_dirs(v2_mount, v2_path)
        for d in dirs:
            parts = (_read_abs(d / "cpu.max") or "").split()
            if len(parts) == 2 and parts[0] != "max":
                try:
                    q = int(parts[0]) / int(parts[1])
                except (ValueError, ZeroDivisionError):
                    continue
                best = q if best is None else min(best, q)
    if v1_cpu is not None:
        base = _path(root, "sys/fs/cgroup/cpu")
        if base.is_dir():
            dirs, _ = _cgroup_dirs(_Mount(base, "/"), v1_cpu)
            for d in dirs:
                quota, period = _int_abs(d / "cpu.cfs_quota_us"), _int_abs(d / "cpu.cfs_period_us")
                if quota and period and quota > 0:
                    q = quota / period
                    best = q if best is None else min(best, q)
    return best


def _read_abs(p: Path) -> str | None:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return None


def _int_abs(p: Path) -> int | None:
    text = _read_abs(p)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


# -- swap, zram, thermal ----------------------------------------------------------------------

def _zram(root) -> tuple[ZramDevice, ...]:
    out = []
    for d in sorted(glob.glob(str(_path(root, "sys/block/zram*")))):
        p = Path(d)
        size = _int_abs(p / "disksize") or 0
        if not size:
            continue  # an unconfigured zram device
        algo_text = _read_abs(p / "comp_algorithm") or ""
        m = re.search(r"\[(\S+)\]", algo_text)
        algo = m.group(1) if m else algo_text.strip()
        mm = (_read_abs(p / "mm_stat") or "").split()
        used = int(mm[2]) if len(mm) > 2 and mm[2].isdigit() else 0
        out.append(ZramDevice(p.name, size, algo, used))
    return tuple(out)


def _thermal(root) -> tuple[ThermalZone, ...]:
    zones = []
    paths = glob.glob(str(_path(root, "sys/class/thermal/thermal_zone*")))
    for d in sorted(paths, key=lambda s: int(re.sub(r"\D", "", Path(s).name) or 0)):
        p = Path(d)
        temp = _int_abs(p / "temp")
        if temp is None:
            continue
        name = (_read_abs(p / "type") or p.name).strip()
        passive = None
        for trip in sorted(p.glob("trip_point_*_type")):
            if (_read_abs(trip) or "").strip() == "passive":
                t = _int_abs(p / trip.name.replace("_type", "_temp"))
                if t is not None:
                    passive = t / 1000
                    break
        zones.append(ThermalZone(name, temp / 1000, passive))
    return tuple(zones)


# -- matching -----------------------------------------------------------------------------------

def _match_profile(model: str | None, android: bool, arch: str,
                   cpu_name: str) -> tuple[DeviceProfile, str]:
    if model:
        for p in PROFILES.values():
            for pat in p.model_patterns:
                if re.search(pat, model):
                    return p, f"device-tree model '{model}' matches {p.name} ('{pat}')"
    if android:
        return PROFILES["android-arm64"], "Android (system/build.prop or Termux environment)"
    if arch in ("x86_64", "i686") and _MINI_PC_CPU.search(cpu_name):
        return PROFILES["x86-mini-pc"], f"CPU '{cpu_name}' is an N100-class mini PC part"
    what = f"model '{model}'" if model else "no device-tree model"
    return PROFILES["host"], f"{what}, CPU '{cpu_name}': no specific profile, using host"


def detect_device(root: str | os.PathLike = "/") -> DeviceInfo:
    """Read the device below `root` and match it to a profile."""
    root = str(root)
    reasons: list[str] = []
    cpus, glob_fields = _parse_cpuinfo(_read(root, "proc/cpuinfo") or "")
    arch = _arch(root, cpus, glob_fields)

    model = _device_tree_model(root)
    if model is None and glob_fields.get("model"):
        model = glob_fields["model"]  # Raspberry Pi kernels repeat the model in /proc/cpuinfo
        reasons.append("model from /proc/cpuinfo (no device tree)")
    android = _is_android(root)
    if android:
        props = _android_props(root) or {}
        brand = props.get("ro.product.manufacturer", "")
        name = props.get("ro.product.model", "")
        soc = props.get("ro.soc.model") or props.get("ro.board.platform", "")
        model = " ".join(x for x in (brand, name) if x) or model or "Android device"
        if soc:
            model += f" ({soc})"
    elif model is None:
        vendor = (_read(root, "sys/class/dmi/id/sys_vendor") or "").strip()
        product = (_read(root, "sys/class/dmi/id/product_name") or "").strip()
        model = " ".join(x for x in (vendor, product) if x) or None

    if arch in ("x86_64", "i686"):
        clusters = _x86_clusters(root, cpus)
        cpu_name = cpus[0].get("model name", "x86") if cpus else "x86"
    elif cpus:
        clusters, notes = _arm_clusters(root, cpus)
        reasons += notes
        cpu_name = " + ".join(f"{c.count}x {c.name}" for c in clusters)
    else:
        n = (os.cpu_count() or 1) if root == "/" else 1
        clusters = (CoreCluster("cpu", n, "big"),)
        cpu_name = "unknown CPU"
        reasons.append("no /proc/cpuinfo")
    features, features_source = _features(root, cpus, arch)

    profile, why = _match_profile(model, android, arch, cpu_name)
    reasons.insert(0, why)
    if len(clusters) > 1:
        reasons.append("big.LITTLE: " + ", ".join(f"{c.count}x {c.name} ({c.kind})"
                                                  for c in clusters))

    n_cpus = len(cpus) or sum(c.count for c in clusters)
    usable, cpu_notes = _usable_cpus(root, n_cpus)
    reasons += cpu_notes

    mem = _parse_meminfo(_read(root, "proc/meminfo"))
    total = mem.get("MemTotal", 0)
    available = mem.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = mem.get("MemFree", 0) + mem.get("Buffers", 0) + mem.get("Cached", 0)
    cgroup = read_cgroup_memory(root)
    reasons.append(cgroup.reason)
    if cgroup.limit is not None and cgroup.limit < total:
        reasons.append(f"cgroup limit {cgroup.limit} is below physical memory {total}")

    status = _parse_meminfo(_read(root, "proc/self/status"))
    return DeviceInfo(
        root=root, model=model or "unknown", profile=profile, arch=arch, cpu_name=cpu_name,
        clusters=clusters, features=features, features_source=features_source,
        usable_cpus=usable, mem_total=total, mem_available=available, cgroup=cgroup,
        swap_total=mem.get("SwapTotal", 0), swap_free=mem.get("SwapFree", 0),
        zram=_zram(root), thermal=_thermal(root),
        throttled=_read_hex(root, "sys/devices/platform/soc/soc:firmware/get_throttled"),
        self_rss=status.get("VmRSS", 0), reasons=reasons,
    )


def _read_hex(root, rel: str) -> int | None:
    text = _read(root, rel)
    if text is None:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None
