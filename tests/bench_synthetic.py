"""Benchmark edgellm against llama.cpp on synthetic ~125M-parameter llama models in Q4_0,
Q8_0 and F16 (a benchmark, not a test: pytest does not collect it).

    python tests/bench_synthetic.py [-r 5] [-t 2] [--types Q4_0,Q8_0,F16]

Each model is written once into ~/.cache/edgellm/bench (random weights, the real Llama 2
SPM vocabulary from llama.cpp's vocab test file, so both engines tokenize and run it), then
`edgellm bench --compare llama.cpp` runs it: alternating runs of both engines, medians and
the ratios. Shape: SmolLM-like, n_embd 768, 12 layers, 12 heads / 4 kv heads, ffn 2048,
vocab 32000, untied output: 125M parameters.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llamacpp_assets import llamacpp_models_dir  # noqa: E402
from synthetic_models import write_synthetic_model  # noqa: E402

SHAPE = dict(n_embd=768, n_layer=12, n_head=12, n_head_kv=4, n_ff=2048, n_ctx=4096)
CACHE = Path(os.environ.get("EDGELLM_CACHE", Path.home() / ".cache" / "edgellm")) / "bench"


def model_path(weight_type: str) -> Path:
    path = CACHE / f"synthetic-llama-125m-{weight_type.lower()}.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        tmp = path.with_suffix(".tmp")
        write_synthetic_model(tmp, "llama", weight_type, llamacpp_models_dir() / "ggml-vocab-llama-spm.gguf",
                              embd_type=weight_type, **SHAPE)
        tmp.rename(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="Q4_0,Q8_0,F16")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    failed = 0
    for weight_type in args.types.split(","):
        path = model_path(weight_type)
        print(f"\n== synthetic llama 125M {weight_type}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", "edgellm.cli", "bench", str(path),
                                   "--compare", "llama.cpp", "-r", str(args.repetitions), "-t", str(args.threads)])
    return failed


if __name__ == "__main__":
    sys.exit(main())
