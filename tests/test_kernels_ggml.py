"""Our kernels against llama.cpp's own CPU kernels (the libggml-cpu llama-cpp-python ships),
bit for bit, where our variant reproduces its arithmetic (the avx2 variant against an AVX2
build: llamacpp_oracle.arithmetic_matches_ours; elsewhere these tests skip).

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

TYPES = {"f16": 1, "q4_0": 2, "q5_0": 6, "q8_0": 8, "q4_K": 12, "q5_K": 13, "q6_K": 14}
N_COLS, N_ROWS = 512, 37


@pytest.fixture(scope="module")
def ggml():
    if not arithmetic_matches_ours():
        pytest.skip(f"kernel variant {kernels.VARIANT}: llama.cpp's sums run in another order here")
    return GGMLKernels()


def activations(rng, n_tokens):
    """Activation-like rows: mostly small, a few large outliers (as in real residual streams)."""
    x = rng.standard_normal((n_tokens, N_COLS)).astype(np.float32)
    x[:, rng.integers(0, N_COLS, 5)] *= 40
    return x


@pytest.mark.parametrize("name", ["f16", "q8_0", "q8_K"])
def test_activation_quantizer_equals_llamacpp(ggml, name):
    type_ = {"f16": 1, "q8_0": 8, "q8_K": 15}[name]
    x = activations(np.random.default_rng(1), 9)
    size = kernels.row_size(type_, N_COLS)
    for row in x:
        ours = np.zeros(size, np.uint8)
        assert kernels.lib.el_from_float(type_, kernels.ptr(row), kernels.ptr(ours), N_COLS) == 0
        assert np.array_equal(ours, ggml.from_float(type_, row, size))


# 1 token: decode's GEMV; 3: the GEMV of a short batch; 7: the GEMM tiles (k-quants: the
# vec_dot order below llama.cpp's batch of 8); 12: the 32-element types, whose tinyBLAS order
# is vec_dot's at any batch. f16 batches go through tinyBLAS's f16 tiles in llama.cpp.
CASES = ([("f16", 1)] + [(name, n) for name in ("q4_0", "q5_0", "q8_0") for n in (1, 3, 7, 12)]
         + [(name, n) for name in ("q4_K", "q5_K", "q6_K") for n in (1, 3, 7)])


@pytest.mark.parametrize("name, n_tokens", CASES)
def test_matmul_equals_llamacpp(ggml, name, n_tokens):
    type_ = TYPES[name]
    rng = np.random.default_rng(type_ * 100 + n_tokens)
    w = kernels.quantize(type_, rng.standard_normal((N_ROWS, N_COLS)).astype(np.float32) * 0.05)
    x = activations(rng, n_tokens)
    ours = kernels.matmul(type_, w, N_COLS, x)
    ref = ggml.matmul(type_, w, x, kernels.row_size(ggml.vec_dot_type(type_), N_COLS))
    assert np.array_equal(ours, ref), f"{(ours == ref).mean():.1%} bit-equal, max |diff| {np.abs(ours - ref).max():.3g}"
