"""A kernel variant's check of itself, on first use in a process (edgellm.kernels).

A variant is chosen by the CPU's features, so a machine may run code that no CI machine ran
(the AVX-512 variants went unexecuted for weeks on AVX2-only machines). Before the runtime
uses a variant, each kernel family is run once on a small random problem and held to the
portable references that every variant's module carries (quants.c's *_ref functions,
el_matmul_ref) or to float64 numpy: the activation quantizers bit for bit, the matrix
products and attention within bounds that reordered f32 sums stay far inside and a wrong
instruction, lane or layout does not. A few milliseconds; what it costs is reported.
"""

from __future__ import annotations

import numpy as np

# ggml type ids (api.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = 10, 11, 12, 13, 14, 15, 30

WEIGHT_TYPES = {"f32": F32, "f16": F16, "bf16": BF16, "q4_0": Q4_0, "q4_1": Q4_1, "q5_0": Q5_0,
                "q5_1": Q5_1, "q8_0": Q8_0, "q2_K": Q2_K, "q3_K": Q3_K, "q4_K": Q4_K, "q5_K": Q5_K,
                "q6_K": Q6_K}
ACTIVATION_TYPES = {"f16": F16, "bf16": BF16, "q8_0": Q8_0, "q8_1": Q8_1, "q8_K": Q8_K}
N_COLS, N_ROWS = 512, 16


class Noise:
    """Deterministic pseudo-random arrays with numpy.random's call shapes: splitmix64 over a
    counter, normals by Box-Muller. Not numpy.random itself: importing it costs ~5 MiB of
    RSS (OpenSSL comes with it, through `secrets`), which every process would pay for a
    check that needs no statistical quality."""

    def __init__(self, seed: int):
        self.counter = seed

    def _unit(self, shape) -> np.ndarray:
        """Uniform in [0, 1), float64."""
        n = int(np.prod(shape))
        x = np.arange(self.counter, self.counter + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        self.counter += n
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return ((x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(shape)

    def uniform(self, low: float, high: float, shape) -> np.ndarray:
        return low + (high - low) * self._unit(shape)

    def standard_normal(self, shape) -> np.ndarray:
        u, v = self._unit(shape), self._unit(shape)
        return np.sqrt(-2 * np.log1p(-u)) * np.cos(2 * np.pi * v)
# 1 and 3 tokens: decode's GEMV paths; 9: the prefill tiles
TOKEN_COUNTS = (1, 3, 9)
# |kernel - reference| allowed, as a fraction of sum |w_i x_i| (the sum before cancellation):
# reordered f32 sums and the x86 tiles' bias terms measure below 1e-4 of it (tests/
# test_kernels_variants.py holds them to far less); a wrong nibble order, scale or lane is O(1).
MATMUL_BOUND = 1e-2


def check(ffi, lib) -> str | None:
    """The first kernel family of (ffi, lib) that fails its check, as a short name, or None."""
    rng = Noise(20261203)
    p = lambda a: ffi.cast("void *", a.ctypes.data)  # noqa: E731
    f = lambda a: ffi.cast("float *", a.ctypes.data)  # noqa: E731

    x = rng.standard_normal((max(TOKEN_COUNTS), N_COLS)).astype(np.float32)
    x[:, 7] *= 30  # an outlier, as residual streams have
    for name, t in ACTIVATION_TYPES.items():
        ours = np.zeros(lib.el_row_size(t, N_COLS), np.uint8)
        ref = np.ones_like(ours)
        if (lib.el_from_float(t, f(x[0]), p(ours), N_COLS) or lib.el_from_float_ref(t, f(x[0]), p(ref), N_COLS)
                or not np.array_equal(ours, ref)):
            return f"activation quantizer {name}"

    w = (rng.standard_normal((N_ROWS, N_COLS)) * np.exp(rng.uniform(-2, 2, (N_ROWS, 1)))).astype(np.float32)
    for name, t in WEIGHT_TYPES.items():
        if not lib.el_type_supported(t):
            continue
        wq = np.zeros((N_ROWS, lib.el_row_size(t, N_COLS)), np.uint8)
        lib.el_quantize_row(t, f(w), p(wq), w.size)  # rows of whole blocks: one call
        wd = np.zeros((N_ROWS, N_COLS), np.float32)
        lib.el_dequantize_row(t, p(wq), f(wd), wd.size)
        for n in TOKEN_COUNTS:
            if not _matmul_ok(lib, p, f, t, wq, wd, x[:n], packed=False):
                return f"matmul {name}, batch of {n}"
        if t in (Q4_0, Q5_0):
            packed = np.zeros_like(wq)
            if lib.el_pack_x8(t, p(wq), N_ROWS, N_COLS, p(packed)) != 0:
                return f"interleaved rows {name}"
            for n in TOKEN_COUNTS[:2]:
                if not _matmul_ok(lib, p, f, t, packed, wd, x[:n], packed=True, plain=wq):
                    return f"interleaved matmul {name}, batch of {n}"

    for head_dim in (64, 80):  # a multiple of 32 (AVX2's exact path) and not
        for n in (1, 5):
            if not _attention_ok(ffi, lib, rng, head_dim, n):
                return f"attention, head size {head_dim}, batch of {n}"
    return None


def _matmul_ok(lib, p, f, t, w, wd, x, packed, plain=None) -> bool:
    n = x.shape[0]
    x = np.ascontiguousarray(x)
    y = np.full((n, N_ROWS), np.nan, np.float32)
    ref = np.zeros_like(y)
    wsize = lib.el_matmul_x8_wsize(N_COLS, n) if packed else lib.el_matmul_wsize(t, N_COLS, n)
    ws = np.zeros(max(wsize, lib.el_matmul_wsize(t, N_COLS, n)) + 64, np.uint8)
    if packed:
        lib.el_matmul_x8(t, p(w), N_ROWS, N_COLS, f(x), n, f(y), p(ws))
    else:
        lib.el_matmul(t, p(w), N_ROWS, N_COLS, f(x), n, f(y), p(ws))
    lib.el_matmul_ref(t, p(w if plain is None else plain), N_ROWS, N_COLS, f(x), n, f(ref), p(ws))
    scale = np.abs(x.astype(np.float64)) @ np.abs(wd.astype(np.float64)).T
    return bool(np.all(np.abs(y.astype(np.float64) - ref) <= MATMUL_BOUND * scale + 1e-6))


def _attention_ok(ffi, lib, rng, hd: int, n: int) -> bool:
    """Causal attention over an f16 cache of 12 positions, 4 query heads on 2 kv heads,
    against float64 (queries and softmax weights rounded to f16, as the kernels and llama.cpp
    round them)."""
    n_head, n_kv, n_slots = 4, 2, 12
    k = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float16)
    v = rng.standard_normal((n_slots, n_kv * hd)).astype(np.float16)
    slot_pos = np.arange(n_slots, dtype=np.int32)
    q_pos = np.arange(n_slots - n, n_slots, dtype=np.int32)
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    out = np.full_like(q, np.nan)
    c = lambda a, t: ffi.cast(t, a.ctypes.data)  # noqa: E731
    if lib.el_attention(c(q, "float *"), c(q_pos, "int32_t *"), n, n_head, n_kv, hd, F16, c(k, "void *"),
                        c(v, "void *"), c(slot_pos, "int32_t *"), n_slots, 0, 0.125, c(out, "float *")) != 0:
        return False
    kf = k.astype(np.float64).reshape(n_slots, n_kv, hd)
    vf = v.astype(np.float64).reshape(n_slots, n_kv, hd)
    for t in range(n):
        seen = slot_pos <= q_pos[t]
        for h in range(n_head):
            s = kf[seen, h * n_kv // n_head] @ q[t, h].astype(np.float16).astype(np.float64) * 0.125
            w = np.exp(s - s.max())
            w = (w / w.sum()).astype(np.float16).astype(np.float64)
            if not np.allclose(out[t, h], w @ vf[seen, h * n_kv // n_head], rtol=1e-3, atol=1e-3):
                return False
    return True
