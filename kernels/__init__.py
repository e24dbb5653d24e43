"""edgellm.kernels: the C kernels, compiled through cffi, and a thin typed layer over them.

The kernels are built once per ISA variant (build_kernels.py); at import the best variant
this CPU runs is loaded, as probed by the `_cpu` module (cpuid + xgetbv on x86-64,
getauxval(AT_HWCAP) on aarch64). A variant's module is never imported on a CPU that lacks
its features: its code, even its module init, may use them. EDGELLM_KERNELS=<name> picks
a variant by name instead (`generic` is always there), and
EDGELLM_DISABLE_CPU_FEATURES=avx512vnni,... makes the loader act as if the CPU lacked those
features (it can only take features away, so it cannot make an unsafe choice).

EDGELLM_KERNELS_DEBUG=1 loads the chosen variant's debug build instead: AddressSanitizer and
UndefinedBehaviorSanitizer, red zones between scratch regions (scratch.h), compiled on first
use into $EDGELLM_CACHE/kernels-debug (a C compiler is needed). The process must start with
ASan's runtime preloaded (the error says how). DEBUG tells the runtime to fill the buffers it
allocates (KV cache, activations) and the cache rows it truncates with NaN bytes, so a read
of anything never written shows up as NaN.

The chosen variant first checks itself against the reference kernels (selfcheck.py, a few
milliseconds); one that fails is passed over for the next, with a warning line (an
EDGELLM_KERNELS choice that fails is an error). SELF_CHECK says how it went.

`lib` holds the chosen variant's C functions (kernels/api.h); the runtime calls them directly
on its hot path with pointers it prepared once (`ptr`). The helpers below (quantize,
dequantize, matmul, ...) allocate and are for loading, tests and tools, not for the per-token
path. VARIANT and VARIANT_REASON say what was loaded and why; describe() says it all for
`edgellm info --system`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgellm.errors import EdgeLLMError
from edgellm.kernels._cpu import ffi as _cpu_ffi
from edgellm.kernels import selfcheck
from edgellm.kernels._cpu import lib as _cpu

ENV_VAR = "EDGELLM_KERNELS"
DISABLE_VAR = "EDGELLM_DISABLE_CPU_FEATURES"
DEBUG_VAR = "EDGELLM_KERNELS_DEBUG"
DEBUG = os.environ.get(DEBUG_VAR, "").strip() not in ("", "0")

# ggml type ids (kernels/api.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = 10, 11, 12, 13, 14, 15, 30

_CTYPES = {np.float32: "float *", np.int32: "int32_t *", np.uint16: "uint16_t *"}


def _string(p) -> str:
    return _cpu_ffi.string(p).decode()


# ---- the CPU and the variants ---------------------------------------------------------------

def _variant_error(message: str) -> Exception:
    return EdgeLLMError(message)


CPU_ARCH = _string(_cpu.el_cpu_arch())
_FEATURE_BITS = _cpu.el_cpu_features()
_FEATURE_NAMES = [_string(_cpu.el_cpu_feature_name(i)) for i in range(_cpu.el_cpu_feature_count())]
_DISABLED = [f.strip() for f in os.environ.get(DISABLE_VAR, "").split(",") if f.strip()]
if set(_DISABLED) - set(_FEATURE_NAMES):
    raise _variant_error(f"{DISABLE_VAR}: unknown CPU feature(s) {', '.join(sorted(set(_DISABLED) - set(_FEATURE_NAMES)))}; "
                         f"the {CPU_ARCH} features are {', '.join(_FEATURE_NAMES)}")
# the features the variants care about that this CPU (and OS) has, less any disabled
CPU_FEATURES = [name for i, name in enumerate(_FEATURE_NAMES) if _FEATURE_BITS >> i & 1 and name not in _DISABLED]


def _module_name(name: str) -> str:
    return f"edgellm.kernels._kernels_{name}"


def variants() -> list[dict]:
    """Every variant of this ISA family, best first: name, description, the features it
    needs, which of them this CPU lacks, whether it was built, and whether it can run here."""
    out = []
    for i in range(_cpu.el_variant_count()):
        name = _string(_cpu.el_variant_name(i))
        needs = _cpu.el_variant_requires(i)
        requires = [f for b, f in enumerate(_FEATURE_NAMES) if needs >> b & 1]
        out.append({
            "name": name,
            "description": _string(_cpu.el_variant_description(i)),
            "requires": requires,
            "missing": [f for f in requires if f not in CPU_FEATURES],
            "built": importlib.util.find_spec(_module_name(name)) is not None,
            "supported": all(f in CPU_FEATURES for f in requires),
        })
    return out


def load_variant(name: str):
    """(ffi, lib) of a variant's module, after checking that it exists, was built and runs on
    this CPU (so no instruction the CPU lacks is ever executed)."""
    table = {v["name"]: v for v in variants()}
    if name not in table:
        raise _variant_error(
            f"unknown kernel variant {name!r}: this {CPU_ARCH} build has {', '.join(table)}")
    v = table[name]
    if not v["built"]:
        built = [n for n, t in table.items() if t["built"]]
        raise _variant_error(f"kernel variant {name!r} was not built; built: {', '.join(built)}")
    if not v["supported"]:
        raise _variant_error(
            f"kernel variant {name!r} needs CPU features this CPU lacks ({', '.join(v['missing'])}); "
            f"unset {ENV_VAR} to pick the best supported one")
    module = _debug_module(name) if DEBUG else importlib.import_module(_module_name(name))
    return module.ffi, module.lib


def _debug_module(name: str):
    """The sanitizer build of a variant (DEBUG), compiled once per version of the sources."""
    maps = Path("/proc/self/maps")
    if maps.exists() and "libasan" not in maps.read_text():
        raise _variant_error(
            f"{DEBUG_VAR}=1 needs AddressSanitizer's runtime loaded before Python: run with "
            "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0")
    import hashlib  # loads OpenSSL, 3.3 MiB of RSS: only for this build

    from edgellm.kernels import build_kernels  # cffi's builder: only for this build

    here = Path(__file__).resolve().parent
    sources = sorted(p for p in [*here.glob("*.[ch]"), *here.glob("arch/*/*.[ch]"), here / "build_kernels.py"]
                     if not p.name.startswith("_kernels_"))
    digest = hashlib.sha256(name.encode())
    for p in sources:
        digest.update(p.read_bytes())
    root = Path(os.environ.get("EDGELLM_CACHE") or Path.home() / ".cache" / "edgellm") / "kernels-debug"
    folder = root / f"{name}-{digest.hexdigest()[:16]}"
    if not folder.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root)
        build_kernels.variant_builder(name, debug=True, src=here).compile(tmpdir=tmp)
        try:
            os.replace(tmp, folder)  # whole, or not at all
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    so = next(folder.glob(f"**/_kernels_{name}_debug*.so"))
    spec = importlib.util.spec_from_file_location(_module_name(name) + "_debug", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def choose_variant(table: list[dict], check=None) -> tuple[str, str, tuple, str]:
    """The best built variant this CPU runs that passes its self-check (selfcheck.py), as
    (name, reason, (ffi, lib), what the check said). A variant that fails it is passed over
    with one warning line naming it and the kernel. check(name, ffi, lib) -> failure or None
    stands in for the self-check in tests."""
    check = check or (lambda name, ffi, lib: selfcheck.check(ffi, lib))
    passed_over = []
    for v in table:
        if not (v["built"] and v["supported"]):
            continue
        ffi_lib = load_variant(v["name"])
        t0 = time.perf_counter()
        failed = check(v["name"], *ffi_lib)
        cost = f"{(time.perf_counter() - t0) * 1000:.1f} ms"
        if failed:
            print(f"edgellm: kernel variant {v['name']} failed its self-check ({failed}); trying the next one",
                  file=sys.stderr)
            passed_over.append(f"{v['name']} (failed its self-check: {failed})")
            continue
        better = [f"{w['name']} (needs {', '.join(w['missing'])})" for w in table
                  if w["built"] and not w["supported"]] + passed_over
        reason = ("the best variant built; this CPU runs it" if not better else
                  "the best variant this CPU runs; not " + "; ".join(better))
        return v["name"], reason, ffi_lib, f"passed in {cost}"
    raise _variant_error("no kernel variant passed its self-check: " + "; ".join(passed_over))


def _select() -> tuple[str, str, tuple, str]:
    requested = os.environ.get(ENV_VAR, "").strip()
    if not requested:
        return choose_variant(variants())
    ffi_lib = load_variant(requested)  # raises with the reason if it cannot run
    t0 = time.perf_counter()
    failed = selfcheck.check(*ffi_lib)
    if failed:
        raise _variant_error(f"kernel variant {requested!r} failed its self-check ({failed}); "
                             f"unset {ENV_VAR} to pick one that passes")
    return requested, f"{ENV_VAR}={requested}", ffi_lib, f"passed in {(time.perf_counter() - t0) * 1000:.1f} ms"


VARIANT, VARIANT_REASON, (ffi, lib), SELF_CHECK = _select()
VARIANTS_BUILT = [v["name"] for v in variants() if v["built"]]


def describe() -> str:
    """Several lines for `edgellm info --system`: the variant in use and why, the CPU's
    features, and every variant with its requirements."""
    lines = [f"kernels: {VARIANT} ({VARIANT_REASON})" + (f"; debug build ({DEBUG_VAR})" if DEBUG else ""),
             f"  cpu: {CPU_ARCH}, features: {' '.join(CPU_FEATURES) or 'none of ' + ' '.join(_FEATURE_NAMES)}"
             + (f" ({DISABLE_VAR}: {' '.join(_DISABLED)})" if _DISABLED else "")]
    for v in variants():
        if not v["built"]:
            state = "not built"
        elif v["supported"]:
            state = "runs here"
        else:
            state = "needs " + " ".join(v["missing"])
        mark = "*" if v["name"] == VARIANT else " "
        lines.append(f"  {mark} {v['name']:<11} {state:<24} {v['description']}")
    lines.append(f"  self-check against the reference kernels: {SELF_CHECK}")
    lines.append(f"  threads: {lib.el_get_threads()}")
    return "\n".join(lines)


# ---- typed helpers ----------------------------------------------------------------------

def ptr(array: np.ndarray):
    """A C pointer to a C-contiguous array's data. The caller keeps the array alive."""
    if not array.flags.c_contiguous:
        raise ValueError("kernel arguments must be C-contiguous arrays")
    return ffi.cast(_CTYPES.get(array.dtype.type, "void *"), array.ctypes.data)


def row_size(type_: int, n: int) -> int:
    """Bytes of a row of n elements of a type."""
    if not lib.el_type_supported(type_):
        raise ValueError(f"the kernels do not support ggml type {type_}")
    if n % lib.el_block_size(type_):
        raise ValueError(f"a row of {n} is not a whole number of blocks of type {type_}")
    return lib.el_row_size(type_, n)


def quantize(type_: int, x: np.ndarray) -> np.ndarray:
    """Quantize an f32 array whose last dimension holds the rows; returns uint8 rows."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    out = np.empty((rows.shape[0], row_size(type_, n)), dtype=np.uint8)
    for i in range(rows.shape[0]):
        if lib.el_quantize_row(type_, ptr(rows[i]), ptr(out[i]), n) != 0:
            raise ValueError(f"cannot quantize to ggml type {type_}")
    return out.reshape(x.shape[:-1] + (out.shape[-1],))


def dequantize(type_: int, data: np.ndarray, n: int) -> np.ndarray:
    """Dequantize rows of n elements stored in `data` (uint8 bytes); returns (rows, n) f32."""
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    size = row_size(type_, n)
    if data.size % size:
        raise ValueError(f"{data.size} bytes is not a whole number of rows of {size} bytes")
    out = np.empty((data.size // size, n), dtype=np.float32)
    lib.el_dequantize_row(type_, ptr(data), ptr(out), out.size)
    return out


def matmul(type_: int, w: np.ndarray, n_cols: int, x: np.ndarray) -> np.ndarray:
    """y = x @ W.T for weights W of (rows, n_cols) stored as `type_` bytes; x: (n_tokens, n_cols)."""
    w = np.ascontiguousarray(w).view(np.uint8).reshape(-1)
    n_rows = w.size // row_size(type_, n_cols)
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, n_cols)
    y = np.empty((x.shape[0], n_rows), dtype=np.float32)
    wdata = np.empty(max(1, lib.el_matmul_wsize(type_, n_cols, x.shape[0])), dtype=np.uint8)
    lib.el_matmul(type_, ptr(w), n_rows, n_cols, ptr(x), x.shape[0], ptr(y), ptr(wdata))
    return y


def pack_x8(type_: int, data: np.ndarray, n: int) -> np.ndarray:
    """Q4_0 or Q5_0 rows of n elements (a multiple of 8 rows) interleaved eight at a time
    for el_matmul_x8 (kernels/api.h), in an array of the same size."""
    data = np.ascontiguousarray(data).view(np.uint8)
    out = np.empty_like(data)
    n_rows = data.size // row_size(type_, n)
    if lib.el_pack_x8(type_, ptr(data), n_rows, n, ptr(out)) != 0:
        raise ValueError(f"{n_rows} rows of {n} of ggml type {type_} cannot be interleaved "
                         f"(Q4_0 or Q5_0, rows a multiple of 8)")
    return out


def set_threads(n: int) -> int:
    """Threads the kernels use (the caller counts as one); returns the count in effect."""
    return lib.el_set_threads(n)
