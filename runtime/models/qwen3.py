"""Qwen 3 (dense): Llama's block with QK-norm (an RMS norm over each head of q and k, before
rope), no biases, rotary embeddings on the two halves of each head (neox style), and heads
that need not be dim / n_head wide (Qwen3-0.6B: 16 heads of 128 in a 1024-wide stream).
Small models tie the LM head."""

import math
from dataclasses import dataclass

from edgellm.kernels import F16, ffi, lib
from edgellm.runtime.kv_cache import Batch, KVCache
from edgellm.runtime.layers import Linears, RunState, Weights, matmul_wsize


@dataclass
class ModelArgs:
    n_vocab: int
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    ffn_dim: int
    eps: float
    rope_base: float
    rope_scale: float
    n_ctx_train: int

    @classmethod
    def from_gguf(cls, f, a: str = "qwen3.") -> "ModelArgs":
        n_head = f.require(a + "attention.head_count", int)
        dim = f.require(a + "embedding_length", int)
        factor = f.get(a + "rope.scaling.factor", 1.0) if f.get(a + "rope.scaling.type", "linear") == "linear" else 1.0
        return cls(
            n_vocab=len(f.require("tokenizer.ggml.tokens")),
            dim=dim,
            n_layer=f.require(a + "block_count", int),
            n_head=n_head,
            n_kv_head=f.get(a + "attention.head_count_kv", n_head),
            # every dimension of a head rotates (llama.cpp asserts n_rot == head_dim for qwen3)
            head_dim=f.get(a + "attention.key_length", dim // n_head),
            ffn_dim=f.require(a + "feed_forward_length", int),
            eps=f.get(a + "attention.layer_norm_rms_epsilon", 1e-6),
            rope_base=f.get(a + "rope.freq_base", 1_000_000.0),
            rope_scale=1.0 / (factor or 1.0),
            n_ctx_train=f.get(a + "context_length", 40960),
        )


class Attention:
    def __init__(self, w: Weights, il: int, a: ModelArgs):
        p = f"blk.{il}."
        q_dim, kv_dim = a.n_head * a.head_dim, a.n_kv_head * a.head_dim
        self.wq = w.linear(p + "attn_q.weight", a.dim, q_dim)
        self.wk = w.linear(p + "attn_k.weight", a.dim, kv_dim)
        self.wv = w.linear(p + "attn_v.weight", a.dim, kv_dim)
        self.wo = w.linear(p + "attn_output.weight", q_dim, a.dim)
        self.qkv = Linears([self.wq, self.wk, self.wv], ("q", "k", "v"))
        self.q_norm = w.norm(p + "attn_q_norm.weight", a.head_dim, a.eps)
        self.k_norm = w.norm(p + "attn_k_norm.weight", a.head_dim, a.eps)
        self.il, self.a = il, a
        self.scale = 1.0 / math.sqrt(a.head_dim)

    def __call__(self, s: RunState, batch: Batch, n: int) -> None:
        a = self.a
        self.qkv(s.xb.p, s, n, s.ws.p)   # q (n, n_head * head_dim); k, v (n, n_kv_head * head_dim)
        # QK-norm: an RMS norm over each head's vector, before rope
        self.q_norm(s.q.p, s.q.p, n * a.n_head)
        self.k_norm(s.k.p, s.k.p, n * a.n_kv_head)
        lib.el_rope(s.q.p, n, a.n_head, a.head_dim, a.head_dim, batch.pos.p, a.rope_base, a.rope_scale, ffi.NULL, 1)
        lib.el_rope(s.k.p, n, a.n_kv_head, a.head_dim, a.head_dim, batch.pos.p, a.rope_base, a.rope_scale, ffi.NULL, 1)
        batch.attend(self.il, s.q.p, s.k.p, s.v.p, a.n_head, a.n_kv_head, a.head_dim,
                     self.scale, s.att.p)
        self.wo(s.att.p, s.xb2.p, n, s.ws.p)


class MLP:
    def __init__(self, w: Weights, il: int, a: ModelArgs):
        p = f"blk.{il}."
        self.gate = w.linear(p + "ffn_gate.weight", a.dim, a.ffn_dim)
        self.up = w.linear(p + "ffn_up.weight", a.dim, a.ffn_dim)
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
        self.args = a = ModelArgs.from_gguf(gguf)
        w = Weights(gguf, tensor_types)
        self.layers = [Block(w, il, a) for il in range(a.n_layer)]
        self.output_norm = w.norm("output_norm.weight", a.dim, a.eps)
        # the LM head; tied models reuse the embedding table (the plan may requantize it)
        self.output = w.head("output.weight" if w.has("output.weight") else "token_embd.weight",
                             a.dim, a.n_vocab)
        # the lookup table as stored (after the head: a requantized head released it)
        self.token_embd = w.embedding("token_embd.weight", a.dim, a.n_vocab)
        kv_dim = a.n_kv_head * a.head_dim
        # one KV cache per sequence run at once (the plan's parallel slots)
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
