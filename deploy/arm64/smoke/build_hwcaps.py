"""cffi build (out-of-line API mode) of the arm64 smoke module: compiled inside the rootfs by
its own gcc, the same path pip takes for the kernels, but small enough to check the
toolchain before the whole project is there. `python build_hwcaps.py OUTDIR`."""

import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "hwcaps.h").read_text())
ffibuilder.set_source("_hwcaps", '#include "hwcaps.h"', sources=[str(HERE / "hwcaps.c")],
                      include_dirs=[str(HERE)], extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=False)
