"""Synthetic models: every arch x weight type loads in GGUFFile and runs in llama.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgellm.runtime.gguf_file import GGUFFile
from llamacpp_assets import llamacpp_models_dir
from llamacpp_oracle import llama_cpp_reference, llamacpp_last_logits
from synthetic_models import (ARCHITECTURES, K_QUANT_TYPES, WEIGHT_TYPES, default_shape,
                              write_synthetic_model)

# llama.cpp's vocab-only test GGUFs: the real tokenizers of each architecture.
VOCABS = {"llama": "ggml-vocab-llama-spm.gguf", "qwen2": "ggml-vocab-qwen2.gguf",
          "qwen3": "ggml-vocab-qwen2.gguf", "phi3": "ggml-vocab-phi-3.gguf"}
N_VOCAB = {"llama": 32000, "qwen2": 151936, "qwen3": 151936, "phi3": 32064}

CASES = [(arch, wt) for arch in ARCHITECTURES for wt in WEIGHT_TYPES + K_QUANT_TYPES]
IDS = [f"{arch}-{wt}" for arch, wt in CASES]


def vocab_path(arch: str) -> Path:
    return llamacpp_models_dir() / VOCABS[arch]


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    """(arch, weight_type) -> path, each model written once per module."""
    made: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("synthetic")

    def get(arch: str, weight_type: str) -> Path:
        if (arch, weight_type) not in made:
            made[arch, weight_type] = write_synthetic_model(
                folder / f"{arch}-{weight_type}.gguf", arch, weight_type, vocab_path(arch))
        return made[arch, weight_type]

    return get


@pytest.mark.parametrize("arch, weight_type", CASES, ids=IDS)
def test_synthetic_model_has_the_layout_llama_cpp_expects(synthetic_model, arch, weight_type):
    path = synthetic_model(arch, weight_type)
    k_quant = weight_type in K_QUANT_TYPES
    # the toy widths, or the K-quants' (every row a whole number of 256-weight blocks)
    d, ff = (256, 512) if k_quant else (64, 128)
    assert default_shape(weight_type) == dict(n_embd=d, n_ff=ff, n_head=4, n_head_kv=2)
    with GGUFFile(path) as g:
        assert g.require("general.architecture", str) == arch
        assert g.require(f"{arch}.block_count", int) == 2
        assert g.require(f"{arch}.embedding_length", int) == d
        assert g.require(f"{arch}.feed_forward_length", int) == ff
        assert g.require(f"{arch}.attention.head_count", int) == 4
        assert g.require(f"{arch}.attention.head_count_kv", int) == 2
        head_dim = d // 4 * (2 if arch == "qwen3" else 1)
        q_dim = 4 * head_dim
        assert g.require(f"{arch}.rope.dimension_count", int) == head_dim
        assert g.get(f"{arch}.attention.key_length") == (head_dim if arch == "qwen3" else None)
        assert g.require(f"{arch}.context_length", int) == (2048 if arch == "phi3" else 256)
        assert g.require(f"{arch}.attention.layer_norm_rms_epsilon", float) == np.float32(1e-5)
        assert g.require(f"{arch}.rope.freq_base", float) == 10000.0
        n_vocab = N_VOCAB[arch]
        assert len(g.require("tokenizer.ggml.tokens", list)) == n_vocab

        embd_type = "Q8_0" if weight_type in ("F32", "F16", "BF16") else weight_type
        expected = {"token_embd.weight": (embd_type, (d, n_vocab)),
                    "output_norm.weight": ("F32", (d,))}
        if arch in ("llama", "phi3"):
            expected["output.weight"] = (embd_type, (d, n_vocab))
        if arch == "phi3":
            expected |= {"rope_factors_long.weight": ("F32", (head_dim // 2,)),
                         "rope_factors_short.weight": ("F32", (head_dim // 2,))}
            assert g.require("phi3.rope.scaling.original_context_length", int) == 256
            assert g.require("phi3.rope.scaling.attn_factor", float) == np.float32(np.sqrt(1 + np.log(8) / np.log(256)))
            assert g.require("phi3.attention.sliding_window", int) == 4
        for i in range(2):
            b = f"blk.{i}"
            expected |= {
                f"{b}.attn_norm.weight": ("F32", (d,)),
                f"{b}.attn_output.weight": (weight_type, (q_dim, d)),
                f"{b}.ffn_norm.weight": ("F32", (d,)),
                f"{b}.ffn_down.weight": (weight_type, (ff, d)),
            }
            if arch == "phi3":  # fused: q, k, v rows; gate, up rows
                expected |= {f"{b}.attn_qkv.weight": (weight_type, (d, q_dim + 4 * head_dim)),
                             f"{b}.ffn_up.weight": (weight_type, (d, 2 * ff))}
            else:
                expected |= {f"{b}.attn_q.weight": (weight_type, (d, q_dim)),
                             f"{b}.attn_k.weight": (weight_type, (d, 2 * head_dim)),
                             f"{b}.attn_v.weight": (weight_type, (d, 2 * head_dim)),
                             f"{b}.ffn_gate.weight": (weight_type, (d, ff)),
                             f"{b}.ffn_up.weight": (weight_type, (d, ff))}
            if arch == "qwen2":
                expected |= {f"{b}.attn_q.bias": ("F32", (q_dim,)),
                             f"{b}.attn_k.bias": ("F32", (2 * head_dim,)),
                             f"{b}.attn_v.bias": ("F32", (2 * head_dim,))}
            if arch == "qwen3":
                expected |= {f"{b}.attn_q_norm.weight": ("F32", (head_dim,)),
                             f"{b}.attn_k_norm.weight": ("F32", (head_dim,))}
        assert {n: (t.type_name, t.shape) for n, t in g.tensors.items()} == expected
        # qwen2's 151936-row embedding at n_embd 256 is 22 MB in Q4_K, 32 MB in Q6_K
        assert path.stat().st_size < (40 if k_quant else 24) * 2**20


def test_synthetic_weights_have_the_documented_scale(synthetic_model):
    with GGUFFile(synthetic_model("llama", "F32")) as g:
        q = g.tensor("blk.0.attn_q.weight").data.view(np.float32)
        assert abs(q.std() - 1 / 8) < 0.01  # N(0, 1/sqrt(row length 64))
        norm = g.tensor("blk.0.attn_norm.weight").data.view(np.float32)
        assert abs(norm.mean() - 1.0) < 0.05 and 0.05 < norm.std() < 0.15


def test_same_seed_writes_the_same_file_and_another_seed_does_not(synthetic_model, tmp_path):
    vocab = vocab_path("llama")
    first = synthetic_model("llama", "Q4_0").read_bytes()  # seed 0
    again = write_synthetic_model(tmp_path / "a.gguf", "llama", "Q4_0", vocab, seed=0)
    other = write_synthetic_model(tmp_path / "b.gguf", "llama", "Q4_0", vocab, seed=1)
    assert again.read_bytes() == first != other.read_bytes()


def test_tokenizer_metadata_is_copied_with_its_stored_types(synthetic_model):
    with GGUFFile(synthetic_model("qwen2", "Q8_0")) as g, GGUFFile(vocab_path("qwen2")) as v:
        keys = [k for k in v.metadata if k.startswith("tokenizer.")]
        assert "tokenizer.ggml.merges" in keys and "tokenizer.chat_template" in keys
        for key in keys:
            assert g.value_type(key) == v.value_type(key), key
            ours, ref = g.metadata[key], v.metadata[key]
            if isinstance(ref, np.ndarray):
                assert ours.dtype == ref.dtype and np.array_equal(ours, ref), key
            else:
                assert ours == ref, key


def test_unsupported_arch_type_or_width_is_refused(tmp_path):
    vocab = vocab_path("llama")
    with pytest.raises(ValueError, match="arch must be one of"):
        write_synthetic_model(tmp_path / "x.gguf", "gemma3", "F32", vocab)
    with pytest.raises(ValueError, match="weight_type must be one of"):
        write_synthetic_model(tmp_path / "x.gguf", "llama", "Q2_K", vocab)
    with pytest.raises(ValueError, match="n_embd = 64 must be a multiple of 256"):
        write_synthetic_model(tmp_path / "x.gguf", "llama", "Q4_K", vocab, n_embd=64)


@pytest.mark.parametrize("arch, weight_type", CASES, ids=IDS)
def test_llama_cpp_runs_synthetic_model_to_finite_spread_logits(synthetic_model, arch, weight_type):
    path = synthetic_model(arch, weight_type)
    llm = llama_cpp_reference(path, n_ctx=64, logits_all=True, n_threads=1, seed=0)
    try:
        assert llm.n_vocab() == N_VOCAB[arch]
        tokens = llm.tokenize(b"Hello world, this is a test", add_bos=True)
        assert len(tokens) >= 5
        llm.eval(tokens)
        logits = np.asarray(llm.scores[:len(tokens)])  # (n_tokens, n_vocab)
        assert logits.shape == (len(tokens), N_VOCAB[arch])
        assert np.isfinite(logits).all()
        # non-degenerate: logits vary across the vocabulary and from position to position
        assert (logits.std(axis=1) > 0.1).all()
        assert not np.allclose(logits[0], logits[-1])
    finally:
        llm.close()


# Our last-position logits against llama.cpp's for the same file and token ids.
# Measured on these models (max |difference| / std of llama.cpp's logits): ~1e-3 where every
# activation stays in float (F32/F16/BF16 weights with a float embedding), up to ~0.1 once
# activations are re-quantized to Q8_0 before each quantized matmul: llama.cpp rounds Q and
# the softmax weights to f16 inside attention, and a difference of that size moves the odd
# activation across a Q8_0 rounding boundary, a step of 1/127 of its block's maximum, which
# the next layers carry forward. Q4_K and Q6_K (activations as Q8_K, n_embd 256): ~1e-6 on
# every architecture. A wrong kernel, rope or layout gives differences of the order of the
# std itself.
MAX_REL_ERROR = 0.15
MEAN_REL_ERROR = 0.02


def assert_last_position_logits_match(path, n_ctx: int = 64) -> np.ndarray:
    """Our last-position logits of one prompt against llama.cpp's, within the bounds above
    and with the same argmax; returns ours."""
    from edgellm.runtime.generation import Model

    llm = llama_cpp_reference(path, n_ctx=n_ctx, logits_all=True, n_threads=1)
    try:
        ids = llm.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=True)
        llm.eval(ids)
        ref = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
    finally:
        llm.close()
    ours = Model(path, n_ctx=n_ctx, threads=1).eval(ids).copy()
    err = np.abs(ours - ref) / ref.std()
    assert err.max() < MAX_REL_ERROR and err.mean() < MEAN_REL_ERROR, (err.max(), err.mean())
    assert np.argmax(ours) == np.argmax(ref)
    return ours


@pytest.mark.parametrize("arch, weight_type", CASES, ids=IDS)
def test_last_position_logits_match_llama_cpp(synthetic_model, arch, weight_type):
    assert_last_position_logits_match(synthetic_model(arch, weight_type))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_tokens_match_llama_cpp(synthetic_model, arch):
    """16 greedy tokens decoded one at a time after the prompt, on Q8_0 weights: the same as
    llama.cpp's (the logits agree to ~1e-6 of their spread, far below these random models' top-2 gaps)."""
    from edgellm.runtime.generation import Model

    path = synthetic_model(arch, "Q8_0")
    llm = llama_cpp_reference(path, n_ctx=64, n_threads=1)
    try:
        ids = llm.tokenize(b"Once upon a time", add_bos=True)
        ref = []
        ref_logits = llamacpp_last_logits(llm, ids)
        for _ in range(16):
            ref.append(int(np.argmax(ref_logits)))
            ref_logits = llamacpp_last_logits(llm, [ref[-1]])
    finally:
        llm.close()
    model = Model(path, n_ctx=64, threads=1)
    logits, ours = model.eval(ids), []
    for _ in range(16):
        ours.append(int(np.argmax(logits)))
        logits = model.eval_token(ours[-1])
    assert ours == ref


@pytest.mark.parametrize("weight_type", ["F32", "Q8_0", "Q4_0"])
@pytest.mark.parametrize("n_rot, tied", [(16, False), (12, True)], ids=["phi3-mini", "phi4-mini"])
def test_phi3_longrope_short_and_long_contexts_match_llama_cpp(tmp_path, n_rot, tied, weight_type):
    """LongRoPE: a context up to original_context_length (256) takes the short factors, a
    longer one the long factors, both with the attn_factor magnitude on the rotated dimensions;
    Phi-4-mini rotates 12 of 16 dimensions (3/4, as its 96 of 128) and ties the LM head. The two
    contexts give different logits (the factors matter), each llama.cpp's."""
    path = write_synthetic_model(tmp_path / "phi.gguf", "phi3", weight_type, vocab_path("phi3"),
                                 n_rot=n_rot, tie_embeddings=tied)
    short = assert_last_position_logits_match(path, n_ctx=256)
    long = assert_last_position_logits_match(path, n_ctx=512)
    assert np.abs(short - long).max() > 0.5 * short.std()


@pytest.mark.parametrize("weight_type", ["F32", "Q8_0", "Q4_0"])
def test_llama3_rope_freqs_match_llama_cpp(tmp_path, weight_type):
    """Llama 3.1's rope_freqs (one divisor per rotated frequency) as llama.cpp applies them."""
    path = write_synthetic_model(tmp_path / "l.gguf", "llama", weight_type, vocab_path("llama"),
                                 llama_rope_freqs=True)
    with_freqs = assert_last_position_logits_match(path)
    plain = assert_last_position_logits_match(
        write_synthetic_model(tmp_path / "p.gguf", "llama", weight_type, vocab_path("llama")))
    assert np.abs(with_freqs - plain).max() > 0.5 * plain.std()


def test_phi3_sliding_window_is_ignored_by_the_plan_and_the_cache(synthetic_model):
    """llama.cpp attends globally in every Phi-3 layer whatever attention.sliding_window says
    (4 here; the logits tests above pass the 4th token), so the KV cache keeps the whole
    context and the memory plan counts all of it."""
    from edgellm.devices.planner import plan_memory
    from edgellm.runtime.generation import Model

    path = synthetic_model("phi3", "Q8_0")
    with GGUFFile(path) as g:
        plan = plan_memory(g, n_ctx=256)
    model = Model(path, plan=plan)
    # 2 layers x 256 positions x (k + v) 2 x 32 wide, f16
    assert plan.kv_bytes == model.net.cache.nbytes == 2 * 256 * 2 * 32 * 2
