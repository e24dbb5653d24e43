"""Every batch shape a request produces, against llama.cpp on the same file and tokens.

A kernel that reads a value it never wrote (a scratch row sized for one shape, a tile edge, a
cache slot) is right for most shapes and wrong for a few, which depend on the head layout and
the batch length. So: prompts of every length 1..80 evaluated as one batch, fresh and after a
cached prefix (what every request after the first takes), on synthetic models with the head
layouts of the models people run, in every weight type, by every kernel variant this CPU
runs (each in a process of its own: tests/batch_scan.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch_scan import MAX_LEN, scan_ends, scan_shapes
from edgellm import kernels
from llamacpp_assets import llamacpp_models_dir
from llamacpp_oracle import llama_cpp_reference, llamacpp_last_logits
from synthetic_models import WEIGHT_TYPES, write_synthetic_model
from test_synthetic_models import MAX_REL_ERROR
from texts import TEXT

pytest.importorskip("llama_cpp")

# (n_head, n_head_kv, head_dim): queries per kv head 1, 2, 3, 4, 7, 8; head sizes 64, 80,
# 128, 256 (the model named has that layout, at full or reduced head count)
LAYOUTS = {
    "g1-hd128": (2, 2, 128),   # Llama 2
    "g2-hd128": (4, 2, 128),   # Qwen3 0.6B
    "g3-hd64": (9, 3, 64),     # SmolLM2 135M
    "g4-hd64": (8, 2, 64),     # Llama 3.2 1B
    "g4-hd256": (4, 1, 256),   # Gemma 3 270M
    "g7-hd64": (14, 2, 64),    # Qwen2.5 0.5B
    "g8-hd128": (8, 1, 128),   # Qwen2.5 3B
    "g1-hd80": (2, 2, 80),     # Phi-2 (head size 80)
    "g4-hd80": (4, 1, 80),
}
CASES = [(layout, wt) for layout in LAYOUTS for wt in WEIGHT_TYPES]
VARIANTS = [v["name"] for v in kernels.variants() if v["built"] and v["supported"]]
VOCAB = "ggml-vocab-llama-spm.gguf"
# test_synthetic_models' bounds (|ours - llama.cpp| / std of llama.cpp's logits) hold one
# prompt a model; over these ~10,000 shapes the worst mean is 0.024 (the generic variant's
# q5_1, whose min term rounds in another order; its q4_1 0.020; the SIMD variants <= 0.018),
# the worst max 0.13. A value never written gives NaN or an error of the order of the std itself.
MEAN_REL_ERROR = 0.03


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The models (one per layout and weight type), the token ids, and llama.cpp's logits for
    each scanned shape of each model."""
    from edgellm.runtime.gguf_file import GGUFFile
    from edgellm.runtime.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("shapes")
    with GGUFFile(llamacpp_models_dir() / VOCAB) as vocab:
        ids = Tokenizer.from_metadata(vocab.metadata).encode(TEXT, add_special=True)[:MAX_LEN]
    assert len(ids) == MAX_LEN
    ids_file = folder / "ids.txt"
    ids_file.write_text(" ".join(map(str, ids)))
    paths, refs = [], []
    for layout, weight_type in CASES:
        n_head, n_kv, head_dim = LAYOUTS[layout]
        path = write_synthetic_model(folder / f"{layout}-{weight_type}.gguf", "llama", weight_type,
                                     llamacpp_models_dir() / VOCAB, n_head=n_head, n_head_kv=n_kv,
                                     head_dim=head_dim)
        # the reference for every scanned shape: llama.cpp's logits at the position its
        # batch ends on, all positions from one batch (the shapes under test are ours)
        llm = llama_cpp_reference(path, n_ctx=128, n_batch=128, n_threads=2, logits_all=True)
        try:
            llm.eval(ids)
            every = np.array(llm.scores[:MAX_LEN], dtype=np.float32)
        finally:
            llm.close()
        refs.append(every[[end - 1 for end in scan_ends()]])
        paths.append(path)
    return folder, ids_file, paths, refs


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_batch_length_matches_llamacpp(references, variant):
    folder, ids_file, paths, refs = references
    out = folder / f"ours-{variant}.npz"
    env = dict(os.environ, EDGELLM_KERNELS=variant)
    script = Path(__file__).with_name("batch_scan.py")
    result = subprocess.run([sys.executable, str(script), "shapes", str(out), str(ids_file), *map(str, paths)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = np.load(out)
    bad = []
    for i, ((layout, weight_type), ref) in enumerate(zip(CASES, refs)):
        for (kind, n), want, got in zip(scan_shapes(), ref, ours[str(i)]):
            err = np.abs(got - want) / want.std()
            if not np.isfinite(got).all() or err.max() >= MAX_REL_ERROR or err.mean() >= MEAN_REL_ERROR:
                bad.append(f"{layout} {weight_type}, {kind}, batch of {n}: max rel error {err.max():.3g}, "
                           f"mean {err.mean():.3g}, {int((~np.isfinite(got)).sum())} not finite")
    assert not bad, f"{len(bad)} shapes off:\n" + "\n".join(bad[:40])


# ---- a cached prefix, then the rest: every split of real prompts on the default model ------

PROMPTS = [
    "Q: What is the boiling point of water at sea level? The answer, as every student of physics "
    "and chemistry knows, depends on the pressure of the air above it.",
    TEXT[:330],
]
# a prompt across Gemma 3's 512-position sliding window, split around it
WINDOW_SPLITS = [1, 100, 255, 256, 500, 505, 511, 512, 513, 520, 575, 586]


@pytest.fixture(scope="module")
def split_cases(default_model):
    cases = [{"ids": ids, "splits": list(range(1, len(ids)))}
             for ids in (default_model.tokenize(p) for p in PROMPTS)]
    long = default_model.tokenize(TEXT + " " + TEXT)
    assert len(long) == 587
    cases.append({"ids": long, "splits": WINDOW_SPLITS})
    return cases


def test_every_split_matches_llamacpp_and_another_process(default_model, default_model_path, split_cases,
                                                           tmp_path):
    """ids[:k] evaluated, then ids[k:] as one batch (what Model.reuse_prefix leaves to a
    request): the last position's logits equal llama.cpp's for the same split, and the same
    numbers come out of another process (a value read before it was written would differ)."""
    import json

    from llamacpp_oracle import arithmetic_matches_ours
    from batch_scan import split

    m = default_model
    ours = {f"{i}-{k}": split(lambda t: m.eval(t).copy(), m.reset, c["ids"], k)
            for i, c in enumerate(split_cases) for k in c["splits"]}
    cases = tmp_path / "splits.json"
    cases.write_text(json.dumps(split_cases))
    out = tmp_path / "other.npz"
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("batch_scan.py")), "splits", str(out),
                             str(cases)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    other = np.load(out)
    differ = [key for key in ours if not np.array_equal(ours[key], other[key])]
    assert not differ, f"splits whose logits differ between two processes: {differ}"

    llm = llama_cpp_reference(default_model_path, n_ctx=1024, n_batch=512, n_threads=2)
    try:
        ref = {f"{i}-{k}": split(lambda t: llamacpp_last_logits(llm, t), llm.reset, c["ids"], k)
               for i, c in enumerate(split_cases) for k in c["splits"]}
    finally:
        llm.close()
    report, off = [], []
    for key, want in ref.items():
        got = ours[key]
        top = np.argsort(-want)[:2]
        line = (f"split {key}: max |diff| {np.abs(got - want).max():.4f}, our top-1 {int(got.argmax())}, "
                f"llama.cpp's {int(top[0])} by {want[top[0]] - want[top[1]]:.3f}")
        report.append(line)
        if arithmetic_matches_ours() and not np.array_equal(got, want):
            off.append(line)
        # elsewhere the sums run in each ISA's own order (measured on AVX-512, 129 splits: max
        # |diff| up to 4.8): the top-1 agrees unless llama.cpp's own top-2 is within what its
        # own builds disagree by. Its AVX-512 and AVX2 builds differ by up to 4.3 at these
        # splits, and at split 1-7 its margin is 0.89 in one and 1.78 in the other (our
        # AVX-512 kernels, a 7-token batch on the decode path, pick its second there)
        elif int(got.argmax()) != int(top[0]) and want[top[0]] - want[top[1]] >= 1.0:
            off.append(line)
    print("\n" + "\n".join(report))
    assert not off, "\n".join(off)
