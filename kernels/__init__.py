"""edgellm.kernels: the C kernels, compiled through cffi, and a thin typed layer over them.

`lib` holds the C functions of kernels/api.h; the runtime calls them directly on its hot
path with pointers it prepared once (`ptr`). The helpers below (quantize, dequantize,
matmul, ...) allocate and are for loading, tests and tools, not for the per-token path.
"""

import numpy as np

from edgellm.kernels._kernels_generic import ffi, lib

VARIANT = "generic"

# ggml type ids (kernels/api.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = 10, 11, 12, 13, 14, 15, 30

_CTYPES = {np.float32: "float *", np.int32: "int32_t *", np.uint16: "uint16_t *"}


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


def set_threads(n: int) -> int:
    """Threads the kernels use (the caller counts as one); returns the count in effect."""
    return lib.el_set_threads(n)
