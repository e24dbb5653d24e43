"""The ARM kernel variants, cross-compiled with aarch64-linux-gnu-gcc and run under
qemu-aarch64 as a Cortex-A72 (Raspberry Pi 4: ARMv8.0, no dotprod, no fp16 arithmetic) and a
Cortex-A76 (Raspberry Pi 5: ARMv8.2 dotprod + fp16).

tests/arm/probe.c runs the CPU probe (kernels/cpu_features.c, baseline flags) and names the
variant edgellm would load; tests/arm/kernel_check.c compares every kernel of one variant with
the reference on random inputs (its header states the tolerances). Both are built from the
same sources and flags as the real modules (kernels/build_kernels.py's ARM table).
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"

pytestmark = pytest.mark.skipif(
    shutil.which(CC) is None or shutil.which(QEMU) is None,
    reason=f"needs {CC} and {QEMU} (apt-get install gcc-aarch64-linux-gnu qemu-user)")

# which variants each emulated CPU may run, best first
RUNS = {"cortex-a72": ["neon", "generic"], "cortex-a76": ["dotprod", "neon", "generic"]}


def _build_kernels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_kernels_arm", KERNELS / "build_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(out: Path, sources: list[Path], flags: list[str], defines: list[str]) -> Path:
    cmd = [CC, "-static", "-pthread", f"-I{KERNELS}", *flags, *defines, "-o", str(out),
           *map(str, sources), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    """{"probe": path, "<variant>": path of its kernel_check} built in parallel."""
    bk = _build_kernels()
    tmp = tmp_path_factory.mktemp("arm")
    jobs = {"probe": (tmp / "probe", [ROOT / "tests/arm/probe.c", KERNELS / "cpu_features.c"],
                      ["-O2", "-std=c11", "-march=armv8-a"], [])}
    for name, (extra, flags, header) in bk.variants("aarch64").items():
        defines = [f'-DEL_VARIANT="{name}"'] + ([f'-DEL_ARCH_QUANTS_H="{header}"'] if header else [])
        sources = [ROOT / "tests/arm/kernel_check.c"] + [KERNELS / s for s in bk.SOURCES + extra]
        jobs[name] = (tmp / f"check_{name}", sources, bk.CFLAGS + flags, defines)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(_compile, *job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def qemu(cpu: str, binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", cpu, str(binary)], capture_output=True, text=True, timeout=600)


def test_arm_build_table_is_what_the_probe_knows(binaries):
    result = qemu("cortex-a76", binaries["probe"])
    assert result.returncode == 0 and "arch aarch64" in result.stdout
    assert set(_build_kernels().variants("aarch64")) == {"dotprod", "neon", "generic"}


def test_probe_picks_neon_on_cortex_a72(binaries):
    result = qemu("cortex-a72", binaries["probe"])
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["features"].split() == ["asimd"]
    assert lines["variant"] == "neon"


def test_probe_picks_dotprod_on_cortex_a76(binaries):
    result = qemu("cortex-a76", binaries["probe"])
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert {"asimd", "asimddp", "fphp", "asimdhp"} <= set(lines["features"].split())
    assert lines["variant"] == "dotprod"


@pytest.mark.parametrize("cpu, variant", [(cpu, v) for cpu, vs in RUNS.items() for v in vs])
def test_arm_variant_matches_reference_kernels(binaries, cpu, variant):
    result = qemu(cpu, binaries[variant])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"variant {variant}"
    assert f"{variant}: " in result.stdout and ", 0 failures" in result.stdout


def test_dotprod_variant_faults_on_cortex_a72(binaries):
    """The dotprod build really uses sdot / fp16 arithmetic: an A72 traps on it (SIGILL),
    which is why the probe must never pick it there."""
    result = qemu("cortex-a72", binaries["dotprod"])
    assert result.returncode == -4, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
