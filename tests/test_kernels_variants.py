"""Every kernel variant this CPU runs against the reference kernels, and how a variant is
chosen.

Each variant's module holds both its own kernels and the portable references (quants.c's
*_ref functions, el_matmul_ref), so one module checks itself:
  - activation quantizers (el_from_float): bit-exact with el_from_float_ref;
  - dot products (el_vec_dot) and matmul (el_matmul: GEMV for 1-8 tokens, tiled GEMM from 9;
    1..17 tokens cover every tile edge, 37 rows a partial row tile, threads 1..3) against
    el_vec_dot_ref / el_matmul_ref, within TOLERANCE (below);
  - attention and the elementwise ops against float64 numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgellm import kernels

SUPPORTED = [v["name"] for v in kernels.variants() if v["built"] and v["supported"]]

TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
         "q2_K": 10, "q3_K": 11, "q4_K": 12, "q5_K": 13, "q6_K": 14}
ACTIVATION_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8, "q8_1": 9, "q8_K": 15}
# the unsigned form of these types on x86 (quant + bias), with the bias
X86_BIAS = {"q4_0": 8, "q5_0": 16, "q8_0": 128, "q3_K": 4, "q6_K": 32}


@pytest.fixture(scope="module", params=SUPPORTED)
def variant(request):
    """(name, ffi, lib) of one variant this CPU runs."""
    ffi, lib = kernels.load_variant(request.param)
    yield request.param, ffi, lib
    lib.el_set_threads(1)


class Kernels:
    """numpy in, numpy out, over one variant's module."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib

    def p(self, a: np.ndarray):
        assert a.flags.c_contiguous
        return self.ffi.cast("void *", a.ctypes.data)

    def f(self, a: np.ndarray):
        return self.ffi.cast("float *", a.ctypes.data)

    def quantize(self, t: int, x: np.ndarray, fn: str = "el_quantize_row") -> np.ndarray:
        """Rows quantized by `fn`: el_quantize_row (weights, ggml's reference rounding),
        el_from_float_ref (activations, the reference) or el_from_float (this variant's)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((x.shape[0], self.lib.el_row_size(t, x.shape[1])), dtype=np.uint8)
        fn = getattr(self.lib, fn)
        for r in range(x.shape[0]):
            assert fn(t, self.f(x[r]), self.p(out[r]), x.shape[1]) == 0
        return out

    def dequantize(self, t: int, data: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros((data.shape[0], n), dtype=np.float32)
        for r in range(data.shape[0]):
            self.lib.el_dequantize_row(t, self.p(np.ascontiguousarray(data[r])), self.f(out[r]), n)
        return out

    def matmul(self, t: int, w: np.ndarray, n: int, x: np.ndarray, reference=False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
        ws = np.zeros(self.lib.el_matmul_wsize(t, n, x.shape[0]) + 64, dtype=np.uint8)
        fn = self.lib.el_matmul_ref if reference else self.lib.el_matmul
        fn(t, self.p(w), w.shape[0], n, self.f(x), x.shape[0], self.f(y), self.p(ws))
        return y


def random_rows(seed: int, rows: int, n: int) -> np.ndarray:
    """Weights-like rows: gaussian with a per-row scale over 3 decades, a zero block, a
    constant block and an outlier."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x *= np.exp(rng.uniform(-3, 3, size=(rows, 1))).astype(np.float32)
    x[:, 32:64] = 0.0
    x[0, 64:96] = 0.5
    x[1, 7] *= 40
    return x


def tolerance(name: str, variant: str, w: np.ndarray, a: np.ndarray, w_bytes=None, xq_bytes=None,
              gemm=False) -> np.ndarray:
    """Allowed |kernel - reference| per result, w: (rows, n), a: (tokens, n) dequantized.

    S = sum |w_i a_i| is the size of the sum before cancellation. The integer block sums are
    exact in every kernel; the f32 scaling and summation order differ from the reference's,
    ~1e-7 S measured: 1e-5 S is a 100x margin, while a wrong nibble, scale or sign is O(S).
    Further terms, where the kernels legitimately round differently:
      - q4_1 / q5_1: the tiles take the weights' min times q8_1's fp16 s (as the reference)
        but the vec_dot order differs: 2^-11 |m s| per block, as test_kernels_quants states;
      - x86 tiles (gemm) multiply unsigned quants q + bias and subtract bias * scale * sum(x)
        in f32: the cancelled part is bias * sum |d_w a_i| per block, rounded at 2^-24 per
        step of ~k/64 steps; 2^-17 of it is a 10x margin.
    """
    S = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T  # (tokens, rows)
    tol = 1e-5 * S
    if name in ("q4_1", "q5_1") and w_bytes is not None:
        bs = 20 if name == "q4_1" else 24
        m = np.abs(w_bytes.reshape(w_bytes.shape[0], -1, bs)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64))
        s = np.abs(xq_bytes.reshape(xq_bytes.shape[0], -1, 36)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64))
        tol = tol + 2.0**-11 * (s @ m.T)
    if gemm and variant != "generic" and name in X86_BIAS and kernels.CPU_ARCH == "x86_64":
        if not (name == "q8_0" and variant != "avx512vnni"):  # q8_0 stays signed without VNNI
            # bias * |scale of w| * |a|, summed: the scale of w is |w| / |q| ~ |w|, bounded by
            # the block's max |w| over the quant's range
            blocks = w.reshape(w.shape[0], -1, 16)
            d = np.abs(blocks).max(axis=2, keepdims=True) / X86_BIAS[name]
            wd = np.broadcast_to(d, blocks.shape).reshape(w.shape)
            tol = tol + 2.0**-17 * X86_BIAS[name] * (np.abs(a.astype(np.float64)) @ wd.T)
    return tol + 1e-30


# ---- quantizers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ACTIVATION_TYPES)
def test_activation_quantizer_is_bit_exact_with_reference(variant, name):
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    x = random_rows(1, 16, 1024)
    x[2, 5], x[2, 6] = 1000.0, -1000.0  # a tie for the largest magnitude: the first one wins
    x[3] = np.float32(1e-3) * np.arange(1024, dtype=np.float32)  # many exact .5 roundings
    x[4] = np.arange(1024) % 32 - 15.5  # ties at scale 1 (amax 127): ties to even, not away
    x[4, ::32] = 127.0
    t = ACTIVATION_TYPES[name]
    assert np.array_equal(k.quantize(t, x, "el_from_float"), k.quantize(t, x, "el_from_float_ref"))


# ---- dot products and matmul ----------------------------------------------------------------

@pytest.mark.parametrize("name", TYPES)
def test_vec_dot_matches_reference(variant, name):
    vname, ffi, lib = variant
    k = Kernels(ffi, lib)
    t, n = TYPES[name], 2048
    vt = lib.el_vec_dot_type(t)
    w_bytes = k.quantize(t, random_rows(2, 8, n))
    acts = np.random.default_rng(3).standard_normal((8, n)).astype(np.float32)
    xq = k.quantize(vt, acts, "el_from_float_ref")
    w, a = k.dequantize(t, w_bytes, n), k.dequantize(vt, xq, n)
    for r in range(8):
        got = lib.el_vec_dot(t, n, k.p(w_bytes[r]), k.p(xq[r]))
        want = lib.el_vec_dot_ref(t, n, k.p(w_bytes[r]), k.p(xq[r]))
        tol = tolerance(name, vname, w[r:r + 1], a[r:r + 1], w_bytes[r:r + 1], xq[r:r + 1])[0, 0]
        assert abs(got - want) <= tol, (r, got, want, tol)


# rows of 512; of 608 = 19 blocks of 32 (an odd last block for the kernels that take blocks
# in pairs) for the types whose blocks are not 256 long; of 600 (a partial vector) for floats
GEMM_MIN_TOKENS = 9  # kernels/matmul.c: fewer tokens take the GEMV path
MATMUL_CASES = ([(name, n) for name in TYPES for n in (512, 608) if n == 512 or not name.endswith("_K")]
                + [(name, 600) for name in ("f32", "f16", "bf16")])


@pytest.mark.parametrize("name, n", MATMUL_CASES)
def test_matmul_matches_reference_for_every_token_count_and_thread_count(variant, name, n):
    vname, ffi, lib = variant
    k = Kernels(ffi, lib)
    t, rows = TYPES[name], 37
    vt = lib.el_vec_dot_type(t)
    w_bytes = k.quantize(t, random_rows(4, rows, n))
    w = k.dequantize(t, w_bytes, n)
    rng = np.random.default_rng(5)
    for n_tokens in range(1, 18):
        lib.el_set_threads(1 + n_tokens % 3)
        x = (rng.standard_normal((n_tokens, n)) * 2).astype(np.float32)
        got = k.matmul(t, w_bytes, n, x)
        want = k.matmul(t, w_bytes, n, x, reference=True)
        xq = k.quantize(vt, x, "el_from_float_ref") if vt != 0 else x.view(np.uint8)
        a = k.dequantize(vt, xq, n) if vt != 0 else x
        tol = tolerance(name, vname, w, a, w_bytes, xq if vt != 0 else None, gemm=n_tokens >= GEMM_MIN_TOKENS)
        bad = np.abs(got.astype(np.float64) - want) > tol
        assert not bad.any(), (n_tokens, np.argwhere(bad)[:5], got[bad][:5], want[bad][:5])


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q5_0", "q4_K", "q6_K", "f16", "bf16"])
def test_matmul_of_a_few_tokens_gives_each_token_what_it_gets_alone(variant, name):
    """A decode step of several sequences (2-7 rows; x86 unpacks each weight row once for four
    tokens, or a k-quant tile once for all) gives every row bit for bit what decoding it alone
    gives, so a sequence's text does not depend on what else runs beside it. From 8 rows the
    x86 k-quant tiles sum in llama.cpp's batch order instead (as llama.cpp does for 8 tokens
    or more). Odd rows and block counts reach the kernels' edges."""
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    t = TYPES[name]
    rng = np.random.default_rng(30)
    for n, rows in ((512, 67), (32 * 7 if not name.endswith("_K") else 768, 5)):
        w = k.quantize(t, random_rows(31, rows, n))
        for n_tokens in range(2, 8):
            lib.el_set_threads(1 + n_tokens % 2)
            x = (rng.standard_normal((n_tokens, n)) * 2).astype(np.float32)
            alone = np.concatenate([k.matmul(t, w, n, x[i:i + 1]) for i in range(n_tokens)])
            assert np.array_equal(k.matmul(t, w, n, x), alone), (name, n, rows, n_tokens)


@pytest.mark.parametrize("names", [("q5_0", "q5_0", "q8_0"), ("q4_0", "q4_0"), ("q4_K", "q6_K"),
                                   ("f16", "f16"), ("q8_0", "q4_K"), ("q4_0", "q8_0", "q5_0", "q4_0")])
def test_matmul_multi_equals_separate_matmuls(variant, names):
    """el_matmul_multi (a decode step's q, k, v or gate, up as one job) gives exactly what
    el_matmul gives for each matrix: the same kernels over the same prepared activations.
    Mixed activation types (q8_0 with q4_K's q8_K) and batches of 4+ tokens take el_matmul."""
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    n, rows = 512, [37, 20, 64, 5][:len(names)]
    types = [TYPES[name] for name in names]
    ws = [k.quantize(t, random_rows(20 + i, r, n)) for i, (t, r) in enumerate(zip(types, rows))]
    rng = np.random.default_rng(21)
    for n_tokens in (1, 2, 3, 5):
        lib.el_set_threads(1 + n_tokens % 2)
        x = (rng.standard_normal((n_tokens, n)) * 2).astype(np.float32)
        ys = [np.zeros((n_tokens, r), np.float32) for r in rows]
        scratch = np.zeros(lib.el_matmul_multi_wsize(len(types), types, n, n_tokens) + 64, np.uint8)
        lib.el_matmul_multi(len(types), types, [k.p(w) for w in ws], rows, n, k.f(x), n_tokens,
                            [k.f(y) for y in ys], k.p(scratch))
        for t, w, y in zip(types, ws, ys):
            assert np.array_equal(y, k.matmul(t, w, n, x)), (names, n_tokens, t)


@pytest.mark.parametrize("name", ["q4_0", "q5_0"])
@pytest.mark.parametrize("n", [32, 640, 2048])
def test_interleaved_matmul_matches_reference(variant, name, n):
    """el_matmul_x8 over el_pack_x8's layout (an LM head's Q4_0 or Q5_0 copy) gives the
    reference's products, for decode and for several tokens (groups of rows go through every
    token), on any thread count; another type or a shape that is not whole groups is refused."""
    vname, ffi, lib = variant
    k = Kernels(ffi, lib)
    t, rows = TYPES[name], 88  # 11 groups of 8: thread chunks end inside and between groups
    w_bytes = k.quantize(t, random_rows(30, rows, n))
    w = k.dequantize(t, w_bytes, n)
    packed = np.zeros_like(w_bytes)
    assert lib.el_pack_x8(t, k.p(w_bytes), rows, n, k.p(packed)) == 0
    assert not np.array_equal(packed, w_bytes)
    assert lib.el_pack_x8(t, k.p(w_bytes), rows - 4, n, k.p(packed)) == -1
    assert lib.el_pack_x8(TYPES["q8_0"], k.p(w_bytes), rows, n, k.p(packed)) == -1
    rng = np.random.default_rng(31)
    for n_tokens in (1, 2, 5, 17):
        lib.el_set_threads(1 + n_tokens % 3)
        x = (rng.standard_normal((n_tokens, n)) * 2).astype(np.float32)
        x[:, 3] = 300.0  # an outlier, as real activations have
        y = np.full((n_tokens, rows), np.nan, np.float32)
        ws = np.zeros(lib.el_matmul_x8_wsize(n, n_tokens), np.uint8)
        lib.el_matmul_x8(t, k.p(packed), rows, n, k.f(x), n_tokens, k.f(y), k.p(ws))
        want = k.matmul(t, w_bytes, n, x, reference=True)
        a = k.dequantize(TYPES["q8_0"], k.quantize(TYPES["q8_0"], x, "el_from_float_ref"), n)
        bad = ~(np.abs(y.astype(np.float64) - want) <= tolerance(name, vname, w, a))
        assert not bad.any(), (n_tokens, np.argwhere(bad)[:5], y[bad][:5], want[bad][:5])


def test_matmul_on_the_default_model_tensors_matches_reference(variant, default_model_path):
    """One weight of every kind in Gemma 3 270M (q8_0, q5_0, q4_K, q6_K), decode (1 token)
    and a prefill batch (64 tokens), with activations that have the model's outliers."""
    from edgellm.runtime.gguf_file import GGUFFile

    vname, ffi, lib = variant
    k = Kernels(ffi, lib)
    lib.el_set_threads(2)
    rng = np.random.default_rng(6)
    with GGUFFile(default_model_path) as f:
        seen = set()
        for info in f.tensors.values():
            kind = (info.type, info.name.split(".")[-2])
            if len(info.shape) != 2 or info.name.startswith("token_embd") or kind in seen:
                continue
            seen.add(kind)
            n, rows = info.shape[0], min(info.shape[1], 96)
            w_bytes = np.asarray(info.data[:rows * info.row_bytes]).reshape(rows, info.row_bytes).copy()
            name = {v: key for key, v in TYPES.items()}[info.type]
            w = k.dequantize(info.type, w_bytes, n)
            for n_tokens in (1, 64):
                x = (rng.standard_normal((n_tokens, n)) * 3).astype(np.float32)
                x[:, 11] = 400.0
                got = k.matmul(info.type, w_bytes, n, x)
                want = k.matmul(info.type, w_bytes, n, x, reference=True)
                a = k.dequantize(lib.el_vec_dot_type(info.type), k.quantize(lib.el_vec_dot_type(info.type), x, "el_from_float_ref"), n)
                tol = tolerance(name, vname, w, a, gemm=n_tokens >= GEMM_MIN_TOKENS)
                assert (np.abs(got.astype(np.float64) - want) <= tol).all(), (info.name, n_tokens)
        assert {8, 6, 12, 14} <= {t for t, _ in seen}


def test_concurrent_matmuls_from_two_threads_are_both_right(variant):
    """Two Python threads in el_matmul at once (cffi releases the GIL): the pool runs one
    job, the other caller runs its own on its thread; neither result is disturbed."""
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    lib.el_set_threads(2)
    w_bytes = k.quantize(8, random_rows(7, 301, 640))
    xs = [np.random.default_rng(s).standard_normal((n, 640)).astype(np.float32) for s, n in ((8, 1), (9, 33))]
    want = [k.matmul(8, w_bytes, 640, x) for x in xs]
    errors = []

    def run(i):
        for _ in range(30):
            if not np.array_equal(k.matmul(8, w_bytes, 640, xs[i]), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_rescore_top_recomputes_exactly_the_k_largest(variant, tmp_path):
    """el_rescore_top (a requantized LM head's second look): for each token, the k largest
    entries of its y, and only those, become the stored rows' dot products; ties and NaN do not
    confuse it."""
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    rows, n = 300, 640  # rows: the scan's blocks of 64 and a partial one
    w_bytes = k.quantize(8, random_rows(13, rows, n))
    x = np.random.default_rng(14).standard_normal((2, n)).astype(np.float32)
    exact = k.matmul(8, w_bytes, n, x)
    y = np.random.default_rng(15).standard_normal((2, rows)).astype(np.float32)
    y[0, [7, 8]] = 50.0      # a tie among the largest
    y[0, 9] = np.nan         # never a candidate
    y[1, 290:] += 3.0        # the second token's largest sit in the last, partial block
    before = y.copy()
    ws = np.zeros(lib.el_rescore_top_wsize(8, n), dtype=np.uint8)
    lib.el_rescore_top(8, k.p(w_bytes), -1, 0, rows, n, k.f(x), 2, k.f(y), 5, k.p(ws))
    check_rescored(y, before, exact, rows)
    assert {7, 8} <= set(np.argsort(-np.nan_to_num(before[0], nan=-np.inf))[:5])
    assert set(np.argsort(-before[1])[:5]) <= set(range(290, 300))

    # the same rows read from a file (an LM head's stored rows): at an offset, with pread
    path = tmp_path / "rows.bin"
    path.write_bytes(b"header!" + w_bytes.tobytes())
    y = before.copy()
    with open(path, "rb") as f:
        lib.el_rescore_top(8, ffi.NULL, f.fileno(), 7, rows, n, k.f(x), 2, k.f(y), 5, k.p(ws))
    check_rescored(y, before, exact, rows)
    # a file cut short: the rows past its end keep their values, the others are rescored
    path.write_bytes(b"header!" + w_bytes[:295].tobytes())
    y = before.copy()
    with open(path, "rb") as f:
        lib.el_rescore_top(8, ffi.NULL, f.fileno(), 7, rows, n, k.f(x), 2, k.f(y), 5, k.p(ws))
    np.testing.assert_array_equal(y[1, 295:], before[1, 295:])
    top5 = np.argsort(-before[1], kind="stable")[:5]
    readable = top5[top5 < 295]
    assert len(readable) and np.allclose(y[1, readable], exact[1, readable], rtol=1e-5, atol=1e-5)


def check_rescored(y, before, exact, rows):
    """Each token's 5 largest of `before` (NaN never one) now hold `exact`; nothing else moved."""
    for t in range(2):
        top5 = np.argsort(-np.nan_to_num(before[t], nan=-np.inf), kind="stable")[:5]
        changed = np.flatnonzero(~((y[t] == before[t]) | (np.isnan(y[t]) & np.isnan(before[t]))))
        assert set(changed) <= set(top5)
        np.testing.assert_allclose(y[t, top5], exact[t, top5], rtol=1e-5, atol=1e-5)
        rest = np.setdiff1d(np.arange(rows), top5)
        assert np.array_equal(y[t, rest], before[t, rest], equal_nan=True)


# ---- attention and elementwise ops ------------------------------------------------------

def attention_reference(q, q_pos, k16, v16, slot_pos, window, scale, n_kv):
    """softmax(scale q.k) v in float64, with the queries and the softmax weights rounded to
    f16 as the kernel (and llama.cpp's CPU backend) does; returns the output and, per output,
    max_s p_s |v_s| (what an f16 rounding of one weight the other way moves it by, / 2^-11)."""
    n_tok, n_head, hd = q.shape
    group = n_head // n_kv
    kf = k16.astype(np.float64).reshape(len(slot_pos), n_kv, hd)
    vf = v16.astype(np.float64).reshape(len(slot_pos), n_kv, hd)
    out, flip = np.zeros(q.shape), np.zeros(q.shape)
    for t in range(n_tok):
        vis = (slot_pos >= 0) & (slot_pos <= q_pos[t])
        if window:
            vis &= q_pos[t] - slot_pos < window
        if not vis.any():  # a query that sees no slot gets zeros
            continue
        for h in range(n_head):
            s = kf[vis, h // group] @ q[t, h].astype(np.float16).astype(np.float64) * scale
            p = np.exp(s - s.max())
            p = (p / p.sum()).astype(np.float16).astype(np.float64)
            out[t, h] = p @ vf[vis, h // group]
            flip[t, h] = (p[:, None] * np.abs(vf[vis, h // group])).max(axis=0)
    return out, flip


# 1 token: decode; 5 and 19 (in items of up to 64 queries): the row layout, and on AVX2 the
# prefill one (queries across the lanes). Positions up to 59 with a window of 9: the last
# tokens see no slot (positions stop at 49).
@pytest.mark.parametrize("n_tokens", [1, 5, 19])
@pytest.mark.parametrize("window", [0, 9])
# an f16 cache of head size 80, and of 64 (on AVX2: llama.cpp's summation orders, attention.c);
# a q8_0 one (3 blocks a head)
@pytest.mark.parametrize("kv_type, hd", [(1, 80), (1, 64), (8, 96)])
@pytest.mark.parametrize("last_pos", [49, 59])
def test_attention_matches_float64_softmax(variant, n_tokens, window, kv_type, hd, last_pos):
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    rng = np.random.default_rng(10 + n_tokens)
    n_head, n_kv, n_slots = 8, 2, 61
    kf = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float32)
    vf = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float32)
    if kv_type == 1:
        kc, vc = kf.astype(np.float16), vf.astype(np.float16)
        kf, vf = kc.astype(np.float32), vc.astype(np.float32)
    else:  # the values the kernel reads are the q8_0 blocks' own
        kc, vc = k.quantize(8, kf, "el_from_float_ref"), k.quantize(8, vf, "el_from_float_ref")
        kf, vf = k.dequantize(8, kc, n_kv * hd), k.dequantize(8, vc, n_kv * hd)
    slot_pos = np.where(np.arange(n_slots) < 50, (np.arange(n_slots) * 17) % 50, -1).astype(np.int32)
    q_pos = np.arange(last_pos + 1 - n_tokens, last_pos + 1, dtype=np.int32)
    q = rng.standard_normal((n_tokens, n_head, hd)).astype(np.float32)
    out = np.full_like(q, np.nan)  # every output is written, zeros included
    lib.el_set_threads(2)
    c = lambda a, t: ffi.cast(t, a.ctypes.data)  # noqa: E731
    assert lib.el_attention(c(q, "float *"), c(q_pos, "int32_t *"), n_tokens, n_head, n_kv, hd, kv_type,
                            k.p(kc), k.p(vc), c(slot_pos, "int32_t *"), n_slots, window, 0.1, c(out, "float *")) == 0
    want, flip = attention_reference(q, q_pos, kf, vf, slot_pos, window, 0.1, n_kv)
    # f32 dot products of length 80 and f32 softmax sums: ~1e-7 relative, outputs are O(1);
    # a weight within that of an f16 rounding boundary may round the other way (rare): one
    # or two such per output, each 2^-11 p|v|. A wrong scale, mask or weight is O(0.1).
    assert (np.abs(out - want) <= 1e-5 + 2.0**-10 * flip).all()


@pytest.mark.parametrize("n_tokens", [1, 2, 9])
@pytest.mark.parametrize("hd", [64, 80])
def test_attention_never_reads_empty_slots(variant, n_tokens, hd):
    """Slots no query sees (empty, or never written since the cache was allocated) may hold any
    bits, NaN included: the output is the same as with zeros there."""
    _, ffi, lib = variant
    k = Kernels(ffi, lib)
    rng = np.random.default_rng(20 + n_tokens)
    n_head, n_kv, n_slots, n_past = 4, 1, 24, 5
    kc = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float16)
    vc = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float16)
    slot_pos = np.full(n_slots, -1, np.int32)
    slot_pos[:n_past + n_tokens] = np.arange(n_past + n_tokens)
    q_pos = np.arange(n_past, n_past + n_tokens, dtype=np.int32)
    q = rng.standard_normal((n_tokens, n_head, hd)).astype(np.float32)
    c = lambda a, t: ffi.cast(t, a.ctypes.data)  # noqa: E731
    outs = []
    for fill in (0.0, np.nan):
        kf, vf = kc.copy(), vc.copy()
        kf[n_past + n_tokens:], vf[n_past + n_tokens:] = fill, fill
        out = np.full_like(q, -1.0)
        lib.el_set_threads(2)
        assert lib.el_attention(c(q, "float *"), c(q_pos, "int32_t *"), n_tokens, n_head, n_kv, hd, 1, k.p(kf),
                                k.p(vf), c(slot_pos, "int32_t *"), n_slots, 0, 0.125, c(out, "float *")) == 0
        outs.append(out)
    assert np.isfinite(outs[1]).all() and np.array_equal(outs[0], outs[1])


def test_kv_store_writes_f16_like_numpy_and_q8_0_like_the_activation_quantizer(variant):
    _, ffi, lib = variant
    kern = Kernels(ffi, lib)
    rng = np.random.default_rng(11)
    k = (rng.standard_normal((3, 96)) * 100).astype(np.float32)
    v = (rng.standard_normal((3, 96)) * 1e-5).astype(np.float32)
    slots = np.array([4, 0, 2], np.int32)
    c = lambda a, t: ffi.cast(t, a.ctypes.data)  # noqa: E731
    for kv_type, want_k, want_v in [
        (1, k.astype(np.float16).view(np.uint8), v.astype(np.float16).view(np.uint8)),
        (8, kern.quantize(8, k, "el_from_float_ref"), kern.quantize(8, v, "el_from_float_ref")),
    ]:
        kc = np.zeros((5, want_k.shape[1]), np.uint8)
        vc = np.zeros_like(kc)
        assert lib.el_kv_store(kv_type, c(k, "float *"), c(v, "float *"), kern.p(kc), kern.p(vc),
                               c(slots, "int32_t *"), 3, 96) == 0
        assert np.array_equal(kc[slots], want_k) and np.array_equal(vc[slots], want_v)
    # other cache types, or q8_0 blocks that would straddle heads, are refused
    kc = np.zeros((5, 400), np.uint8)
    assert lib.el_kv_store(2, c(k, "float *"), c(v, "float *"), kern.p(kc), kern.p(kc), c(slots, "int32_t *"), 3, 96) == -1
    q = np.zeros((1, 1, 80), np.float32)
    assert lib.el_attention(c(q, "float *"), c(slots, "int32_t *"), 1, 1, 1, 80, 8, kern.p(kc), kern.p(kc),
                            c(slots, "int32_t *"), 3, 0, 1.0, c(q, "float *")) == -1


def test_elementwise_ops_match_float64(variant):
    _, ffi, lib = variant
    f = lambda a: ffi.cast("float *", a.ctypes.data)  # noqa: E731
    rng = np.random.default_rng(12)
    n = 70001  # odd: the scalar tails run too
    g = (rng.standard_normal(n) * 6).astype(np.float32)
    u = rng.standard_normal(n).astype(np.float32)
    x = g.astype(np.float64)
    lib.el_set_threads(2)
    # GELU on ggml's f16 grid: f16(gelu(f16(x))) for |x| < 10, else x or 0. Computed in f32
    # (tanhf near -1 cancels: ~2^-24 |x| absolute), a value may round to the neighbouring f16
    # at a boundary (2^-10 relative at most); nearly all that do not cancel are bit-exact
    gelu = g.copy()
    lib.el_gelu_mul(f(gelu), f(u), n)
    x16 = g.astype(np.float16).astype(np.float64)
    act = (0.5 * x16 * (1 + np.tanh(0.7978845608028654 * (x16 + 0.044715 * x16 ** 3)))).astype(np.float16)
    want = np.where(x <= -10, 0.0, np.where(x >= 10, x, act.astype(np.float64))) * u
    assert (np.abs(gelu - want) <= 2.0**-10 * np.abs(want) + (2.0**-23 * np.abs(x) + 2.0**-24) * np.abs(u)).all()
    assert np.mean((gelu == want.astype(np.float32))[x > -2]) > 0.99
    # SiLU within a few f32 ulps of the exact function (the vector exp: 2 ulp of expf)
    silu = g.copy()
    lib.el_silu_mul(f(silu), f(u), n)
    want = x / (1 + np.exp(-x)) * u
    assert (np.abs(silu - want) <= 1e-6 * np.abs(x * u) + 1e-30).all()

    rows = g[:333 * 9].reshape(9, 333).copy()
    w = rng.standard_normal(333).astype(np.float32)
    y = np.zeros_like(rows)
    lib.el_rmsnorm(f(rows), f(w), f(y), 333, 9, 1e-6)
    r64 = rows.astype(np.float64)
    want = r64 / np.sqrt((r64 ** 2).mean(axis=1, keepdims=True) + 1e-6) * w
    assert (np.abs(y - want) <= 1e-6 * np.abs(want) + 1e-7).all()
    lib.el_softmax(f(rows), 333, 9)
    e = np.exp(r64 - r64.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    assert (np.abs(rows - want) <= 1e-6 * want + 1e-12).all()


# ---- choosing a variant -----------------------------------------------------------------

def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGELLM_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def test_the_best_supported_variant_is_loaded_by_default():
    built_and_supported = [v["name"] for v in kernels.variants() if v["built"] and v["supported"]]
    result = run_python("from edgellm import kernels as k; print(k.VARIANT, k.ffi.string(k.lib.el_kernels_variant()).decode())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [built_and_supported[0]] * 2


@pytest.mark.parametrize("name", SUPPORTED)
def test_env_var_picks_any_supported_variant(name):
    result = run_python("from edgellm import kernels as k; print(k.VARIANT, k.ffi.string(k.lib.el_kernels_variant()).decode(), k.VARIANT_REASON)",
                        EDGELLM_KERNELS=name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == [name, name, f"EDGELLM_KERNELS={name}"]


def test_env_var_with_an_unknown_variant_is_a_clear_error():
    result = run_python("from edgellm import kernels", EDGELLM_KERNELS="avx9000")
    assert result.returncode != 0
    assert "EdgeLLMError: unknown kernel variant 'avx9000'" in result.stderr
    assert "generic" in result.stderr.splitlines()[-1]


def test_a_variant_the_cpu_lacks_features_for_is_refused():
    """EDGELLM_DISABLE_CPU_FEATURES hides features from the loader (it can only remove them):
    the variants needing them are refused by name and skipped by default."""
    best = next(v for v in kernels.variants() if v["built"] and v["supported"] and v["requires"])
    feature = best["requires"][-1]
    result = run_python("from edgellm import kernels", EDGELLM_KERNELS=best["name"],
                        EDGELLM_DISABLE_CPU_FEATURES=feature)
    assert result.returncode != 0
    assert f"kernel variant '{best['name']}' needs CPU features this CPU lacks ({feature})" in result.stderr
    result = run_python("from edgellm import kernels as k; print(k.VARIANT); print(k.VARIANT_REASON)",
                        EDGELLM_DISABLE_CPU_FEATURES=feature)
    assert result.returncode == 0, result.stderr
    chosen, reason = result.stdout.splitlines()
    # "...; not a (needs ...); b (needs ...)": every better variant, each with what it lacks
    refused = reason.split("; not ", 1)[1].split("; ")
    assert chosen != best["name"] and f"{best['name']} (needs {feature})" in refused


def test_describe_names_the_variant_and_every_built_one():
    text = kernels.describe()
    assert text.splitlines()[0] == f"kernels: {kernels.VARIANT} ({kernels.VARIANT_REASON})"
    for v in kernels.variants():
        assert v["name"] in text
    assert f"* {kernels.VARIANT} " in text
    assert f"self-check against the reference kernels: {kernels.SELF_CHECK}" in text


class BrokenMatmul:
    """A variant's lib whose el_matmul is wrong for one type: one output off by 1000, far
    outside the check's bound whatever the random problem (1% of sum |w_i x_i| over 512
    columns, which is in the hundreds at most)."""

    def __init__(self, lib, broken_type):
        self._lib, self._type = lib, broken_type

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def el_matmul(self, type_, w, n_rows, n_cols, x, n_tokens, y, wdata):
        self._lib.el_matmul(type_, w, n_rows, n_cols, x, n_tokens, y, wdata)
        if type_ == self._type:
            y[3] = y[3] + 1000.0


def test_every_variant_passes_its_self_check(variant):
    from edgellm.kernels import selfcheck

    _, ffi, lib = variant
    assert selfcheck.check(ffi, lib) is None


def test_a_variant_that_fails_its_self_check_is_passed_over_with_one_warning(capsys):
    """The best variant with a broken q4_K matmul: the self-check names the kernel, and the
    choice falls back to the next variant, with one warning line and the reason."""
    from edgellm.kernels import selfcheck

    table = kernels.variants()
    best, second = [v["name"] for v in table if v["built"] and v["supported"]][:2]

    def check(name, ffi, lib):
        return selfcheck.check(ffi, BrokenMatmul(lib, kernels.Q4_K) if name == best else lib)

    name, reason, (ffi, lib), said = kernels.choose_variant(table, check)
    assert name == second and said.startswith("passed in")
    assert f"{best} (failed its self-check: matmul q4_K, batch of 1)" in reason
    assert capsys.readouterr().err.splitlines() == [
        f"edgellm: kernel variant {best} failed its self-check (matmul q4_K, batch of 1); trying the next one"]
