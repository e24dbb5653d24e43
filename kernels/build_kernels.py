"""cffi build script for the C kernels (out-of-line API mode): one module per ISA variant.

Every variant compiles the same kernel sources with its own flags, plus its ISA's files under
arch/ (SIMD dot products, quantizers and GEMM tiles), into `edgellm.kernels._kernels_<name>`;
a small `_cpu` module, built with baseline flags, probes the CPU so that edgellm.kernels can
load the best variant the CPU runs (cpu_features.c holds the variants' requirements).

setup.py registers cffi_modules(); `python kernels/build_kernels.py` builds in place for
development. api.h and cpu_features.h are both C headers and cdefs.
"""

import os
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants source paths relative to the project root (the working directory)
SRC = Path(os.path.relpath(HERE))
SOURCES = ["quants.c", "gemm.c", "matmul.c", "ops.c", "attention.c", "threadpool.c"]
# -ffp-contract=off: the reference quantizers round exactly as ggml's (quants.c); SIMD kernels
# use explicit FMA intrinsics. -fvisibility=hidden: every variant defines the same el_*
# names; only the module's init function is exported.
CFLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden",
          "-Wall", "-Wno-unused-function"]

# The debug build (EDGELLM_KERNELS_DEBUG=1, built on first use: edgellm.kernels): AddressSanitizer
# and UndefinedBehaviorSanitizer, stopping at the first report, and EL_DEBUG, under which
# scratch.h puts red zones between scratch regions and fills them with NaN.
DEBUG_CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all"]

X86_ARCH = ["arch/x86/quants.c", "arch/x86/gemm_tiles.c", "arch/x86/gemv.c"]
ARM_ARCH = ["arch/arm/quants.c", "arch/arm/gemm_tiles.c"]
AVX2 = ["-mavx2", "-mfma", "-mf16c"]
AVX512 = AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512vl"]

# name -> (extra sources, ISA flags, ISA header for quants.c); the run-time requirements of
# each name are in cpu_features.c.
X86_VARIANTS = {
    "generic": (["gemm_tiles.c"], [], None),
    "avx2": (X86_ARCH, AVX2, "arch/x86/quants-arch.h"),
    "avx512": (X86_ARCH, AVX512, "arch/x86/quants-arch.h"),
    "avx512vnni": (X86_ARCH, AVX512 + ["-mavx512vnni"], "arch/x86/quants-arch.h"),
}
ARM_VARIANTS = {
    "generic": (["gemm_tiles.c"], [], None),
    "neon": (ARM_ARCH, ["-march=armv8-a"], "arch/arm/quants-arch.h"),
    "dotprod": (ARM_ARCH, ["-march=armv8.2-a+dotprod+fp16"], "arch/arm/quants-arch.h"),
}


def isa_family(platform: str | None = None) -> str:
    """x86_64, aarch64 or other, from the target platform (sysconfig's, e.g. linux-aarch64)."""
    platform = (platform or sysconfig.get_platform()).lower()
    if "x86_64" in platform or "amd64" in platform:
        return "x86_64"
    if "aarch64" in platform or "arm64" in platform:
        return "aarch64"
    return "other"


def variants(family: str | None = None) -> dict:
    family = family or isa_family()
    return {"x86_64": X86_VARIANTS, "aarch64": ARM_VARIANTS}.get(family, {"generic": X86_VARIANTS["generic"]})


def variant_builder(name: str, family: str | None = None, debug: bool = False, src: Path = SRC) -> FFI:
    """The cffi builder of a variant's module, edgellm.kernels._kernels_<name> (with debug,
    _kernels_<name>_debug: DEBUG_CFLAGS). src: the kernel sources' folder as the compiler
    is to see it (setuptools wants it relative to the project root)."""
    extra, flags, arch_header = variants(family)[name]
    defines = [("EL_VARIANT", f'"{name}"')]
    if debug:
        defines.append(("EL_DEBUG", "1"))
    if arch_header:
        defines.append(("EL_ARCH_QUANTS_H", f'"{arch_header}"'))
    if "arch/x86/gemv.c" in extra:
        defines.append(("EL_ARCH_GEMV", "1"))
    ffibuilder = FFI()
    ffibuilder.cdef((HERE / "api.h").read_text())
    ffibuilder.set_source(
        f"edgellm.kernels._kernels_{name}" + ("_debug" if debug else ""),
        "#include <stddef.h>\n#include <stdint.h>\n#include \"api.h\"",
        sources=[str(src / s) for s in SOURCES + extra],
        include_dirs=[str(src)],
        define_macros=defines,
        extra_compile_args=(CFLAGS + DEBUG_CFLAGS if debug else CFLAGS) + flags,
        extra_link_args=DEBUG_CFLAGS if debug else [],
        libraries=["m"],
    )
    return ffibuilder


def cpu_builder() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef((HERE / "cpu_features.h").read_text())
    ffibuilder.set_source(
        "edgellm.kernels._cpu",
        "#include \"cpu_features.h\"",
        sources=[str(SRC / "cpu_features.c")],
        include_dirs=[str(SRC)],
        extra_compile_args=["-O2", "-std=c11", "-Wall"],
    )
    return ffibuilder


def cffi_modules() -> list[str]:
    """setup.py's cffi_modules: the probe and every variant of this platform."""
    return [f"kernels/build_kernels.py:ffibuilder_{name}" for name in ["cpu", *variants()]]


# module-level builders, one per cffi_modules() entry (cffi's setuptools hook looks them up
# by name in this file's globals)
ffibuilder_cpu = cpu_builder()
for _name in variants():
    globals()[f"ffibuilder_{_name}"] = variant_builder(_name)

if __name__ == "__main__":
    for _name in ["cpu", *variants()]:
        globals()[f"ffibuilder_{_name}"].compile(tmpdir=str(HERE / "build"), verbose=False)
