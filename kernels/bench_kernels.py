"""Kernel throughput on a model's own weights, per kernel variant (not a test):

    python -m edgellm.kernels.bench_kernels MODEL.gguf [--threads 2] [--variants avx2,generic]

For each weight kind of the model (attn_q, ffn_down, the LM head, ...) the matmul runs over
the tensor of every layer in turn, as a forward pass does, so the working set is the model's
and not one tensor that stays in cache:
  - decode: 1 token, GB/s of weights streamed (memory-bound: compare with `copy GB/s`);
  - prefill: --tokens (512) tokens at once, GFLOP/s (2 * rows * cols * tokens).
Prints the median of --repeats runs per variant, side by side.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np

from edgellm import kernels


def weight_kinds(path: str) -> dict[str, list]:
    """{(kind, type): [(type, n_rows, n_cols, uint8 data), ...]} for the 2-D weights of a GGUF
    file; kind is the tensor name without its layer (blk.3.attn_q.weight -> attn_q)."""
    import gguf

    reader = gguf.GGUFReader(path)
    kinds: dict[tuple, list] = {}
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        kind = re.sub(r"^blk\.\d+\.", "", t.name).removesuffix(".weight")
        n_cols, n_rows = int(t.shape[0]), int(t.shape[1])
        kinds.setdefault((kind, int(t.tensor_type)), []).append((int(t.tensor_type), n_rows, n_cols, np.asarray(t.data).view(np.uint8)))
    return kinds


def time_matmuls(lib, ffi, tensors, n_tokens: int, repeats: int) -> float:
    """Median seconds of one pass of el_matmul over every tensor."""
    rng = np.random.default_rng(0)
    max_rows = max(r for _, r, _, _ in tensors)
    max_cols = max(c for _, _, c, _ in tensors)
    x = rng.standard_normal((n_tokens, max_cols)).astype(np.float32)
    y = np.empty((n_tokens, max_rows), dtype=np.float32)
    ws = np.empty(max(lib.el_matmul_wsize(t, c, n_tokens) for t, _, c, _ in tensors) + 64, dtype=np.uint8)
    p = lambda a: ffi.cast("void *", a.ctypes.data)  # noqa: E731
    xs = [np.ascontiguousarray(x[:, :c]) for _, _, c, _ in tensors]
    times = []
    for _ in range(repeats + 1):  # the first pass warms caches and page tables
        t0 = time.perf_counter()
        for (type_, rows, cols, data), xc in zip(tensors, xs):
            lib.el_matmul(type_, p(data), rows, cols, ffi.cast("float *", xc.ctypes.data), n_tokens,
                          ffi.cast("float *", y.ctypes.data), p(ws))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def copy_bandwidth(n_bytes: int = 256 << 20) -> float:
    """GB/s of a plain numpy copy (reads + writes), the memory system's rough ceiling."""
    a = np.ones(n_bytes // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / statistics.median(times) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(v["name"] for v in kernels.variants()
                                                   if v["built"] and v["supported"]))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-prefill", action="store_true")
    args = ap.parse_args(argv)

    kinds = weight_kinds(args.model)
    names = args.variants.split(",")
    libs = {n: kernels.load_variant(n) for n in names}
    for _, lib in libs.values():
        lib.el_set_threads(args.threads)
    print(f"{args.model}: {args.threads} threads; copy {copy_bandwidth():.1f} GB/s (1 thread)")
    header = f"{'weight':<14}{'type':<6}{'rows x cols':>14}{'MB':>8}"
    print("decode (1 token), GB/s of weights\n" + header + "".join(f"{n:>12}" for n in names))
    type_names = {v: k for k, v in vars(kernels).items() if k.isupper() and isinstance(v, int) and k not in ("ENV_VAR",)}
    for (kind, _), tensors in kinds.items():
        mb = sum(d.nbytes for *_, d in tensors) / 1e6
        t, r, c, _ = tensors[0]
        row = f"{kind:<14}{type_names.get(t, t):<6}{f'{r} x {c}':>14}{mb:>8.1f}"
        for n in names:
            ffi, lib = libs[n]
            row += f"{mb / 1e3 / time_matmuls(lib, ffi, tensors, 1, args.repeats):>12.1f}"
        print(row)
    if args.skip_prefill:
        return 0
    print(f"prefill ({args.tokens} tokens), GFLOP/s\n" + header + "".join(f"{n:>12}" for n in names))
    for (kind, _), tensors in kinds.items():
        if kind in ("token_embd", "output"):
            continue  # the LM head sees one token per batch
        t, r, c, _ = tensors[0]
        flop = sum(2 * rows * cols * args.tokens for _, rows, cols, _ in tensors)
        row = f"{kind:<14}{type_names.get(t, t):<6}{f'{r} x {c}':>14}{sum(d.nbytes for *_, d in tensors) / 1e6:>8.1f}"
        for n in names:
            ffi, lib = libs[n]
            row += f"{flop / 1e9 / time_matmuls(lib, ffi, tensors, args.tokens, max(1, args.repeats // 2)):>12.1f}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
