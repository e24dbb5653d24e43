"""cffi build script for the C kernels (out-of-line API mode).

setup.py registers `ffibuilder`; `python kernels/build_kernels.py` builds in place for
development. The C sources live beside this file; api.h is both the C header and the cdef.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants source paths relative to the project root (the working directory)
SRC = Path(os.path.relpath(HERE))
SOURCES = ["quants.c", "matmul.c", "ops.c", "attention.c", "threadpool.c"]
CFLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "api.h").read_text())
ffibuilder.set_source(
    "edgellm.kernels._kernels_generic",
    "#include <stddef.h>\n#include <stdint.h>\n#include \"api.h\"",
    sources=[str(SRC / s) for s in SOURCES],
    include_dirs=[str(SRC)],
    extra_compile_args=CFLAGS,
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=False)
