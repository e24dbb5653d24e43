"""Device profiles as data: what a board can give a model (cores, ISA features, RAM, memory
bandwidth, storage speed, thermal headroom).

Numbers are typical figures for a stock board, with their source beside them. Where no
measurement was published we derive one and say how: memory bandwidth as a fraction of the
theoretical peak (bus width x transfer rate), using the efficiency measured on a Pi 4
(STREAM copy 5.5 GB/s of 12.8 GB/s theoretical, about 43%:
https://www.sci-pi.org.uk/bench/stream.html). The planner only needs these to within a few
tens of percent: they set the expected tokens/s and the default budget of a board that is not
the one we are running on (`edgellm plan --device pi4:2G`).

Feature names are normalised across ISAs (see detect.FEATURE_NAMES): neon, fp16, dotprod,
i8mm, sve, sve2, bf16 on ARM; sse3, ssse3, avx, avx2, fma, f16c, avxvnni, avx512f,
avx512bw, avx512vnni on x86.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgellm.errors import EdgeLLMError

__all__ = ["CoreCluster", "DeviceProfile", "PROFILES", "get_profile", "profile_names"]

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class CoreCluster:
    """CPUs of one core design. kind is "big" (the cores to run matmuls on) or "little".

    A board whose cores are all one design has one "big" cluster even if the design is an
    efficiency core (a Pi 3's Cortex-A53s are all it has, so all of them compute).
    """

    name: str  # "Cortex-A72", "Intel(R) N100"
    count: int
    kind: str = "big"
    max_mhz: int | None = None


@dataclass(frozen=True)
class DeviceProfile:
    name: str  # the key used by --device
    title: str
    clusters: tuple[CoreCluster, ...]
    features: frozenset[str]
    ram_options: tuple[int, ...]  # bytes, smallest first
    mem_bandwidth_gbs: float  # typical sustained CPU read bandwidth, GB/s (1e9 bytes/s)
    storage_mbs: float  # sequential read of the usual boot/model storage, MB/s (1e6 bytes/s)
    storage_class: str
    throttle_c: float  # temperature at which the firmware/kernel starts lowering the clock
    sustained_fraction: float  # clock kept under long all-core load, stock cooling
    os_reserved: int  # bytes a stock OS keeps (GPU split, kernel, idle services)
    model_patterns: tuple[str, ...] = ()  # regexes on the device-tree model string
    notes: str = ""
    arch: str = "aarch64"

    @property
    def n_big(self) -> int:
        return sum(c.count for c in self.clusters if c.kind == "big")

    @property
    def n_little(self) -> int:
        return sum(c.count for c in self.clusters if c.kind == "little")

    @property
    def n_cores(self) -> int:
        return sum(c.count for c in self.clusters)


def _ram(*gib: float) -> tuple[int, ...]:
    return tuple(int(g * GiB) for g in gib)


_ARM_BASIC = frozenset({"neon"})  # Broadcom's Pi SoCs lack the crypto extension; no dotprod
_A76 = frozenset({"neon", "fp16", "dotprod"})  # ARMv8.2-A: asimdhp, asimddp

PROFILES: dict[str, DeviceProfile] = {}


def _add(p: DeviceProfile) -> None:
    PROFILES[p.name] = p


# Raspberry Pi Zero 2 W: RP3A0 = BCM2710A1 (4x Cortex-A53 @ 1 GHz) with 512 MB LPDDR2 in the
# package (raspberrypi.com product brief). LPDDR2 x32 at 900 MT/s = 3.6 GB/s peak; x0.43 ->
# ~1.6 GB/s. microSD at SDR25 (25 MB/s bus limit; ~22 MB/s measured reads). Firmware throttles
# at 80 C (raspberrypi.com docs "Frequency management and thermal control"); the Zero 2 W
# mostly stays below it bare, but reaches it in long all-core runs in a case (Halfacree's
# benchmarks), hence 0.85. Raspberry Pi OS Lite takes ~70 MB plus the 64 MB GPU split.
_add(DeviceProfile(
    name="pi-zero-2w", title="Raspberry Pi Zero 2 W",
    clusters=(CoreCluster("Cortex-A53", 4, "big", 1000),),
    features=_ARM_BASIC, ram_options=_ram(0.5),
    mem_bandwidth_gbs=1.6, storage_mbs=22, storage_class="microSD (SDR25)",
    throttle_c=80, sustained_fraction=0.85, os_reserved=140 * MiB,
    model_patterns=(r"Raspberry Pi Zero 2",),
))

# Raspberry Pi 3 Model B / B+: BCM2837(B0), 4x Cortex-A53 @ 1.2 / 1.4 GHz, 1 GB LPDDR2 at
# 900 MT/s (same 3.6 GB/s peak -> ~1.6 GB/s). microSD SDR25. Throttles at 80 C (the 3B+ also
# has a 60 C soft limit that drops 1.4 -> 1.2 GHz); a bare 3B under all-core load settles near
# 70% clock.
_add(DeviceProfile(
    name="pi3b", title="Raspberry Pi 3 Model B/B+",
    clusters=(CoreCluster("Cortex-A53", 4, "big", 1200),),
    features=_ARM_BASIC, ram_options=_ram(1),
    mem_bandwidth_gbs=1.6, storage_mbs=22, storage_class="microSD (SDR25)",
    throttle_c=80, sustained_fraction=0.7, os_reserved=160 * MiB,
    model_patterns=(r"Raspberry Pi 3 Model [AB]",),
))

# Raspberry Pi 4 Model B (and Pi 400): BCM2711, 4x Cortex-A72 @ 1.5/1.8 GHz, LPDDR4-3200 x32
# (12.8 GB/s peak); STREAM copy 5.5 GB/s (sci-pi.org.uk, above). microSD at DDR50: ~45 MB/s
# reads. Throttles from 80 C (Roy Longbottom's Pi 4B stress tests: 1500 -> 1000/750 MHz within
# a minute of four-core load without a heatsink), ~60% sustained bare.
_add(DeviceProfile(
    name="pi4", title="Raspberry Pi 4 Model B / Pi 400",
    clusters=(CoreCluster("Cortex-A72", 4, "big", 1800),),
    features=_ARM_BASIC, ram_options=_ram(1, 2, 4, 8),
    mem_bandwidth_gbs=5.5, storage_mbs=45, storage_class="microSD (DDR50)",
    throttle_c=80, sustained_fraction=0.6, os_reserved=200 * MiB,
    model_patterns=(r"Raspberry Pi 4 Model", r"Raspberry Pi 400"),
))

# Compute Module 4: the Pi 4's BCM2711 and LPDDR4-3200; on-module eMMC (HS200 is not wired;
# ~90 MB/s reads measured by Jeff Geerling's CM4 review). Thermals depend on the carrier;
# assume a heatsink-less carrier like the Pi 4.
_add(DeviceProfile(
    name="cm4", title="Raspberry Pi Compute Module 4",
    clusters=(CoreCluster("Cortex-A72", 4, "big", 1500),),
    features=_ARM_BASIC, ram_options=_ram(1, 2, 4, 8),
    mem_bandwidth_gbs=5.5, storage_mbs=90, storage_class="eMMC",
    throttle_c=80, sustained_fraction=0.6, os_reserved=200 * MiB,
    model_patterns=(r"Raspberry Pi Compute Module 4",),
))

# Raspberry Pi 5 (and Pi 500): BCM2712, 4x Cortex-A76 @ 2.4 GHz (ARMv8.2: fp16 arithmetic and
# dot product, no i8mm), LPDDR4X-4267 x32 = 17.1 GB/s peak; the A76's deeper miss queues reach
# a higher fraction than the A72, ~9 GB/s (~53%). microSD at SDR104: ~90 MB/s (Jeff
# Geerling's Pi 5 tests); NVMe on the PCIe 2.0 x1 slot ~430 MB/s. Throttles at 80 C (85 C
# hard); bare, an all-core load holds ~1.5 of 2.4 GHz (~0.6); the Active Cooler keeps 1.0.
_add(DeviceProfile(
    name="pi5", title="Raspberry Pi 5 / Pi 500",
    clusters=(CoreCluster("Cortex-A76", 4, "big", 2400),),
    features=_A76, ram_options=_ram(2, 4, 8, 16),
    mem_bandwidth_gbs=9.0, storage_mbs=90, storage_class="microSD (SDR104); NVMe ~430 MB/s",
    throttle_c=80, sustained_fraction=0.6, os_reserved=220 * MiB,
    model_patterns=(r"Raspberry Pi 5", r"Raspberry Pi 500"),
))

# Compute Module 5: BCM2712 as the Pi 5, LPDDR4X 2/4/8/16 GB, eMMC HS400 (~250 MB/s reads;
# approximate, carrier dependent).
_add(DeviceProfile(
    name="cm5", title="Raspberry Pi Compute Module 5",
    clusters=(CoreCluster("Cortex-A76", 4, "big", 2400),),
    features=_A76, ram_options=_ram(2, 4, 8, 16),
    mem_bandwidth_gbs=9.0, storage_mbs=250, storage_class="eMMC (HS400)",
    throttle_c=80, sustained_fraction=0.6, os_reserved=220 * MiB,
    model_patterns=(r"Raspberry Pi Compute Module 5",),
))

# An arm64 Android phone under Termux, modelled on a Snapdragon 8 Gen 2 (SM8550): 1x
# Cortex-X3 + 2x A715 + 2x A710 (big) and 3x A510 (little), ARMv9: dotprod, fp16, i8mm, bf16
# (SVE is fused off on Snapdragons). LPDDR5X-4200 x64 = 67 GB/s peak; a CPU cluster reaches
# well under half: ~30 GB/s. UFS 3.1 reads ~1800 MB/s (UFS 4.0 on the newest). Phones limit
# skin temperature (~43 C) long before the SoC's ~95 C junction limit: sustained clocks after
# 10-20 min of load are ~55% of peak (3DMark stress-test stability of 2022-23 flagships).
# Android keeps ~2.5 GB for the system and the low-memory killer's free target.
_add(DeviceProfile(
    name="android-arm64", title="Android phone (arm64, Termux)",
    clusters=(CoreCluster("Cortex-X3", 1, "big", 3360), CoreCluster("Cortex-A715", 2, "big", 2800),
              CoreCluster("Cortex-A710", 2, "big", 2800),
              CoreCluster("Cortex-A510", 3, "little", 2000)),
    features=frozenset({"neon", "fp16", "dotprod", "i8mm", "bf16"}),
    ram_options=_ram(4, 6, 8, 12, 16),
    mem_bandwidth_gbs=30.0, storage_mbs=1800, storage_class="UFS 3.1",
    throttle_c=95, sustained_fraction=0.55, os_reserved=2560 * MiB,
    notes="big.LITTLE: threads go to the big cores only",
))

# An x86 mini PC with an Intel N100 (Alder Lake-N): 4 Gracemont E-cores up to 3.4 GHz, AVX2,
# FMA, F16C and AVX-VNNI, no AVX-512; one memory channel (DDR4-3200: 25.6 GB/s peak, DDR5-4800:
# 38.4 GB/s), ~16 GB/s measured by memory benchmarks. NVMe on PCIe 3.0 x1/x2 in most boxes:
# ~1000 MB/s. 6 W TDP: fanless boxes hold ~85% of turbo clocks; Tj max 105 C.
_add(DeviceProfile(
    name="x86-mini-pc", title="x86 mini PC (Intel N100 class)",
    clusters=(CoreCluster("Gracemont", 4, "big", 3400),),
    features=frozenset({"sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avxvnni"}),
    ram_options=_ram(8, 16, 32),
    mem_bandwidth_gbs=16.0, storage_mbs=1000, storage_class="NVMe (PCIe 3.0 x1/x2)",
    throttle_c=105, sustained_fraction=0.85, os_reserved=800 * MiB, arch="x86_64",
))

# Anything else: the running machine's cores, features and RAM come from detection; bandwidth
# and storage are conservative defaults (a dual-channel DDR4 desktop reaches 20-40 GB/s, a
# SATA SSD ~500 MB/s).
_add(DeviceProfile(
    name="host", title="generic host",
    clusters=(CoreCluster("cpu", 4, "big"),),
    features=frozenset(), ram_options=_ram(4),
    mem_bandwidth_gbs=10.0, storage_mbs=500, storage_class="SSD",
    throttle_c=100, sustained_fraction=1.0, os_reserved=1024 * MiB, arch="",
))


def profile_names() -> list[str]:
    return list(PROFILES)


def get_profile(name: str) -> DeviceProfile:
    """The profile called `name` (case-insensitive; '_' and '-' are the same)."""
    key = name.strip().lower().replace("_", "-")
    aliases = {"pi-zero2w": "pi-zero-2w", "zero2w": "pi-zero-2w", "pi3": "pi3b",
               "android": "android-arm64", "n100": "x86-mini-pc", "mini-pc": "x86-mini-pc"}
    key = aliases.get(key, key)
    if key not in PROFILES:
        raise EdgeLLMError(f"unknown device '{name}'; known devices: {', '.join(PROFILES)}")
    return PROFILES[key]
