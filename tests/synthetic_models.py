"""Write small random-weight GGUF models that llama.cpp loads, for tests (not a test module).

    write_synthetic_model(tmp_path / "m.gguf", "qwen2", "Q4_0",
                          vocab_gguf=llamacpp_models_dir() / "ggml-vocab-qwen2.gguf")

The model is the real architecture at toy size (n_embd 64, n_ff 128, 2 layers; for the K-quants,
whose blocks hold 256 weights, n_embd 256 and n_ff 512) with the real tokenizer
copied from one of llama.cpp's vocab-only GGUFs, so both llama.cpp and edgellm tokenize and run
it, and their logits can be compared. Weights are N(0, 1/row_length) so every matmul keeps
activations around unit scale and the logits come out spread (std around 1), not flat or
saturated; RMSNorm weights are N(1, 0.1), biases N(0, 0.1).

Tensor types follow llama.cpp's quantizer: 1-D tensors (norms, biases) stay F32; every 2-D
weight is `weight_type`. token_embd/output (the bulk of the file, since the vocab is
32000 / 151936 rows) are `embd_type`, which defaults to `weight_type` for the block-quantized
types and to Q8_0 for F32/F16/BF16, keeping files at a few MB (about 2-6 MB for llama's vocab,
6-21 MB for qwen2's; 9-13 MB and 22-32 MB at the K-quants' width). qwen2 and qwen3 tie output
to token_embd by default, as Qwen2/2.5-0.5B and Qwen3-0.6B do. The `gguf` package quantizes
the 32-weight block types; it cannot quantize the K-quants, which edgellm's kernels do with
ggml's reference quantizer (quantize_row_q4_K_ref etc., what llama-quantize runs without an
importance matrix). Unlike llama.cpp's Q4_K_M mix (Q6_K output and half the attn_v/ffn_down),
a Q4_K model here is Q4_K throughout, so each type's kernel is what the test measures.

Each architecture's tensors and keys are the ones llama.cpp's converter writes for it:
qwen3 adds per-head q/k RMS norms and, as Qwen3-0.6B, heads twice as wide as n_embd / n_head
(head_dim 32: q is 128 wide in a 64-wide stream; head_dim 128, q 512 wide, in a 256-wide one);
phi3 stores q, k, v as one attn_qkv and gate, up as one ffn_up (gate rows first), with
LongRoPE: rope_factors_short/long (n_rot / 2 divisors each, random in [1, 1.5] and [1, 8]),
context_length 2048 over an original_context_length of 256 (llama.cpp rounds a context up to
a multiple of 256: n_ctx up to 256 takes the short factors, 512 the long ones) and the
converter's attn_factor sqrt(1 + ln(2048 / 256) / ln 256); and a sliding_window of 4, which
llama.cpp ignores for phi3 (a model that applied it would attend differently past the 4th
token).
llama_rope_freqs gives llama a Llama 3.1 rope_freqs tensor (random divisors in [1, 8]).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT, LlamaFileType

from edgellm import kernels
from edgellm.runtime.gguf_file import GGUFFile

ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3")

# Types gguf.quants.quantize can produce that llama.cpp also runs on CPU; rows a multiple of 32.
WEIGHT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# Types edgellm's kernels quantize (gguf.quants cannot); rows a multiple of 256, so these
# models take the wider K_QUANT_SHAPE.
K_QUANT_TYPES = ("Q4_K", "Q6_K")

# The default widths: the toy shape, and the K-quants' one (every row length a whole number
# of 256-weight blocks: n_embd, n_ff and n_head * head_dim, head_dim 64 as Llama 3.2's).
TOY_SHAPE = dict(n_embd=64, n_ff=128, n_head=4, n_head_kv=2)
K_QUANT_SHAPE = dict(n_embd=256, n_ff=512, n_head=4, n_head_kv=2)


def default_shape(weight_type: str) -> dict[str, int]:
    """n_embd, n_ff, n_head and n_head_kv that write_synthetic_model uses for a weight type."""
    return dict(K_QUANT_SHAPE if weight_type in K_QUANT_TYPES else TOY_SHAPE)


_FILE_TYPES = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16,
    "BF16": LlamaFileType.MOSTLY_BF16, "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1,
    "Q4_K": LlamaFileType.MOSTLY_Q4_K_S, "Q6_K": LlamaFileType.MOSTLY_Q6_K,
}

_ARRAY_ELEMENT_TYPES = {
    np.dtype(np.uint8): VT.UINT8, np.dtype(np.int8): VT.INT8,
    np.dtype(np.uint16): VT.UINT16, np.dtype(np.int16): VT.INT16,
    np.dtype(np.uint32): VT.UINT32, np.dtype(np.int32): VT.INT32,
    np.dtype(np.uint64): VT.UINT64, np.dtype(np.int64): VT.INT64,
    np.dtype(np.float32): VT.FLOAT32, np.dtype(np.float64): VT.FLOAT64,
    np.dtype(np.bool_): VT.BOOL,
}

_tokenizer_cache: dict[tuple[str, int], list[tuple[str, object, VT, VT | None]]] = {}


def tokenizer_metadata(vocab_gguf: str | os.PathLike) -> list[tuple[str, object, VT, VT | None]]:
    """(key, value, type, array element type) of every tokenizer.* key, as stored in the file."""
    path = Path(vocab_gguf)
    cache_key = (str(path.resolve()), path.stat().st_mtime_ns)
    if cache_key not in _tokenizer_cache:
        entries = []
        with GGUFFile(path) as vocab:
            for key, value in vocab.metadata.items():
                if not key.startswith("tokenizer."):
                    continue
                vtype = VT(vocab.value_type(key))
                sub_type = None
                if vtype == VT.ARRAY:
                    if isinstance(value, np.ndarray):
                        sub_type = _ARRAY_ELEMENT_TYPES[value.dtype]
                    elif all(isinstance(v, str) for v in value):
                        sub_type = VT.STRING
                    else:
                        raise ValueError(f"{path}: cannot copy nested array '{key}'")
                entries.append((key, value, vtype, sub_type))
        _tokenizer_cache[cache_key] = entries
    return _tokenizer_cache[cache_key]


_packed_strings: dict[int, tuple[list[str], bytes]] = {}  # id(list) -> (list, packed bytes)


class _BulkArrayWriter(gguf.GGUFWriter):
    """GGUFWriter that packs numeric and string arrays in bulk.

    GGUFWriter packs arrays one element per call, which takes seconds for qwen2's 151936
    tokens and 151387 merges; the bytes written here are the same.
    """

    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
        if vtype != VT.ARRAY or sub_type is None or sub_type == VT.ARRAY:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", sub_type, len(val))
        if sub_type == VT.STRING:
            # the tokenizer lists are cached objects reused by every model: pack each once
            cached = _packed_strings.get(id(val))
            if cached is None or cached[0] is not val:
                u64 = struct.Struct("<Q").pack
                cached = (val, b"".join(u64(len(b)) + b for b in (v.encode() for v in val)))
                _packed_strings[id(val)] = cached
            return head + cached[1]
        dtype = {v: k for k, v in _ARRAY_ELEMENT_TYPES.items()}[sub_type].newbyteorder("<")
        return head + np.asarray(val, dtype=dtype).tobytes()


def _quantize(x: np.ndarray, type_name: str) -> tuple[np.ndarray, QT]:
    """(rows of bytes, or of F32/F16/BF16 values, and the GGML type) of an f32 matrix."""
    qtype = QT[type_name]
    if type_name in K_QUANT_TYPES:
        # blocks are quantized independently: the matrix as one long row (one C call, not
        # 151936) gives the same bytes as row by row
        flat = kernels.quantize(getattr(kernels, type_name), x.reshape(1, -1))
        return flat.reshape(x.shape[0], -1), qtype
    return gguf.quants.quantize(x, qtype), qtype


def write_synthetic_model(
    path: str | os.PathLike,
    arch: str,
    weight_type: str,
    vocab_gguf: str | os.PathLike,
    seed: int = 0,
    n_embd: int | None = None,
    n_layer: int = 2,
    n_head: int | None = None,
    n_head_kv: int | None = None,
    n_ff: int | None = None,
    n_ctx: int | None = None,
    rope_freq_base: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    embd_type: str | None = None,
    tie_embeddings: bool | None = None,
    head_dim: int | None = None,
    n_rot: int | None = None,
    llama_rope_freqs: bool = False,
) -> Path:
    """Write a random-weight `arch` model with `weight_type` 2-D weights; returns the path.
    n_embd, n_ff, n_head, n_head_kv: default_shape(weight_type)'s where not given.
    head_dim: the attention heads' size when it is not n_embd / n_head (written as
    attention.key_length and value_length, as for Gemma or Qwen3; qwen3's default is
    2 * n_embd / n_head).
    n_rot: the rotated dimensions of each head (default all of them; Phi-4-mini rotates 3/4)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, not {arch!r}")
    if weight_type not in WEIGHT_TYPES + K_QUANT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES + K_QUANT_TYPES}, not {weight_type!r}")
    shape = default_shape(weight_type)
    n_embd = shape["n_embd"] if n_embd is None else n_embd
    n_ff = shape["n_ff"] if n_ff is None else n_ff
    n_head = shape["n_head"] if n_head is None else n_head
    n_head_kv = shape["n_head_kv"] if n_head_kv is None else n_head_kv
    if embd_type is None:
        embd_type = "Q8_0" if weight_type in ("F32", "F16", "BF16") else weight_type
    if n_ctx is None:
        n_ctx = 2048 if arch == "phi3" else 256
    if tie_embeddings is None:
        tie_embeddings = arch in ("qwen2", "qwen3")
    if head_dim is None and arch == "qwen3":
        head_dim = 2 * n_embd // n_head
    if n_head % n_head_kv or (head_dim is None and n_embd % n_head):
        raise ValueError("n_embd must divide into n_head heads, n_head into n_head_kv groups")
    own_head_dim = head_dim is not None
    head_dim = head_dim or n_embd // n_head
    n_rot = n_rot or head_dim
    # every row is a whole number of blocks of the types it can take
    block = max(32, *(gguf.GGML_QUANT_SIZES[QT[t]][0] for t in (weight_type, embd_type)))
    for name, n in (("n_embd", n_embd), ("n_ff", n_ff), ("n_head * head_dim", n_head * head_dim)):
        if n % block:
            raise ValueError(f"{name} = {n} must be a multiple of {block}, the quant block size")

    tokenizer = tokenizer_metadata(vocab_gguf)
    n_vocab = len(next(v for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens"))
    rng = np.random.default_rng(seed)
    path = Path(path)

    w = _BulkArrayWriter(str(path), arch)
    w.add_name(f"synthetic {arch} {weight_type}")
    w.add_file_type(_FILE_TYPES[weight_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_rot)
    if own_head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(rope_freq_base)
    w.add_layer_norm_rms_eps(rms_norm_eps)
    w.add_vocab_size(n_vocab)
    if arch == "phi3":
        n_ctx_orig = 256
        w.add_rope_scaling_orig_ctx_len(n_ctx_orig)
        w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(n_ctx / n_ctx_orig) / np.log(n_ctx_orig))))
        w.add_sliding_window(4)
    for key, value, vtype, sub_type in tokenizer:
        w.add_key_value(key, value, vtype, sub_type=sub_type)

    def matrix(name: str, rows: int, row_len: int, type_name: str) -> None:
        # numpy (rows, row_len) is GGUF shape (ne0 = row_len, ne1 = rows)
        x = rng.standard_normal((rows, row_len), dtype=np.float32) / np.float32(np.sqrt(row_len))
        data, qtype = _quantize(x, type_name)
        w.add_tensor(name, data, raw_dtype=qtype)

    def vector(name: str, n: int, mean: float) -> None:
        w.add_tensor(name, mean + 0.1 * rng.standard_normal(n, dtype=np.float32))

    # rope factors come from a generator of their own: with or without them, the other
    # weights are the same
    factor_rng = np.random.default_rng([seed, 1])

    def factors(name: str, high: float) -> None:
        w.add_tensor(name, factor_rng.uniform(1.0, high, n_rot // 2).astype(np.float32))

    matrix("token_embd.weight", n_vocab, n_embd, embd_type)
    if arch == "phi3":
        factors("rope_factors_long.weight", 8.0)
        factors("rope_factors_short.weight", 1.5)
    if llama_rope_freqs:
        factors("rope_freqs.weight", 8.0)
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    for i in range(n_layer):
        blk = f"blk.{i}"
        vector(f"{blk}.attn_norm.weight", n_embd, 1.0)
        if arch == "phi3":  # q, k, v rows in one matrix
            matrix(f"{blk}.attn_qkv.weight", q_dim + 2 * kv_dim, n_embd, weight_type)
        else:
            matrix(f"{blk}.attn_q.weight", q_dim, n_embd, weight_type)
            matrix(f"{blk}.attn_k.weight", kv_dim, n_embd, weight_type)
            matrix(f"{blk}.attn_v.weight", kv_dim, n_embd, weight_type)
        if arch == "qwen2":
            vector(f"{blk}.attn_q.bias", q_dim, 0.0)
            vector(f"{blk}.attn_k.bias", kv_dim, 0.0)
            vector(f"{blk}.attn_v.bias", kv_dim, 0.0)
        if arch == "qwen3":
            vector(f"{blk}.attn_q_norm.weight", head_dim, 1.0)
            vector(f"{blk}.attn_k_norm.weight", head_dim, 1.0)
        matrix(f"{blk}.attn_output.weight", n_embd, q_dim, weight_type)
        vector(f"{blk}.ffn_norm.weight", n_embd, 1.0)
        if arch == "phi3":  # gate rows, then up rows, in one matrix
            matrix(f"{blk}.ffn_up.weight", 2 * n_ff, n_embd, weight_type)
        else:
            matrix(f"{blk}.ffn_gate.weight", n_ff, n_embd, weight_type)
            matrix(f"{blk}.ffn_up.weight", n_ff, n_embd, weight_type)
        matrix(f"{blk}.ffn_down.weight", n_embd, n_ff, weight_type)
    vector("output_norm.weight", n_embd, 1.0)
    if not tie_embeddings:
        matrix("output.weight", n_vocab, n_embd, embd_type)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
