"""Quantization formats of the C kernels (kernels/quants.c) against independent references.

- dequantization: bit-exact against the `gguf` package on the same bytes (random blocks and the
  real default model's tensors); q8_1 / q8_K (which gguf lacks) against their one-line formulas;
- quantization: bit-exact against gguf's ports of ggml's reference quantizers, and for q8_1 /
  q8_K (activations) against numpy ports of ggml's quantize_row_q8_{1,K}_ref written here;
- dot products: against f64 math on the dequantized weights and dequantized activations;
- and, where llama-cpp-python is installed, against llama.cpp's own ggml: every quantizer
  bit-exact with quantize_row_*_ref, every dot product close to the CPU backend's vec_dot.

The kernels are built from quants.c alone into a private cffi module (build_quants_only_module)
so these tests do not depend on the other kernel files; the installed edgellm.kernels module
exposes the same functions and can replace it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import np_roundf

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
# build_kernels.py's flags, plus -Wextra -Werror: quants.c must compile without a warning.
CFLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wextra", "-Werror"]

ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q8_1,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_K]
BLOCK_TYPES = [t for t in ALL_TYPES if t not in (QT.F32, QT.F16, QT.BF16)]
GGUF_DEQUANTIZES = [t for t in ALL_TYPES if t not in (QT.Q8_1, QT.Q8_K)]
GGUF_QUANTIZES = [QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
VEC_DOT_TYPE = {
    QT.F32: QT.F32, QT.F16: QT.F16, QT.BF16: QT.BF16,
    QT.Q4_0: QT.Q8_0, QT.Q5_0: QT.Q8_0, QT.Q8_0: QT.Q8_0,
    QT.Q4_1: QT.Q8_1, QT.Q5_1: QT.Q8_1, QT.Q8_1: QT.Q8_1,
    QT.Q2_K: QT.Q8_K, QT.Q3_K: QT.Q8_K, QT.Q4_K: QT.Q8_K, QT.Q5_K: QT.Q8_K, QT.Q6_K: QT.Q8_K,
    QT.Q8_K: QT.Q8_K,
}
# (elements, bytes) per block. gguf's table gives q8_1 an older 40-byte layout (f32 d and s);
# ggml's block_q8_1 is two fp16 and 32 quants (36 bytes). q8_1 never occurs in model files.
SIZES = {**GGML_QUANT_SIZES, QT.Q8_1: (32, 36)}
# Byte offsets of each block's fp16 scale fields (d, dmin / m / s): random blocks get sane values
# there. q8_K's d is an f32 at offset 0.
FP16_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0], QT.Q8_1: [0, 2],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}


def _quants_cdef() -> str:
    """The declarations of api.h that quants.c implements: its "quantization formats" section
    and the f16 conversions."""
    api = (KERNELS / "api.h").read_text()
    section = api.split("/* ---- quantization formats (quants.c) ---- */", 1)[1]
    section = section.split("/* ---- ", 1)[0]
    conversions = [line for line in api.splitlines()
                   if line.startswith(("void el_f32_to_f16(", "void el_f16_to_f32("))]
    assert len(conversions) == 2, "api.h no longer declares el_f32_to_f16 / el_f16_to_f32"
    return section + "\n".join(conversions) + "\n"


def build_quants_only_module(tmpdir: Path):
    """Compile kernels/quants.c alone into a private cffi module; returns (ffi, lib)."""
    import cffi

    name = "_edgellm_quants_only"
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(_quants_cdef())
    ffibuilder.set_source(
        name,
        '#include "quants.h"\n#include "api.h"',
        sources=[str(KERNELS / "quants.c")],
        include_dirs=[str(KERNELS)],
        extra_compile_args=CFLAGS,
        libraries=["m"],
    )
    so_path = ffibuilder.compile(tmpdir=str(tmpdir), verbose=False)
    spec = importlib.util.spec_from_file_location(name, so_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return build_quants_only_module(tmp_path_factory.mktemp("quants_build"))


# ---- thin wrappers: numpy in, numpy out ------------------------------------------------------

def row_bytes(t: QT, n: int) -> int:
    block, size = SIZES[t]
    return n // block * size


def c_quantize(kernels, t: QT, x: np.ndarray, fn: str = "el_quantize_row") -> np.ndarray:
    """(rows, n) f32 -> (rows, row_bytes) uint8 with el_quantize_row (weights) or
    el_from_float_ref (activations)."""
    ffi, lib = kernels
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, row_bytes(t, n)), dtype=np.uint8)
    for r in range(rows):
        rc = getattr(lib, fn)(int(t), ffi.from_buffer("float[]", x[r]), ffi.from_buffer(out[r]), n)
        assert rc == 0
    return out


def c_dequantize(kernels, t: QT, data: np.ndarray, n: int) -> np.ndarray:
    """(rows, row_bytes) uint8 -> (rows, n) f32 with el_dequantize_row."""
    ffi, lib = kernels
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, row_bytes(t, n))
    out = np.zeros((data.shape[0], n), dtype=np.float32)
    for r in range(data.shape[0]):
        rc = lib.el_dequantize_row(int(t), ffi.from_buffer(data[r]),
                                   ffi.from_buffer("float[]", out[r]), n)
        assert rc == 0
    return out


def c_vec_dot(kernels, t: QT, n: int, w_row: np.ndarray, xq_row: np.ndarray) -> float:
    ffi, lib = kernels
    return lib.el_vec_dot(int(t), n, ffi.from_buffer(np.ascontiguousarray(w_row)),
                          ffi.from_buffer(np.ascontiguousarray(xq_row)))


# ---- inputs ----------------------------------------------------------------------------------

def random_rows(seed: int, rows: int, n: int) -> np.ndarray:
    """Weights-like f32 rows (rows, n >= 512) with the cases quantizers get wrong: all-zero
    blocks and super-blocks, a constant block, a single outlier, all-negative and all-positive
    blocks, tiny and large magnitudes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x *= np.exp(rng.uniform(-3, 3, size=(rows, 1))).astype(np.float32)
    x[0, :32] = 0.0
    x[0, 32:64] = 0.75
    x[0, 64:96] = rng.standard_normal(32).astype(np.float32) * 1e-3
    x[0, 80] = 40.0
    x[1, :256] = -np.abs(x[1, :256])
    x[1, 256:512] = np.abs(x[1, 256:512]) + 0.5
    x[2] *= np.float32(1e-6)
    x[3] *= np.float32(300.0)
    if rows > 4:
        x[4, 256:512] = 0.0
    return x


def random_block_bytes(seed: int, t: QT, rows: int, n: int) -> np.ndarray:
    """(rows, row_bytes) of uniformly random quant bits with finite, sane scales."""
    rng = np.random.default_rng(seed)
    block, size = SIZES[t]
    nb = rows * n // block
    data = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    if t == QT.Q8_K:
        d = rng.uniform(1e-4, 1e-1, size=nb).astype(np.float32)
        data[:, 0:4] = d.view(np.uint8).reshape(nb, 4)
    for off in FP16_FIELDS.get(t, []):
        mag = np.exp(rng.uniform(np.log(1e-4), np.log(1e-1), size=nb))
        sign = rng.choice([-1.0, 1.0], size=nb)
        data[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return data.reshape(rows, -1)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---- formats as data -------------------------------------------------------------------------

@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: t.name)
def test_block_and_row_sizes_match_gguf(kernels, t):
    _, lib = kernels
    block, size = SIZES[t]
    assert lib.el_type_supported(int(t)) == 1
    assert lib.el_block_size(int(t)) == block
    assert lib.el_type_size(int(t)) == size
    assert lib.el_row_size(int(t), 4096) == 4096 // block * size
    assert lib.el_vec_dot_type(int(t)) == VEC_DOT_TYPE[t]


def test_unknown_types_are_refused(kernels):
    ffi, lib = kernels
    x = np.ones(256, dtype=np.float32)
    buf = np.zeros(4096, dtype=np.uint8)
    for t in (-1, 4, 5, int(QT.IQ2_XXS), int(QT.TQ1_0), 29, 31, 1000):
        assert lib.el_type_supported(t) == 0
        assert lib.el_block_size(t) == 0 and lib.el_type_size(t) == 0
        assert lib.el_row_size(t, 256) == 0
        assert lib.el_quantize_row(t, ffi.from_buffer("float[]", x), ffi.from_buffer(buf), 256) == -1
        assert lib.el_dequantize_row(t, ffi.from_buffer(buf), ffi.from_buffer("float[]", x), 256) == -1
        assert np.isnan(lib.el_vec_dot(t, 256, ffi.from_buffer(buf), ffi.from_buffer(buf)))
    # a row that is not a whole number of blocks
    assert lib.el_quantize_row(int(QT.Q4_K), ffi.from_buffer("float[]", x), ffi.from_buffer(buf), 128) == -1
    assert lib.el_dequantize_row(int(QT.Q8_0), ffi.from_buffer(buf), ffi.from_buffer("float[]", x), 48) == -1


# ---- fp16 / bf16 conversions -----------------------------------------------------------------

def test_f16_to_f32_is_exact_for_every_half(kernels):
    ffi, lib = kernels
    h = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, dtype=np.float32)
    lib.el_f16_to_f32(ffi.from_buffer("uint16_t[]", h), ffi.from_buffer("float[]", out), 65536)
    expected = h.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(bits(out)[~nan], bits(expected)[~nan])
    assert np.isnan(out[nan]).all()


def test_f32_to_f16_rounds_to_nearest_even_like_numpy(kernels):
    ffi, lib = kernels
    rng = np.random.default_rng(1)
    # every tie between adjacent halves (the hard case), and random f32 bit patterns of every
    # exponent: subnormal halves, overflow to inf, f32 subnormals
    finite = np.arange(0x7C00, dtype=np.uint32)
    lo = finite.astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (finite + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    ties = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(ties.astype(np.float64), (lo + hi) / 2)  # ties are exact in f32
    patterns = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([ties, -ties, patterns, np.float32([65504, 65519.99, 65520, 1e9, np.inf, -np.inf])])
    x = x[~np.isnan(x)]
    out = np.empty(x.size, dtype=np.uint16)
    lib.el_f32_to_f16(ffi.from_buffer("float[]", x), ffi.from_buffer("uint16_t[]", out), x.size)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, expected)

    nan = np.float32([np.nan, -np.nan])
    out = np.empty(2, dtype=np.uint16)
    lib.el_f32_to_f16(ffi.from_buffer("float[]", nan), ffi.from_buffer("uint16_t[]", out), 2)
    assert np.isnan(out.view(np.float16)).all()


# ---- dequantization --------------------------------------------------------------------------

@pytest.mark.parametrize("t", GGUF_DEQUANTIZES, ids=lambda t: t.name)
def test_dequantize_random_blocks_matches_gguf(kernels, t):
    n, rows = 1024, 8
    if t in (QT.F32, QT.BF16):
        # every bit pattern, nan and inf included: both are pure bit moves
        rng = np.random.default_rng(2)
        data = rng.integers(0, 256, size=(rows, row_bytes(t, n)), dtype=np.uint8)
    elif t == QT.F16:
        rng = np.random.default_rng(2)
        h = rng.integers(0, 65536, size=(rows, n), dtype=np.uint16)
        h[np.isnan(h.view(np.float16))] = 0x3C00  # nan payloads are not part of the contract
        data = h.view(np.uint8)
    else:
        data = random_block_bytes(3 + int(t), t, rows, n)
    ours = c_dequantize(kernels, t, data, n)
    theirs = gguf.quants.dequantize(data, t)
    assert np.array_equal(bits(ours), bits(theirs))


@pytest.mark.parametrize("t", GGUF_QUANTIZES, ids=lambda t: t.name)
def test_dequantize_gguf_quantized_rows_matches_gguf(kernels, t):
    x = random_rows(4, 8, 1024)
    data = gguf.quants.quantize(x, t).view(np.uint8).reshape(8, -1)
    ours = c_dequantize(kernels, t, data, 1024)
    assert np.array_equal(bits(ours), bits(gguf.quants.dequantize(data, t)))


def test_dequantize_activation_formats_follow_their_formulas(kernels):
    rows, n = 4, 512
    data = random_block_bytes(5, QT.Q8_1, rows, n)
    blocks = data.reshape(-1, 36)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    expected = blocks[:, 4:].view(np.int8).astype(np.float32) * d
    assert np.array_equal(bits(c_dequantize(kernels, QT.Q8_1, data, n)), bits(expected.reshape(rows, n)))

    data = random_block_bytes(6, QT.Q8_K, rows, n)
    blocks = data.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)
    expected = d * blocks[:, 4:260].view(np.int8).astype(np.float32)
    assert np.array_equal(bits(c_dequantize(kernels, QT.Q8_K, data, n)), bits(expected.reshape(rows, n)))


# ---- quantization ----------------------------------------------------------------------------

@pytest.mark.parametrize("t", GGUF_QUANTIZES, ids=lambda t: t.name)
def test_quantize_matches_gguf_bit_for_bit(kernels, t):
    x = random_rows(7, 16, 1024)
    if t == QT.BF16:
        # bf16 rounding of every bit pattern, nan included (ggml quiets it the same way)
        rng = np.random.default_rng(8)
        x[8:] = rng.integers(0, 2**32, size=(8, 1024), dtype=np.uint64).astype(np.uint32).view(np.float32)
    ours = c_quantize(kernels, t, x)
    theirs = gguf.quants.quantize(x, t).view(np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


def quantize_q8_1_reference(x: np.ndarray) -> np.ndarray:
    """numpy port of ggml's quantize_row_q8_1_ref: (rows, n) f32 -> (rows, row_bytes) uint8."""
    rows, n = x.shape
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = np_roundf(b * inv).astype(np.int8)
    s = qs.sum(axis=1, keepdims=True, dtype=np.int32).astype(np.float32) * d
    out = np.concatenate([d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8),
                          qs.view(np.uint8)], axis=1)
    return out.reshape(rows, -1)


def quantize_q8_K_reference(x: np.ndarray) -> np.ndarray:
    """numpy port of ggml's quantize_row_q8_K_ref (nearest_int rounds half to even, as rint).
    An all-zero block is all zero bytes (ggml leaves its bsums unwritten)."""
    rows, n = x.shape
    b = x.reshape(-1, 256)
    nb = b.shape[0]
    mx = b[np.arange(nb), np.abs(b).argmax(axis=1)][:, None]
    zero = mx == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / mx).astype(np.float32)
        d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    qs = np.minimum(127, np.rint(iscale * b)).astype(np.int8)
    bsums = qs.reshape(nb, 16, 16).sum(axis=2, dtype=np.int32).astype(np.int16)
    out = np.concatenate([d.view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)], axis=1)
    return out.reshape(rows, -1)


@pytest.mark.parametrize("t, reference", [(QT.Q8_1, quantize_q8_1_reference),
                                          (QT.Q8_K, quantize_q8_K_reference)], ids=["Q8_1", "Q8_K"])
def test_activation_quantizers_match_ggml_reference(kernels, t, reference):
    x = random_rows(9, 16, 1024)
    assert np.array_equal(c_quantize(kernels, t, x), reference(x))


# Relative RMS error of quantize -> dequantize on Gaussian rows: what each format reaches with
# ggml's reference algorithms (measured 20% below each bound: q2_K 0.298, q3_K 0.150, q4_K 0.071,
# q5_K 0.036, q6_K 0.018, q4_0 0.086, q4_1 0.078, q5_0 0.043, q5_1 0.038, q8_0 0.0053,
# q8_K 0.0069). A wrong scale search, packing or requantization step lands far above.
ROUND_TRIP_RMS = {QT.Q2_K: 0.36, QT.Q3_K: 0.18, QT.Q4_K: 0.086, QT.Q5_K: 0.044, QT.Q6_K: 0.022,
                  QT.Q4_0: 0.104, QT.Q4_1: 0.094, QT.Q5_0: 0.052, QT.Q5_1: 0.046, QT.Q8_0: 0.0065,
                  QT.Q8_1: 0.0065, QT.Q8_K: 0.0083}


@pytest.mark.parametrize("t", list(ROUND_TRIP_RMS), ids=lambda t: t.name)
def test_quantize_then_dequantize_is_close(kernels, t):
    x = np.random.default_rng(10).standard_normal((8, 2048)).astype(np.float32)
    y = c_dequantize(kernels, t, c_quantize(kernels, t, x), 2048)
    rel_rms = np.sqrt(np.mean((x - y) ** 2) / np.mean(x ** 2))
    assert rel_rms < ROUND_TRIP_RMS[t]
    # deterministic: the same input gives the same bytes
    assert np.array_equal(c_quantize(kernels, t, x), c_quantize(kernels, t, x))


# ---- dot products ----------------------------------------------------------------------------

def dot_tolerance(t: QT, w: np.ndarray, a: np.ndarray, w_bytes: np.ndarray,
                  xq_bytes: np.ndarray) -> float:
    """Allowed |vec_dot - f64 dot of the dequantized rows| for one row.

    The kernels sum integer products exactly within a block, then apply the block's scales and
    accumulate in f32; the f64 reference instead sums the dequantized f32 values, each rounded
    once (to 2^-24 relative, and for the k-quants relative to d*scale*q and dmin*min). Both
    differ from the exact value by a few f32 roundings per term plus the f32 accumulation over at
    most n/32 blocks: at n = 4096 the largest difference measured over every type is 1.5e-7 of
    sum|w_i a_i| (2.5e-7 against llama.cpp's kernels). 1e-5 leaves a 40x margin, while a wrong
    nibble, scale, min or sign moves the result by O(1) of that sum.
    q4_1 / q5_1 add the weights' mins through q8_1's `s`, which stores d * sum(q) in fp16
    (ggml's format, shared by llama.cpp's kernels): that term is off by up to 2^-11 of |m * s|
    per block, added here from the bytes.
    """
    tol = 1e-5 * float(np.sum(np.abs(w.astype(np.float64) * a)))
    if t in (QT.Q4_1, QT.Q5_1):
        size = SIZES[t][1]
        m = w_bytes.reshape(-1, size)[:, 2:4].copy().view(np.float16).astype(np.float64)
        s = xq_bytes.reshape(-1, 36)[:, 2:4].copy().view(np.float16).astype(np.float64)
        tol += float(np.sum(np.abs(m * s))) * 2.0**-11
    return tol


# weights quantized from f32 rows (every type), and random block bytes (every block type)
VEC_DOT_CASES = [(t, "quantized") for t in ALL_TYPES] + [(t, "random_bytes") for t in BLOCK_TYPES]


@pytest.mark.parametrize("t, source", VEC_DOT_CASES, ids=lambda c: getattr(c, "name", c))
def test_vec_dot_matches_f64_dot_of_dequantized_rows(kernels, t, source):
    n, rows = 4096, 4
    if source == "random_bytes":
        w_bytes = random_block_bytes(11 + int(t), t, rows, n)
    else:
        w_bytes = c_quantize(kernels, t, random_rows(12, rows, n))
    vt = VEC_DOT_TYPE[t]
    acts = np.random.default_rng(13).standard_normal((rows, n)).astype(np.float32)
    xq = c_quantize(kernels, vt, acts)
    w = c_dequantize(kernels, t, w_bytes, n)
    a = c_dequantize(kernels, vt, xq, n)
    for r in range(rows):
        got = c_vec_dot(kernels, t, n, w_bytes[r], xq[r])
        want = float(np.dot(w[r].astype(np.float64), a[r].astype(np.float64)))
        tol = dot_tolerance(t, w[r], a[r], w_bytes[r], xq[r])
        assert abs(got - want) <= tol, (r, got, want, tol)


# ---- llama.cpp's ggml as the oracle ---------------------------------------------------------

class GGMLTypeTraitsCPU(ctypes.Structure):
    """struct ggml_type_traits_cpu (ggml-cpu.h)."""
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


# void quantize_row_*_ref(const float *x, block *y, int64_t k)
GGML_QUANTIZE_REF = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
# void vec_dot(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc)
GGML_VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@pytest.fixture(scope="module")
def ggml():
    """libggml-base and libggml-cpu as shipped (built from source) by llama-cpp-python."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        pytest.skip("llama-cpp-python (the llama.cpp reference) is not installed")
    lib_dir = Path(spec.submodule_search_locations[0]) / "lib"
    base = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.*"))))
    cpu = ctypes.CDLL(str(next(lib_dir.glob("libggml-cpu.*"))))
    cpu.ggml_cpu_init.restype = None
    cpu.ggml_cpu_init()  # fills the CPU backend's fp16 tables
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(GGMLTypeTraitsCPU)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    return base, cpu


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_quantizers_match_ggml_reference_bit_for_bit(kernels, ggml, t):
    base, _ = ggml
    x = random_rows(15, 16, 1024)
    quantize_ref = GGML_QUANTIZE_REF((f"quantize_row_{t.name.lower().replace('_k', '_K')}_ref", base))
    theirs = np.zeros((16, row_bytes(t, 1024)), dtype=np.uint8)
    quantize_ref(ptr(x), ptr(theirs), x.size)
    assert np.array_equal(c_quantize(kernels, t, x), theirs)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="ggml-cpu's x86 quantizers are the oracle")
@pytest.mark.parametrize("t", [QT.Q8_0, QT.Q8_1, QT.Q8_K], ids=lambda t: t.name)
def test_activation_quantizers_match_llama_cpp_cpu_backend(kernels, ggml, t):
    """llama.cpp quantizes matmul activations with its CPU backend's from_float, which on x86
    is not ggml's reference for q8_0 / q8_1 (scale 127 / amax, ties to even). Ours must give
    the same bytes: one quant in a few hundred off moved Gemma 3's logits by ~1."""
    _, cpu = ggml
    from_float = GGML_QUANTIZE_REF(cpu.ggml_get_type_traits_cpu(int(t)).contents.from_float)
    x = random_rows(18, 16, 1024)
    x[3] = np.arange(1024) % 32 - 15.5  # ties: scale 1 (amax 127 below), every quant k + 1/2
    x[3, ::32] = 127.0
    theirs = np.zeros((16, row_bytes(t, 1024)), dtype=np.uint8)
    for r in range(16):
        from_float(ptr(x[r]), ptr(theirs[r]), 1024)
    assert np.array_equal(c_quantize(kernels, t, x, "el_from_float_ref"), theirs)


GGML_WEIGHT_TYPES = [t for t in ALL_TYPES if t not in (QT.Q8_1, QT.Q8_K)]  # ggml has no dot for these


@pytest.mark.parametrize("t", GGML_WEIGHT_TYPES, ids=lambda t: t.name)
def test_vec_dot_matches_llama_cpp_cpu_backend(kernels, ggml, t):
    """Same bytes into both: the results differ only in f32 summation order (see dot_tolerance;
    the q8_1 `s` rounding is common to both, so it adds nothing here)."""
    _, cpu = ggml
    traits = cpu.ggml_get_type_traits_cpu(int(t)).contents
    assert traits.vec_dot_type == VEC_DOT_TYPE[t]
    vec_dot = GGML_VEC_DOT(traits.vec_dot)
    n, rows = 4096, 4
    w_bytes = c_quantize(kernels, t, random_rows(16, rows, n))
    xq = c_quantize(kernels, VEC_DOT_TYPE[t],
                    np.random.default_rng(17).standard_normal((rows, n)).astype(np.float32))
    w = c_dequantize(kernels, t, w_bytes, n)
    a = c_dequantize(kernels, VEC_DOT_TYPE[t], xq, n)
    theirs = np.zeros(1, dtype=np.float32)
    for r in range(rows):
        vec_dot(n, ptr(theirs), 0, ptr(w_bytes[r]), 0, ptr(xq[r]), 0, 1)
        ours = c_vec_dot(kernels, t, n, w_bytes[r], xq[r])
        tol = 1e-5 * float(np.sum(np.abs(w[r].astype(np.float64) * a[r])))
        assert abs(ours - float(theirs[0])) <= tol, (r, ours, float(theirs[0]), tol)


# ---- the real default model ------------------------------------------------------------------

def test_default_model_tensors_dequantize_like_gguf(kernels, default_model_path):
    """One tensor of every type in Gemma 3 270M Q4_K_M: its first and last rows dequantize
    bit-exactly as gguf does, and dot with activations as f64 math on the dequantized rows."""
    from edgellm.runtime.gguf_file import GGUFFile

    with GGUFFile(default_model_path) as f:
        first_of_type = {}
        for info in f.tensors.values():
            first_of_type.setdefault(QT(info.type), info)
        assert {QT.F32, QT.Q8_0, QT.Q5_0, QT.Q4_K, QT.Q6_K} <= set(first_of_type)
        rng = np.random.default_rng(14)
        for t, info in first_of_type.items():
            n, row = info.shape[0], info.row_bytes
            rows = sorted({0, 1, 2, 3, info.n_rows - 4, info.n_rows - 3, info.n_rows - 2,
                           info.n_rows - 1} & set(range(info.n_rows)))
            data = np.stack([np.asarray(info.data[r * row:(r + 1) * row]) for r in rows])
            ours = c_dequantize(kernels, t, data, n)
            assert np.array_equal(bits(ours), bits(gguf.quants.dequantize(data, t))), info.name

            vt = VEC_DOT_TYPE[t]
            xq = c_quantize(kernels, vt, rng.standard_normal((1, n)).astype(np.float32))[0]
            a = c_dequantize(kernels, vt, xq, n)[0].astype(np.float64)
            for i in range(len(rows)):
                got = c_vec_dot(kernels, t, n, data[i], xq)
                want = float(np.dot(ours[i].astype(np.float64), a))
                assert abs(got - want) <= dot_tolerance(t, ours[i], a, data[i], xq), (info.name, i)
