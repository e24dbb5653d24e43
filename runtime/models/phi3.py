"""Phi-3 and Phi-4-mini: Llama's block with the Q, K and V projections stored as one matrix
(attn_qkv) and the gate and up projections as one (ffn_up, gate rows first), rotary
embeddings on the two halves of each head (neox style) with LongRoPE: per-frequency divisors
for short contexts and for long ones (rope_factors_short / rope_factors_long) and a magnitude
factor on the rotated dimensions. Phi-4-mini rotates 3/4 of each head and ties the LM head.

Phi-3-mini's GGUF declares a sliding window (2047); llama.cpp ignores it for this architecture
(attention is global in every layer), and so does this file."""

import dataclasses
import math
from dataclasses import dataclass

from edgellm.kernels import F16, ffi, lib, ptr
from edgellm.errors import ModelFileError
from edgellm.runtime.kv_cache import Batch, KVCache
from edgellm.runtime.layers import Linear, Linears, RunState, Weights, matmul_wsize


@dataclass
class ModelArgs:
    n_vocab: int
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_rot: int
    ffn_dim: int
    eps: float
    rope_base: float
    rope_scale: float
    rope_factors: str | None  # the rope factor tensor this context uses, if the file has one
    attn_factor: float        # LongRoPE's magnitude factor on the rotated dimensions of q and k
    n_ctx_train: int

    @classmethod
    def from_gguf(cls, f, n_ctx: int, a: str = "phi3.") -> "ModelArgs":
        n_head = f.require(a + "attention.head_count", int)
        dim = f.require(a + "embedding_length", int)
        head_dim = f.get(a + "attention.key_length", dim // n_head)
        factor = f.get(a + "rope.scaling.factor", 1.0) if f.get(a + "rope.scaling.type", "linear") == "linear" else 1.0
        n_ctx_train = f.get(a + "context_length", 4096)
        # LongRoPE, as llama.cpp picks it: the long factors once a sequence's context exceeds
        # the one the model was pretrained with, the short ones up to it; Llama 3's
        # rope_freqs, when a file has it, win over both. (llama.cpp first rounds its context
        # up to a multiple of 256; pretrained contexts are multiples of 256 (4096), so the
        # choice is the same for every n_ctx.)
        n_ctx_orig = f.get(a + "rope.scaling.original_context_length", n_ctx_train)
        long_or_short = "rope_factors_long.weight" if n_ctx > n_ctx_orig else "rope_factors_short.weight"
        rope_factors = next((t for t in ("rope_freqs.weight", long_or_short) if t in f.tensors), None)
        return cls(
            n_vocab=len(f.require("tokenizer.ggml.tokens")),
            dim=dim,
            n_layer=f.require(a + "block_count", int),
            n_head=n_head,
            n_kv_head=f.get(a + "attention.head_count_kv", n_head),
            head_dim=head_dim,
            n_rot=f.get(a + "rope.dimension_count", head_dim),
            ffn_dim=f.require(a + "feed_forward_length", int),
            eps=f.get(a + "attention.layer_norm_rms_epsilon", 1e-5),
            rope_base=f.get(a + "rope.freq_base", 10_000.0),
            rope_scale=1.0 / (factor or 1.0),
            rope_factors=rope_factors,
            # the converter writes sqrt(1 + ln(long / short context) / ln(short context));
            # llama.cpp applies it whichever factors it picked
            attn_factor=f.get(a + "rope.scaling.attn_factor", 1.0),
            n_ctx_train=n_ctx_train,
        )


def row_blocks(w: Weights, name: str, n_in: int, n_outs: list[int]) -> list[Linear]:
    """Linears over consecutive blocks of rows of one stored matrix (a fused projection): each
    reads its rows in the mapped file, so one matmul call still serves them all (Linears),
    writing each part into its own buffer. The plan's requantization, keyed by the stored
    name, applies to every part."""
    t = w.gguf.tensor(name)
    if tuple(t.shape) != (n_in, sum(n_outs)):
        raise ModelFileError(f"{w.gguf.path.name}: tensor '{name}' has shape {tuple(t.shape)}, "
                             f"expected {(n_in, sum(n_outs))}")
    parts, start = [], 0
    for n_out in n_outs:
        lo, hi = start * t.row_bytes, (start + n_out) * t.row_bytes
        part = dataclasses.replace(t, name=f"{name}[{start}:{start + n_out}]", shape=(n_in, n_out),
                                   offset=t.offset + lo, n_bytes=hi - lo, data=t.data[lo:hi])
        release = lambda at, n, offset=part.offset: w.gguf.drop_pages(offset + at, n)  # noqa: E731
        parts.append(Linear(part, w.tensor_types.get(name), release))
        start += n_out
    return parts


class Attention:
    def __init__(self, w: Weights, il: int, a: ModelArgs):
        p = f"blk.{il}."
        q_dim, kv_dim = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
        if w.has(p + "attn_qkv.weight"):   # q, k and v rows stacked, as the converter writes them
            self.wq, self.wk, self.wv = row_blocks(w, p + "attn_qkv.weight", a.dim, [q_dim, kv_dim, kv_dim])
        else:
            self.wq = w.linear(p + "attn_q.weight", a.dim, q_dim)
            self.wk = w.linear(p + "attn_k.weight", a.dim, kv_dim)
            self.wv = w.linear(p + "attn_v.weight", a.dim, kv_dim)
        self.wo = w.linear(p + "attn_output.weight", q_dim, a.dim)
        self.qkv = Linears([self.wq, self.wk, self.wv], ("q", "k", "v"))
        # LongRoPE: one divisor per rotated frequency, shared by all layers
        self.freq_factors = w.vector(a.rope_factors, a.n_rot // 2) if a.rope_factors else None
        self.ff = ptr(self.freq_factors) if self.freq_factors is not None else ffi.NULL
        self.il, self.a = il, a
        # Phi scales the queries (not the scores) by 1/sqrt(head_dim), as llama.cpp's graph does
        self.q_scale = 1.0 / math.sqrt(a.head_dim)
        # llama.cpp multiplies rope's cos and sin by the magnitude factor: the rotated
        # dimensions of q and k grow by it, the others (Phi-4-mini's last quarter) do not
        self.m = a.attn_factor
        if self.m != 1.0 and a.n_rot == a.head_dim:   # then it folds into the query scale
            self.q_scale *= self.m

    def __call__(self, s: RunState, batch: Batch, n: int) -> None:
        a = self.a
        self.qkv(s.xb.p, s, n, s.ws.p)   # q (n, n_head * head_dim); k, v (n, n_kv_head * head_dim)
        lib.el_rope(s.q.p, n, a.n_head, a.head_dim, a.n_rot, batch.pos.p, a.rope_base, a.rope_scale, self.ff, 1)
        lib.el_rope(s.k.p, n, a.n_kv_head, a.head_dim, a.n_rot, batch.pos.p, a.rope_base, a.rope_scale, self.ff, 1)
        if self.m != 1.0:
            if a.n_rot == a.head_dim:
                lib.el_scale(s.k.p, self.m, n * a.n_kv_head * a.head_dim)
            else:   # in place on the rotated slice of each head: views, no copies
                s.q.a[:n].reshape(n, a.n_head, a.head_dim)[:, :, :a.n_rot] *= self.m
                s.k.a[:n].reshape(n, a.n_kv_head, a.head_dim)[:, :, :a.n_rot] *= self.m
        lib.el_scale(s.q.p, self.q_scale, n * a.n_head * a.head_dim)
        batch.attend(self.il, s.q.p, s.k.p, s.v.p, a.n_head, a.n_kv_head, a.head_dim, 1.0, s.att.p)
        self.wo(s.att.p, s.xb2.p, n, s.ws.p)


class MLP:
    def __init__(self, w: Weights, il: int, a: ModelArgs):
        p = f"blk.{il}."
        # ffn_up holds the gate's rows, then the up projection's (llama.cpp's swiglu halves)
        self.gate, self.up = row_blocks(w, p + "ffn_up.weight", a.dim, [a.ffn_dim, a.ffn_dim])
        self.down = w.linear(p + "ffn_down.weight", a.ffn_dim, a.dim)
        self.gate_up = Linears([self.gate, self.up], ("hb", "hb2"))
        self.ffn_dim = a.ffn_dim

    def __call__(self, s: RunState, n: int) -> None:
        self.gate_up(s.xb.p, s, n, s.ws.p)   # gate -> hb, up -> hb2
        lib.el_silu_mul(s.hb.p, s.hb2.p, n * self.ffn_dim)   # hb = silu(gate) * up
        self.down(s.hb.p, s.xb2.p, n, s.ws.p)


class Block:
    def __init__(self, w: Weights, il: int, a: ModelArgs):
        p = f"blk.{il}."
        self.attn_norm = w.norm(p + "attn_norm.weight", a.dim, a.eps)
        self.attn = Attention(w, il, a)
        self.ffn_norm = w.norm(p + "ffn_norm.weight", a.dim, a.eps)
        self.mlp = MLP(w, il, a)
        self.dim = a.dim

    def __call__(self, s: RunState, batch: Batch, n: int, n_out: int) -> None:
        # x = x + attn(norm(x));  x = x + mlp(norm(x))
        # n_out: the rows that go on after attention (fewer in the last layer: keep_outputs)
        self.attn_norm(s.x.p, s.xb.p, n)
        self.attn(s, batch, n)
        n = s.keep_outputs(n, n_out, batch.out_rows)
        if n == 0:
            return
        lib.el_add(s.x.p, s.xb2.p, n * self.dim)
        self.ffn_norm(s.x.p, s.xb.p, n)
        self.mlp(s, n)
        lib.el_add(s.x.p, s.xb2.p, n * self.dim)


class Model:
    def __init__(self, gguf, n_ctx: int, n_batch: int, tensor_types: dict | None = None, kv_type: int = F16,
                 n_seq: int = 1):
        # n_ctx is each sequence's context (one KVCache each): what picks the rope factors
        self.args = a = ModelArgs.from_gguf(gguf, n_ctx)
        w = Weights(gguf, tensor_types)
        self.layers = [Block(w, il, a) for il in range(a.n_layer)]
        self.output_norm = w.norm("output_norm.weight", a.dim, a.eps)
        # the LM head; tied models reuse the embedding table (the plan may requantize it)
        self.output = w.head("output.weight" if w.has("output.weight") else "token_embd.weight",
                             a.dim, a.n_vocab)
        # the lookup table as stored (after the head: a requantized head released it)
        self.token_embd = w.embedding("token_embd.weight", a.dim, a.n_vocab)
        kv_dim = a.n_kv_head * a.head_dim
        # one KV cache per sequence run at once (the plan's parallel slots); no window (above)
        self.caches = [KVCache(n_ctx, n_batch, [kv_dim] * a.n_layer, [0] * a.n_layer, kv_type, a.head_dim)
                       for _ in range(n_seq)]
        self.cache = self.caches[0]
        self.batch = Batch(n_batch)
        linears = [self.output] + [lin for b in self.layers for lin in
                                   (b.attn.qkv, b.attn.wo, b.mlp.gate_up, b.mlp.down)]
        self.state = RunState(n_batch, a.dim, a.n_head * a.head_dim, kv_dim, a.ffn_dim,
                              a.n_vocab, matmul_wsize(linears, n_batch), n_seq)

    def forward(self, batch: Batch):
        """Run the batch's tokens (state.tokens) at their sequences' next positions; returns
        the logits of the batch's output rows, (n_out, n_vocab), a view of state.logits, or
        None when no row wants them."""
        s, n = self.state, batch.n
        batch.begin()
        self.token_embd.rows(s.tokens.p, n, s.x.p)
        layers = self.layers
        for il in range(len(layers) - 1):   # the hot loop
            layers[il](s, batch, n, n)
        # the last layer goes on after attention with the rows whose logits are wanted
        layers[-1](s, batch, n, batch.n_out)
        batch.end()
        if not batch.n_out:
            return None
        self.output_norm(s.x.p, s.xb.p, batch.n_out)
        self.output(s.xb.p, s.logits.p, batch.n_out, s.ws.p)
        return s.logits.a[:batch.n_out]
