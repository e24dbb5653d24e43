"""Our kernels against llama.cpp's own CPU kernels (the libggml-cpu llama-cpp-python ships),
bit for bit, where our avx2 variant reproduces their arithmetic: ggml's CPU backend built
for AVX2 (+ FMA + F16C). A build for AVX-512 too runs the same AVX2 code in the quantized
types' vec_dot and activation quantizers, so those are compared there as well (the avx2
variant loaded beside the one in use); its f16 dot products use 512-bit vectors, so f16 is
compared only against an AVX2-only build (llamacpp_oracle.arithmetic_matches_ours).

llama.cpp multiplies a weight by one token (decode) with the type's vec_dot, and a batch of
q4_0 / q5_0 / q8_0 with tinyBLAS, whose sums run in the same order; a batch of k-quants below
8 tokens with vec_dot too (from 8 its tiled k-quant matmul takes over: the end-to-end test in
test_llamacpp_parity.py covers that order). The activations are quantized by each side's own
quantizer, so those are compared too.
"""

import numpy as np
import pytest

from edgellm import kernels
from llamacpp_oracle import GGMLKernels, arithmetic_matches_ours

TYPES = {"f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q4_K": 12, "q5_K": 13, "q6_K": 14}
N_COLS, N_ROWS = 512, 37


@pytest.fixture(scope="module")
def ggml():
    """(llama.cpp's kernels, our avx2 variant's (ffi, lib))."""
    pytest.importorskip("llama_cpp")
    import llama_cpp

    if "avx2" not in [v["name"] for v in kernels.variants() if v["built"] and v["supported"]]:
        pytest.skip("this CPU does not run the avx2 variant")
    if "AVX2 = 1" not in llama_cpp.llama_print_system_info().decode():
        pytest.skip("llama.cpp's CPU backend was not built for AVX2")
    return GGMLKernels(), kernels.load_variant("avx2")


def ours_matmul(variant, type_, w, x):
    """kernels.matmul through the avx2 variant."""
    ffi, lib = variant
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    wdata = np.empty(max(1, lib.el_matmul_wsize(type_, N_COLS, x.shape[0])), np.uint8)
    p = lambda a: ffi.cast("void *", a.ctypes.data)  # noqa: E731
    lib.el_matmul(type_, p(w), w.shape[0], N_COLS, p(x), x.shape[0], p(y), p(wdata))
    return y


def activations(rng, n_tokens):
    """Activation-like rows: mostly small, a few large outliers (as in real residual streams)."""
    x = rng.standard_normal((n_tokens, N_COLS)).astype(np.float32)
    x[:, rng.integers(0, N_COLS, 5)] *= 40
    return x


@pytest.mark.parametrize("name", ["f16", "q8_0", "q8_1", "q8_K"])
def test_activation_quantizer_equals_llamacpp(ggml, name):
    ref, (ffi, lib) = ggml
    type_ = {"f16": 1, "q8_0": 8, "q8_1": 9, "q8_K": 15}[name]
    x = activations(np.random.default_rng(1), 9)
    size = kernels.row_size(type_, N_COLS)
    for row in x:
        ours = np.zeros(size, np.uint8)
        assert lib.el_from_float(type_, ffi.cast("float *", row.ctypes.data), ffi.cast("void *", ours.ctypes.data),
                                 N_COLS) == 0
        assert np.array_equal(ours, ref.from_float(type_, row, size))


# 1 token: decode's GEMV; 3: the GEMV of a short batch; 7: the GEMM tiles (k-quants: the
# vec_dot order below llama.cpp's batch of 8); 12 and 40: the 32-element types, whose tinyBLAS
# order is vec_dot's at any batch (q4_1 and q5_1: tinyBLAS does not take them, vec_dot runs
# at any batch). f16 batches go through tinyBLAS's f16 tiles in llama.cpp.
CASES = ([("f16", 1)] + [(name, n) for name in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0") for n in (1, 3, 7, 12, 40)]
         + [(name, n) for name in ("q4_K", "q5_K", "q6_K") for n in (1, 3, 7)])


@pytest.mark.parametrize("name, n_tokens", CASES)
def test_matmul_equals_llamacpp(ggml, name, n_tokens):
    ggml, variant = ggml
    if name == "f16" and not arithmetic_matches_ours():
        pytest.skip("llama.cpp's f16 dot product runs 512-bit vectors in this build")
    type_ = TYPES[name]
    rng = np.random.default_rng(type_ * 100 + n_tokens)
    w = kernels.quantize(type_, rng.standard_normal((N_ROWS, N_COLS)).astype(np.float32) * 0.05)
    x = activations(rng, n_tokens)
    ours = ours_matmul(variant, type_, w, x)
    ref = ggml.matmul(type_, w, x, kernels.row_size(ggml.vec_dot_type(type_), N_COLS))
    assert np.array_equal(ours, ref), f"{(ours == ref).mean():.1%} bit-equal, max |diff| {np.abs(ours - ref).max():.3g}"
