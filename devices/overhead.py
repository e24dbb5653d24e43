"""What a process costs before it holds a model: measured on this machine, once, and cached.

The interpreter, numpy, cffi, the compiled kernels and our modules take a resident size that
depends on the Python build, the libraries' versions and the CPU (which kernel variant loads).
A constant in the planner was wrong by megabytes from one machine to the next, so the first
plan measures it instead: a fresh interpreter imports what a command imports and reports its
VmRSS. The result is cached under ~/.cache/edgellm (or $EDGELLM_CACHE) keyed by everything
that changes it, so later starts read a file. A board pays the measurement (about 0.3 s here,
a few seconds on a Pi Zero) once per upgrade.

What is measured for each purpose (module names: the runtime and the services are imported
by the child, not by this module, which sits beside them):
  - "run": the command line and the runtime, as `edgellm run`, `chat` and `bench` load them;
  - "serve": that plus the services and the HTTP server stack, as `edgellm serve` loads them.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

__all__ = ["PURPOSES", "ESTIMATES", "process_overhead", "peak_rss_bytes"]

PURPOSES = {
    "run": ("edgellm.cli.main", "edgellm.runtime.generation"),
    "serve": ("edgellm.cli.main", "edgellm.runtime.generation", "edgellm.services.serve",
              "edgellm.services.http_api"),
}
# Used when the measurement cannot run (no /proc, a sandbox without fork) and when planning
# for another board: VmRSS measured by process_overhead() on x86_64, Python 3.11, numpy 2.4,
# cffi 2.0 (31.6 and 38.5 MiB; 4-6 MiB more right after pip wrote the libraries, whose pages
# the page cache then maps in larger folios). Not measured on aarch64: qemu-user's RSS is
# the emulator's.
ESTIMATES = {"run": 32 << 20, "serve": 38 << 20}

# (The runtime trims the C heap after a load, runtime/generation.py release_freed_heap: so does
# the probe, or the kernels' self-check temporaries would be counted.)
_PROBE = """
import ctypes, importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
getattr(ctypes.CDLL(None), "malloc_trim", lambda pad: 0)(0)
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")))
"""
MEASURE_TIMEOUT_S = 60


def _cache_file() -> Path:
    root = os.environ.get("EDGELLM_CACHE") or Path.home() / ".cache" / "edgellm"
    return Path(root) / "process-overhead.json"


def _key(purpose: str) -> str:
    """Everything the measurement depends on: the interpreter, numpy and cffi (loaded by now
    in any process that plans), our sources and kernel builds (by modification time), the
    kernel variant forced, if any."""
    versions = [f"{name} {getattr(sys.modules.get(name), '__version__', '-')}" for name in ("numpy", "_cffi_backend")]
    package = Path(__file__).resolve().parents[1]
    sources = max((p.stat().st_mtime_ns for p in package.glob("*/*.py")), default=0)
    builds = sorted((p.name, p.stat().st_mtime_ns) for p in package.glob("kernels/_kernels_*.so"))
    return json.dumps([purpose, sys.executable, sys.version, versions, sources, builds,
                       os.environ.get("EDGELLM_KERNELS", "")])


def process_overhead(purpose: str = "run") -> tuple[int, bool]:
    """(bytes, measured): VmRSS of a fresh interpreter that imported what `purpose` needs,
    from the cache or measured now; (the estimate, False) if it cannot be measured."""
    key = _key(purpose)
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), int):
        return cached[key], True
    import subprocess  # 0.7 MiB of RSS, for a measurement made once

    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, *PURPOSES[purpose]], capture_output=True,
                             text=True, timeout=MEASURE_TIMEOUT_S, check=True)
        measured = int(out.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return ESTIMATES[purpose], False
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = measured
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return measured, True


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM belongs to the process's own address
    space; ru_maxrss is not reset by exec, so a child started from a big parent would
    report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
