"""cffi build script for the C kernels (out-of-line API mode).

setup.py registers `ffibuilder`; `python kernels/build_kernels.py` builds in place for
development. The C sources live beside this file; api.h is both the C header and the cdef.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["quants.c", "matmul.c", "ops.c", "attention.c"]
CFLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "api.h").read_text())
ffibuilder.set_source(
    "edgellm.kernels._kernels_generic",
    '#include "api.h"',
    sources=[str(HERE / s) for s in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=CFLAGS,
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=False)
