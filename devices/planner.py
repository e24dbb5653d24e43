"""The memory planner: fit a GGUF model into a memory budget on a device.

What a running model holds, and how the plan counts it (peak resident set, bytes):

  mapped weights   file pages of the mmapped GGUF. Clean and evictable, but every matmul
                   weight is read for every token, so in steady state all of them are resident
                   and counted in RSS. An untied token_embd is only looked up by row: just the
                   rows of the tokens seen are touched.
  anonymous        requantized tensors (their source pages are no longer touched; the runtime
                   drops them with MADV_DONTNEED as it converts, or they would stay in RSS),
                   the KV cache, compute buffers (activations for a batch, logits,
                   matmul and attention scratch, the sampler's temporaries), the transient
                   chunk used while requantizing at load, and the process itself: Python,
                   numpy, cffi and our modules, the vocabulary's arrays and tables, and the GGUF
                   header pages that were parsed.

Continuous batching decodes several sequences together ("parallel slots"); each slot holds its
own KV cache of the plan's context and its own row of logits, so those two scale with the
slot count while the weights, activations and scratch are shared.

The levers, tried in this order until the total fits the budget:
  0. a smaller prompt batch (activations and the sliding-window KV slots scale with it), which
     costs only prompt-processing speed;
  1. requantize tensor groups on load, most bytes saved per unit of quality lost first
     (quality = the relative error a type adds, REL_MSE, times the group's size and
     sensitivity);
  2. the KV cache type (F16 -> Q8_0), then fewer parallel slots, then a shorter context
     (only when the caller did not ask for a context length): a plan has more than one slot
     only at the context a single sequence would get, with its weights resident;
  3. stream the weights from storage through mmap instead of keeping them resident (the
     runtime reads a layer ahead with MADV_WILLNEED and drops it after use with
     MADV_DONTNEED, so only a window of layers is resident);
and the threads are the device's big cores. When nothing fits, plan_memory raises
MemoryBudgetError naming the smallest budget that would.

The planner is pure: it reads the GGUF header and tensor directory and the device's numbers;
applying the plan (requantizing, allocating the cache) is the runtime's job.

Checked against the runtime on an x86_64 host (Gemma 3 270M, ctx 2048, 128 tokens generated):
unlimited, plan 369.8 MiB vs peak RSS 354.1 MiB; 300M (embedding requantized to Q5_0), plan
297.7 MiB vs 284 MiB resident once the source pages were dropped (455 MiB peak without).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field

from edgellm.devices.detect import SAFETY_MARGIN_FRACTION, SAFETY_MARGIN_MIN, DeviceInfo, detect_device
from edgellm.devices.overhead import ESTIMATES, process_overhead
from edgellm.devices.profiles import DeviceProfile
from edgellm.errors import EdgeLLMError
from edgellm.kernels.ggml_types import block_size, row_bytes, type_id, type_name

__all__ = ["Plan", "TensorGroupPlan", "MemoryBudgetError", "plan_memory", "parse_size",
           "format_size", "profile_budget", "UNLIMITED", "REL_MSE", "REQUANT_TYPES",
           "KV_TYPES"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

UNLIMITED = sys.maxsize  # a budget with no limit (parse_size("unlimited"))

# Relative squared error sum((q(x) - x)^2) / sum(x^2) of each type on N(0, 1) rows of 4096,
# measured with our own reference quantizers (kernels/quants.c, bit-exact with ggml's
# quantize_row_*_ref, no importance matrix). Real weights come out 1.1-1.5x higher (heavier
# tails) but in the same order, which is what the ranking needs.
REL_MSE: dict[str, float] = {
    "F32": 0.0, "F16": 4.3e-8, "BF16": 2.8e-6, "Q8_0": 2.87e-5, "Q6_K": 3.14e-4,
    "Q5_K": 1.30e-3, "Q5_1": 1.43e-3, "Q5_0": 1.83e-3, "Q4_K": 5.08e-3, "Q4_1": 6.11e-3,
    "Q4_0": 7.39e-3, "Q3_K": 2.28e-2, "Q2_K": 8.80e-2,
}

# Types the planner may requantize to, and the KV cache types it may choose (first = default).
# Nothing below 4.5 bits per weight: Q3_K adds 4.5x the error of Q4_K.
REQUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0")
KV_TYPES = ("F16", "Q8_0")

# How much a tensor's error costs, relative to an ordinary matmul weight. llama.cpp's mixtures
# (llama_tensor_get_type for Q4_K_M) spend extra bits on attn_v / ffn_down, which write the
# residual stream, and on the LM head, whose error lands directly on the logits. Ours
# recomputes a requantized head's top 16 logits from the stored rows (runtime/layers.py
# LMHead: greedy top-1 kept on 256/256 positions even at Q4_0), so only the tail of the
# distribution sees the head's error: it costs half an ordinary weight's.
SENSITIVITY = {"output": 0.5, "attn_v": 1.5, "ffn_down": 1.5}

DEFAULT_CTX = 4096  # the runtime's default: min(4096, the model's context_length)
MIN_AUTO_CTX = 512  # the planner shortens an unrequested context down to this, no further
DEFAULT_BATCH = 512  # prompt tokens per forward pass, as runtime/generation.py
MIN_AUTO_BATCH = 32  # the planner shrinks an unrequested batch down to this, no further
AUTO_PARALLEL = (4, 2, 1)  # slot counts tried, most first, when the caller leaves it to the plan

# The process without a model (the interpreter, numpy, cffi, the kernels, our modules; for
# `serve` also the services and the HTTP server stack) is measured on this machine by
# devices/overhead.py when planning for it, and taken from its ESTIMATES for another board.
# Not counted for serve: what connections buffer while a request or reply is under way, at
# most 64 KiB each way per connection (http_api.CONNECTION_BUFFER_BYTES; more spills to a
# temporary file), so 8 MiB at the default 64 connections all sending at once.
# The vocabulary: GGUFFile keeps a vocabulary's tokens and a BPE vocabulary's merges as offsets
# into the mapping (int32), and the tokenizer's text -> id lookups are open-addressing tables of
# int32 slots (StringArray); the scores and token types are views of the header's pages, and
# the tokenizer adds token attributes (uint16), its special tokens and its caches. Measured
# (anonymous RSS after loading the header and the tokenizer and one encode, the C heap trimmed
# as the runtime trims it after a load): Gemma 3 (262144 tokens) 5.0 MiB, Llama 3 BPE (128256
# tokens, 280147 merges) 8.8, Qwen2 (151936 + 151387) 7.5, Llama 2 SPM (32000) 2.4: within
# 2 MiB + 20 B per token and merge. (Python str objects and dicts cost 190 B per token.)
VOCAB_FIXED_BYTES = 2 * MiB
VOCAB_BYTES_PER_STRING = 20
# Requantizing converts this many rows at a time through an f32 temporary
# (runtime/layers.py _REQUANT_ROWS).
REQUANT_CHUNK_ROWS = 4096
# Streaming reads the LM head in chunks of this many bytes rather than all at once.
STREAM_CHUNK = 32 * MiB
PAGE = 4 * KiB

_BLK = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight)?$")


class MemoryBudgetError(EdgeLLMError):
    """The model cannot fit the budget with any plan; `min_budget` is the smallest that fits."""

    def __init__(self, message: str, min_budget: int):
        super().__init__(message)
        self.min_budget = min_budget


# -- sizes ------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(ib|b|)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


# Rows of logits a speculated decode step asks for (runtime/speculation.py's
# SPECULATION_ROWS: the token evaluated and the proposals after it).
SPECULATION_ROWS = 6


def parse_size(text: str | int) -> int:
    """Bytes from "512M", "1G", "1.5GiB", "800MB", "123456" (units are binary: 1G = 1024 MiB,
    as memory is sold), or UNLIMITED for "unlimited", "none", "max" or "inf"."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if s.lower() in ("unlimited", "none", "max", "inf"):
        return UNLIMITED
    m = _SIZE.match(s)
    if not m or (m.group(3).lower() == "ib" and not m.group(2)):
        raise EdgeLLMError(f"invalid size '{text}': use a number with an optional unit K, M, G "
                           f"or T (binary, 1G = 1024M), e.g. 512M or 1.5G, or 'unlimited'")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise EdgeLLMError(f"invalid size '{text}': must be at least 1 byte")
    return value


def format_size(n: int | float) -> str:
    if n >= UNLIMITED:
        return "unlimited"
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:.1f} MiB"
    if abs(n) >= KiB:
        return f"{n / KiB:.1f} KiB"
    return f"{int(n)} B"


def profile_budget(profile: DeviceProfile, ram: int | None = None) -> int:
    """Default budget on a board we are not running on: its RAM (the smallest option unless
    given) less what a stock OS keeps, less the safety margin."""
    ram = ram or profile.ram_options[0]
    usable = max(0, ram - profile.os_reserved)
    return max(0, usable - max(SAFETY_MARGIN_MIN, int(usable * SAFETY_MARGIN_FRACTION)))


# -- types --------------------------------------------------------------------------------------

def _nbytes(name: str, n_elements: int) -> int:
    return row_bytes(type_id(name), n_elements)


def _fits_blocks(name: str, row: int) -> bool:
    return row % block_size(type_id(name))[0] == 0


# -- the model's shape --------------------------------------------------------------------------

@dataclass
class _Group:
    """Tensors of one kind and source type, requantized together."""

    name: str  # "token_embd (tied output)", "blk.*.ffn_down"
    kind: str  # "ffn_down", "output", "embedding", "vector"
    source: str  # type name
    tensors: list[tuple[str, int, int]]  # (name, n_elements, row length)
    sensitivity: float
    requantizable: bool
    chosen: str = ""
    layers: set[int] = field(default_factory=set)

    def __post_init__(self):
        self.chosen = self.chosen or self.source

    @property
    def n_elements(self) -> int:
        return sum(n for _, n, _ in self.tensors)

    def nbytes(self, type_name: str | None = None) -> int:
        t = type_name or self.chosen
        return sum(_nbytes(t, n) for _, n, _ in self.tensors)

    def loss(self, type_name: str) -> float:
        if type_name == self.source:
            return 0.0
        return self.sensitivity * self.n_elements * REL_MSE.get(type_name, 1.0)

    def targets(self, allowed: tuple[str, ...]) -> list[str]:
        if not self.requantizable:
            return []
        src_bytes = self.nbytes(self.source)
        return [t for t in allowed
                if all(_fits_blocks(t, row) for _, _, row in self.tensors)
                and self.nbytes(t) < src_bytes]


@dataclass
class _Shape:
    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: list[int]  # per layer
    head_k: int
    head_v: int
    n_ff: int
    n_vocab: int
    context_length: int
    windows: list[int]  # per layer, 0 = global attention
    header_bytes: int
    groups: list[_Group]
    tied: bool
    n_merges: int = 0  # a BPE vocabulary's merges

    @classmethod
    def from_gguf(cls, gguf) -> _Shape:
        md = gguf.metadata
        arch = str(md.get("general.architecture", ""))

        def get(key, default=None):
            return md.get(f"{arch}.{key}", default)

        n_layer = int(get("block_count", 0))
        n_embd = int(get("embedding_length", 0))
        n_head = _max_int(get("attention.head_count", 1))
        kv = get("attention.head_count_kv", n_head)
        n_head_kv = [int(x) for x in kv] if _is_seq(kv) else [int(kv)] * n_layer
        head_k = int(get("attention.key_length", n_embd // max(n_head, 1)))
        head_v = int(get("attention.value_length", head_k))
        n_ff = _max_int(get("feed_forward_length", 4 * n_embd))
        tokens = md.get("tokenizer.ggml.tokens")
        embd = gguf.tensors.get("token_embd.weight")
        n_vocab = len(tokens) if tokens is not None else (embd.shape[1] if embd else 0)
        window = int(get("attention.sliding_window", 0) or 0)
        windows = [window if window and _is_local_layer(arch, il) else 0
                   for il in range(n_layer)]
        tied = "output.weight" not in gguf.tensors
        header = int(getattr(gguf, "data_offset", 0) or 0)
        name = str(md.get("general.name") or os.path.basename(str(getattr(gguf, "path", ""))))
        return cls(name, arch, n_layer, n_embd, n_head, n_head_kv, head_k, head_v, n_ff,
                   n_vocab, int(get("context_length", DEFAULT_CTX)), windows, header,
                   _group_tensors(gguf.tensors, tied), tied, len(md.get("tokenizer.ggml.merges") or ()))

    @property
    def kv_row_elems(self) -> list[int]:
        """(K + V) elements per cached position, per layer."""
        return [h * (self.head_k + self.head_v) for h in self.n_head_kv]

    def kv_slots(self, n_ctx: int, n_batch: int) -> list[int]:
        # as runtime/kv_cache.py: a windowed layer keeps a ring of window + n_batch slots
        return [min(n_ctx, w + n_batch) if w else n_ctx for w in self.windows]


def _is_seq(x) -> bool:
    return hasattr(x, "__len__") and not isinstance(x, (str, bytes))


def _max_int(x) -> int:
    return int(max(x)) if _is_seq(x) else int(x)


def _is_local_layer(arch: str, il: int) -> bool:
    """Whether layer il uses the sliding window (llama.cpp src/llama-model.cpp)."""
    if arch == "gemma3":
        return il % 6 != 5  # five local layers, then one global
    if arch == "gemma2":
        return il % 2 == 0
    if arch == "phi3":
        return False  # Phi-3 GGUFs declare a window (2047) that llama.cpp and edgellm ignore
    return True  # models that declare a window use it everywhere (mistral v0.1)


def _group_tensors(tensors: dict, tied: bool) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for name, t in tensors.items():
        shape = tuple(int(d) for d in t.shape)
        n = math.prod(shape)
        src = type_name(t.type)
        m = _BLK.match(name)
        if len(shape) < 2:
            kind, label = "vector", "norms and other vectors"
        elif name == "token_embd.weight":
            kind = "output" if tied else "embedding"
            label = "token_embd (tied output)" if tied else "token_embd (lookup)"
        elif name == "output.weight":
            kind, label = "output", "output"
        elif m:
            kind = m.group(2)
            label = f"blk.*.{kind}"
        else:
            kind = label = name.removesuffix(".weight")
        key = (label, src)
        if key not in groups:
            # A lookup table is only touched by row; requantizing it would make all of it
            # resident, so it stays as it is. Vectors are tiny and often need full precision.
            requant = kind not in ("vector", "embedding")
            groups[key] = _Group(label, kind, src, [], SENSITIVITY.get(kind, 1.0), requant)
        g = groups[key]
        g.tensors.append((name, n, shape[0]))
        if m:
            g.layers.add(int(m.group(1)))
    return sorted(groups.values(), key=lambda g: -g.nbytes())


# -- the plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorGroupPlan:
    name: str
    n_tensors: int
    source_type: str
    chosen_type: str
    source_bytes: int
    bytes: int  # at the chosen type
    memory: str  # "mmap", "anon (requantized at load)", "stream", "rows touched"
    resident_bytes: int  # what the plan counts for it


@dataclass
class Plan:
    model: str
    arch: str
    device: str  # profile name
    device_title: str
    groups: list[TensorGroupPlan]
    tensor_types: dict[str, int]  # tensor name -> ggml type to requantize to at load
    stream_window: int  # mapped bytes resident while streaming (0 when resident)
    kv_type: str
    n_ctx: int
    n_batch: int
    parallel: int  # sequences decoded together, each with its own KV cache and logits row
    kv_bytes: int  # every slot's KV cache: kv_bytes_per_slot x parallel
    kv_detail: str  # one slot's geometry
    buffers: dict[str, int]
    overhead: dict[str, int]
    total: int
    budget: int  # UNLIMITED for no limit
    threads: int
    offload: str  # "resident" or "stream"
    mlock: bool
    bytes_per_token: int  # weights and KV read from memory per decoded token
    streamed_per_token: int  # of which read from storage (offload == "stream")
    mem_bandwidth_gbs: float
    storage_mbs: float
    sustained_fraction: float
    quality_cost: float  # added relative squared error, weighted by size and sensitivity
    notes: list[str] = field(default_factory=list)

    @property
    def weights_bytes(self) -> int:
        return sum(g.resident_bytes for g in self.groups) + self.stream_window

    @property
    def kv_bytes_per_slot(self) -> int:
        return self.kv_bytes // self.parallel

    @property
    def anon_weights_bytes(self) -> int:
        return sum(g.bytes for g in self.groups if g.chosen_type != g.source_type)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    @property
    def tokens_per_s(self) -> float:
        """Memory-bound decode estimate: bytes read per token over the bandwidth (and over
        the storage speed for the part streamed from storage)."""
        from_ram = self.bytes_per_token - self.streamed_per_token
        seconds = from_ram / (self.mem_bandwidth_gbs * 1e9)
        if self.streamed_per_token:
            seconds += self.streamed_per_token / (self.storage_mbs * 1e6)
        return 1.0 / seconds if seconds > 0 else float("inf")

    @property
    def tokens_per_s_sustained(self) -> float:
        return self.tokens_per_s * self.sustained_fraction

    def explain(self) -> str:
        w = 28
        lines = [f"plan for {self.model} ({self.arch}) on {self.device_title} [{self.device}]",
                 "",
                 f"  {'tensor group':<{w}} {'n':>4}  {'source':<6} -> {'chosen':<6} "
                 f"{'bytes':>11}  memory"]
        for g in self.groups:
            lines.append(f"  {g.name:<{w}} {g.n_tensors:>4}  {g.source_type:<6} -> "
                         f"{g.chosen_type:<6} {format_size(g.bytes):>11}  {g.memory}")
        if self.stream_window:
            lines.append(f"  {'stream window':<{w}} {'':>4}  {'':<6}    {'':<6} "
                         f"{format_size(self.stream_window):>11}  in use + read ahead")
        lines.append(f"  {'weights counted':<{w}} {'':>4}  {'':<6}    {'':<6} "
                     f"{format_size(self.weights_bytes):>11}")
        lines.append("")
        lines.append(f"  {'KV cache':<{w}} {self.kv_type}, ctx {self.n_ctx}: "
                     f"{format_size(self.kv_bytes)} ({self.kv_detail})")
        lines.append(f"  {'buffers':<{w}} {format_size(sum(self.buffers.values()))}: "
                     + ", ".join(f"{k} {format_size(v)}" for k, v in self.buffers.items() if v))
        lines.append(f"  {'parallel slots':<{w}} {self.parallel}: KV cache {self.parallel} x "
                     f"{format_size(self.kv_bytes_per_slot)}, logits {self.parallel} x "
                     f"{format_size(self.buffers['logits'] // self.parallel)}")
        lines.append(f"  {'overhead':<{w}} {format_size(sum(self.overhead.values()))}: "
                     + ", ".join(f"{k} {format_size(v)}" for k, v in self.overhead.items()))
        if self.budget >= UNLIMITED:
            verdict = "no budget"
        else:
            spare = self.budget - self.total
            verdict = (f"of {format_size(self.budget)} budget, {format_size(spare)} spare"
                       if spare >= 0 else
                       f"OVER the {format_size(self.budget)} budget by {format_size(-spare)}")
        lines.append(f"  {'total (peak RSS)':<{w}} {format_size(self.total)} {verdict}")
        lines.append("")
        mode = {"resident": "weights resident" + (" (mlock)" if self.mlock else " (mmap)"),
                "stream": "weights streamed from storage (mmap + madvise)"}[self.offload]
        lines.append(f"  threads {self.threads}, {mode}, prompt batch {self.n_batch}")
        src = f"{format_size(self.bytes_per_token)} read per token at " \
              f"{self.mem_bandwidth_gbs:g} GB/s"
        if self.streamed_per_token:
            src += f", {format_size(self.streamed_per_token)} of it from storage at " \
                   f"{self.storage_mbs:g} MB/s"
        throttled = (f"; ~{self.tokens_per_s_sustained:.1f} when thermally throttled"
                     if self.sustained_fraction < 1 else "")
        lines.append(f"  decode ~{self.tokens_per_s:.1f} tokens/s ({src}){throttled}")
        if self.notes:
            lines.append("")
            lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


# -- planning -------------------------------------------------------------------------------------

@dataclass
class _State:
    kv_type: str
    n_ctx: int
    n_batch: int
    offload: str = "resident"
    parallel: int = 1


class _Planner:
    def __init__(self, shape: _Shape, threads: int, logits_rows: int, process: tuple[str, int]):
        self.s = shape
        self.threads = threads
        self.logits_rows = logits_rows
        self.process = process  # (what it is, bytes): the process before it holds a model

    def kv(self, st: _State) -> tuple[int, str]:
        s = self.s
        slots = s.kv_slots(st.n_ctx, st.n_batch)
        per_sequence = sum(_nbytes(st.kv_type, n * e) for n, e in zip(slots, s.kv_row_elems))
        n_local = sum(1 for w in s.windows if w)
        if n_local:
            detail = (f"{s.n_layer - n_local} global layers x {st.n_ctx} slots, {n_local} "
                      f"sliding-window layers x {min(st.n_ctx, max(s.windows) + st.n_batch)}")
        else:
            detail = f"{s.n_layer} layers x {st.n_ctx} slots"
        return per_sequence * st.parallel, detail

    def kv_read_per_token(self, st: _State) -> int:
        """KV bytes attention reads for one token at a full context."""
        s = self.s
        slots = [min(st.n_ctx, w) if w else st.n_ctx for w in s.windows]
        return sum(_nbytes(st.kv_type, n * e) for n, e in zip(slots, s.kv_row_elems))

    def buffers(self, st: _State) -> dict[str, int]:
        s, b = self.s, st.n_batch
        hk_q, hv_q = s.n_head * s.head_k, s.n_head * s.head_v
        kvk, kvv = max(s.n_head_kv) * s.head_k, max(s.n_head_kv) * s.head_v
        # per batch row, f32: residual x, normed xb, attention projection out (n_embd each);
        # q (n_head * head_k), k, v, attention out (n_head * head_v); ffn gate and up (n_ff)
        per_row = 3 * s.n_embd + hk_q + kvk + kvv + hv_q + 2 * s.n_ff
        widest = max(s.n_embd, s.n_ff, hv_q)
        slots = max(s.kv_slots(st.n_ctx, b))
        requant = self._requant_scratch()
        # The batch's b tokens are shared out among the parallel slots, so only the logits
        # (a row per slot) grow with them; the sampler handles one slot at a time. A
        # speculated decode step wants the logits of SPECULATION_ROWS rows.
        logits_rows = st.parallel * self.logits_rows
        return {
            "activations": b * per_row * 4,
            "logits": logits_rows * s.n_vocab * 4,
            "speculation": max(0, SPECULATION_ROWS - logits_rows) * s.n_vocab * 4,
            # activations quantized to 8 bits for the dot products: (b, widest) Q8 blocks
            "matmul scratch": b * (widest // 32 + 1) * 36,
            # per thread, the f32 scores of one work item: up to 64 queries (QUERIES_PER_ITEM
            # in kernels/attention.c) x the slots they see
            "attention scratch": self.threads * 64 * slots * 4,
            # sampling sorts and normalises a copy of the logits: values and int64 indices
            "sampler": s.n_vocab * 16,
            "requantize scratch": requant,
        }

    def _requant_scratch(self) -> int:
        changed = [g for g in self.s.groups if g.chosen != g.source]
        if not changed:
            return 0
        # (chunk rows, row) f32 plus the chunk's quantized rows
        scratch = 0
        for g in changed:
            for _, n, row in g.tensors:
                rows = min(REQUANT_CHUNK_ROWS, n // row)
                scratch = max(scratch, rows * row * 4 + _nbytes(g.chosen, rows * row))
        return scratch

    def overhead(self) -> dict[str, int]:
        return {self.process[0]: self.process[1],
                "vocabulary": VOCAB_FIXED_BYTES + (self.s.n_vocab + self.s.n_merges) * VOCAB_BYTES_PER_STRING,
                "GGUF header": self.s.header_bytes}

    def weight_rows(self, st: _State) -> list[TensorGroupPlan]:
        rows = []
        for g in self.s.groups:
            nbytes = g.nbytes()
            if g.chosen != g.source:
                memory, resident = "anon (requantized at load)", nbytes
            elif g.kind == "embedding":
                # rows of the tokens in the context, each at least a page
                row_bytes = nbytes // max(1, sum(n // row for _, n, row in g.tensors))
                resident = min(nbytes, st.n_ctx * max(row_bytes, PAGE))
                memory = "rows touched (mmap)"
            elif st.offload == "stream":
                memory, resident = "stream", 0
            else:
                memory, resident = "mmap", nbytes
            rows.append(TensorGroupPlan(g.name, len(g.tensors), g.source, g.chosen,
                                        g.nbytes(g.source), nbytes, memory, resident))
        return rows

    def stream_window(self) -> int:
        """Resident mapped bytes while streaming: the unit in use and the one read ahead."""
        per_layer: dict[int, int] = {}
        other = 0
        for g in self.s.groups:
            if g.chosen != g.source or g.kind == "embedding":
                continue
            for name, n, _ in g.tensors:
                m = _BLK.match(name)
                if m:
                    il = int(m.group(1))
                    per_layer[il] = per_layer.get(il, 0) + _nbytes(g.chosen, n)
                else:  # the LM head and the like, read in chunks
                    other = max(other, min(_nbytes(g.chosen, n), STREAM_CHUNK))
        return 2 * max([other, *per_layer.values()])

    def total(self, st: _State) -> int:
        weights = sum(r.resident_bytes for r in self.weight_rows(st))
        if st.offload == "stream":
            weights += self.stream_window()
        return (weights + self.kv(st)[0] + sum(self.buffers(st).values())
                + sum(self.overhead().values()))

    def bytes_per_token(self, st: _State) -> tuple[int, int]:
        weights = streamed = 0
        for g in self.s.groups:
            if g.kind == "embedding":
                weights += g.nbytes() // max(1, sum(n // r for _, n, r in g.tensors))
                continue
            weights += g.nbytes()
            if st.offload == "stream" and g.chosen == g.source:
                streamed += g.nbytes()
        return weights + self.kv_read_per_token(st), streamed

    # -- lever 1: requantization --

    def requantize_until(self, st: _State, budget: int, allowed: tuple[str, ...],
                         notes: list[str]) -> None:
        """Greedy: apply the move saving most bytes per unit of quality lost until the plan
        fits; then give back what the last steps overshot, restoring the moves that regain
        the most quality while the plan still fits."""
        start = {id(g): g.chosen for g in self.s.groups}
        while self.total(st) > budget:
            best = None  # (bytes saved per unit of loss, bytes saved, group, type)
            for g in self.s.groups:
                cur_bytes, cur_loss = g.nbytes(), g.loss(g.chosen)
                for t in g.targets(allowed):
                    saved = cur_bytes - g.nbytes(t)
                    if saved > 0:
                        ratio = saved / max(g.loss(t) - cur_loss, 1e-30)
                        if best is None or (ratio, saved) > best[:2]:
                            best = (ratio, saved, g, t)
            if best is None:
                return  # every group is at its smallest type
            best[2].chosen = best[3]

        improved = True
        while improved:
            improved = False
            undo = []  # (quality regained, group, type): back towards the source type
            for g in self.s.groups:
                if g.chosen == g.source:
                    continue
                for t in (g.source, *g.targets(allowed)):
                    if g.nbytes(t) > g.nbytes():
                        undo.append((g.loss(g.chosen) - g.loss(t), g, t))
            for gain, g, t in sorted(undo, key=lambda u: -u[0]):
                if gain <= 0:
                    break
                prev, g.chosen = g.chosen, t
                if self.total(st) <= budget:
                    improved = True
                    break
                g.chosen = prev

        for g in self.s.groups:
            if g.chosen != start[id(g)]:
                notes.append(f"requantize {g.name} {g.source} -> {g.chosen}: saves "
                             f"{format_size(g.nbytes(g.source) - g.nbytes())}"
                             + ("; each token's top 16 logits are recomputed from the stored rows"
                                if g.kind == "output" else ""))


def plan_memory(gguf, device: DeviceInfo | DeviceProfile | None = None,
                budget_bytes: int | None = None, n_ctx: int | None = None, *,
                ram_bytes: int | None = None, n_batch: int | None = None,
                threads: int | None = None, kv_types: tuple[str, ...] = KV_TYPES,
                requant_types: tuple[str, ...] = REQUANT_TYPES, mlock: bool = False,
                logits_rows: int = 1, parallel: int | None = 1, serve: bool = False) -> Plan:
    """Plan how to run `gguf` (an open GGUFFile: its metadata and tensor table) on `device`
    within `budget_bytes`.

    device: a detected DeviceInfo, a DeviceProfile (planning for another board), or None to
        detect the running device.
    budget_bytes: peak RSS allowed; None for the device's default (detected available memory,
        or for a profile its RAM less the OS's share, minus a safety margin); UNLIMITED for
        no limit, which keeps every tensor's type.
    n_ctx: the context length wanted; fixed if given, else min(4096, the model's) and the
        planner may shorten it down to MIN_AUTO_CTX.
    n_batch: prompt tokens per forward pass; fixed if given, else DEFAULT_BATCH and the
        planner may shrink it down to MIN_AUTO_BATCH.
    ram_bytes: with a profile, which RAM option (default the smallest).
    kv_types / requant_types: what the runtime can apply; KV_TYPES[0] is the default.
    logits_rows: rows of logits the runtime keeps per slot (1: only the last prompt token's).
    parallel: sequences decoded together (continuous batching), each with its own KV cache
        and logits; None lets the plan choose the most of AUTO_PARALLEL that fit. Either way
        the plan lowers it (never below 1) before shortening the context or streaming the
        weights, and says so in explain(). The default, 1, is what run, chat and bench hold.
    serve: plan for `edgellm serve`, whose process also holds the services and the HTTP
        server (devices/overhead.py measures either process on this machine).

    Raises MemoryBudgetError (an EdgeLLMError) naming the smallest budget that fits.
    """
    if isinstance(gguf, (str, os.PathLike)):  # devices do not read model files: the runtime does
        raise TypeError("plan_memory takes an open GGUFFile (edgellm.runtime.gguf_file), not a path")
    if device is None:
        device = detect_device()
    profile = device.profile if isinstance(device, DeviceInfo) else device

    if budget_bytes is None:
        if isinstance(device, DeviceInfo):
            budget = device.default_budget()
            budget_note = (f"budget {format_size(budget)}: available memory (within any cgroup "
                           f"limit) less a safety margin")
        else:
            budget = profile_budget(profile, ram_bytes)
            budget_note = (f"budget {format_size(budget)}: "
                           f"{format_size(ram_bytes or profile.ram_options[0])} of RAM less "
                           f"{format_size(profile.os_reserved)} for the OS, less a safety margin")
    else:
        budget = int(budget_bytes)
        budget_note = ""
    if budget <= 0:
        raise EdgeLLMError(f"the memory budget must be positive, got {budget_bytes}")
    if n_batch is not None and n_batch < 1:
        raise EdgeLLMError(f"the batch size must be at least 1, got {n_batch}")
    if parallel is not None and parallel < 1:
        raise EdgeLLMError(f"the number of parallel slots must be at least 1, got {parallel}")
    for t in (*kv_types, *requant_types):
        if t not in REL_MSE:
            raise EdgeLLMError(f"unknown type '{t}'; known: {', '.join(REL_MSE)}")

    shape = _Shape.from_gguf(gguf)
    if n_ctx is not None and not 1 <= n_ctx <= shape.context_length:
        raise EdgeLLMError(f"context length {n_ctx} is outside 1..{shape.context_length}, "
                           f"the model's trained context")
    ctx_fixed = n_ctx is not None
    ctx = n_ctx if ctx_fixed else min(DEFAULT_CTX, shape.context_length)
    if threads is None:
        threads = device.threads if isinstance(device, DeviceInfo) else max(1, profile.n_big)
    # q8_0 blocks must not straddle heads (the attention kernel reads one head's row)
    kv_q8_ok = "Q8_0" in kv_types and shape.head_k % 32 == 0 and shape.head_v % 32 == 0

    batch_fixed = n_batch is not None
    batch = min(n_batch if batch_fixed else DEFAULT_BATCH, ctx)

    purpose = "serve" if serve else "run"
    if isinstance(device, DeviceInfo) and device.root == "/":  # this machine: measure it
        size, measured = process_overhead(purpose)
    else:
        size, measured = ESTIMATES[purpose], False
    process = (f"python + edgellm{' serve' if serve else ''} "
               f"({'measured' if measured else 'estimated'})", size)
    p = _Planner(shape, threads, logits_rows, process)
    base_notes = [budget_note] if budget_note else []

    def shrink_batch(st: _State, notes: list[str]) -> None:
        start = st.n_batch
        while p.total(st) > budget and not batch_fixed and st.n_batch > MIN_AUTO_BATCH:
            st.n_batch = max(MIN_AUTO_BATCH, st.n_batch // 2)
        if st.n_batch != start:
            notes.append(f"prompt batch {start} -> {st.n_batch}")

    def shrink_kv_and_ctx(st: _State, notes: list[str], ctx_fixed: bool) -> None:
        if p.total(st) > budget and kv_q8_ok and st.kv_type != "Q8_0":
            notes.append(f"KV cache {st.kv_type} -> Q8_0")
            st.kv_type = "Q8_0"
        while p.total(st) > budget and not ctx_fixed and st.n_ctx > MIN_AUTO_CTX:
            st.n_ctx = max(MIN_AUTO_CTX, st.n_ctx // 2)
            st.n_batch = min(st.n_batch, st.n_ctx)
            notes.append(f"context shortened to {st.n_ctx}")

    def plan_one_sequence() -> tuple[_State, list[str]]:
        """Every lever for a single slot, streaming the weights as the last resort."""
        for g in shape.groups:
            g.chosen = g.source
        notes = list(base_notes)
        st = _State(kv_types[0], ctx, batch)
        if budget >= UNLIMITED:
            return st, notes
        shrink_batch(st, notes)
        p.requantize_until(st, budget, requant_types, notes)
        shrink_kv_and_ctx(st, notes, ctx_fixed)
        if p.total(st) <= budget:
            return st, notes
        resident, resident_min = st, p.total(st)
        # Streaming: weights stay in the file, so requantizing (which makes them resident)
        # is undone; the context and KV type start again from what was asked.
        for g in shape.groups:
            g.chosen = g.source
        notes = base_notes + [f"the weights cannot be resident (needs at least "
                              f"{format_size(resident_min)}): streaming them from storage"]
        st = _State(kv_types[0], ctx, batch, "stream")
        shrink_batch(st, notes)
        shrink_kv_and_ctx(st, notes, ctx_fixed)
        if p.total(st) > budget:
            stream_min = p.total(st)
            need, smallest, how = (stream_min, st, "weights streamed from storage") \
                if stream_min <= resident_min else \
                (resident_min, resident, "every tensor requantized")
            raise MemoryBudgetError(
                f"{shape.name} does not fit in {format_size(budget)} on {profile.title}: "
                f"the smallest plan needs {format_size(need)} ({how}, KV cache "
                f"{smallest.kv_type}, context {smallest.n_ctx}); give it at least "
                f"{-(-need // MiB)}M (--memory-budget {-(-need // MiB)}M) or use a "
                f"smaller model", need)
        return st, notes

    def plan_slots(n: int, n_ctx: int) -> tuple[_State, list[str]]:
        """n slots at a fixed context, weights resident: the batch, requantization and the
        KV type are the levers; the caller checks whether the result fits."""
        for g in shape.groups:
            g.chosen = g.source
        notes = list(base_notes)
        st = _State(kv_types[0], n_ctx, min(batch, n_ctx), parallel=n)
        if budget < UNLIMITED:
            shrink_batch(st, notes)
            p.requantize_until(st, budget, requant_types, notes)
            shrink_kv_and_ctx(st, notes, ctx_fixed=True)
        return st, notes

    # A single sequence sets the context and whether the weights stay resident; more slots
    # are taken only where they fit at that context with the weights resident.
    st, notes = plan_one_sequence()
    chosen = [g.chosen for g in shape.groups]
    counts = AUTO_PARALLEL if parallel is None else range(parallel, 0, -1)  # most first
    if st.offload == "resident":
        for n in [n for n in counts if n > 1]:
            slots_st, slots_notes = plan_slots(n, st.n_ctx)
            if p.total(slots_st) <= budget:
                st, notes = slots_st, slots_notes
                chosen = [g.chosen for g in shape.groups]
                break
    for g, t in zip(shape.groups, chosen):
        g.chosen = t
    if st.parallel < counts[0]:
        notes.insert(len(base_notes), f"parallel slots lowered to {st.parallel} to fit the "
                     + ("budget" if parallel is None else f"budget ({parallel} asked)"))

    rows = p.weight_rows(st)
    kv_bytes, kv_detail = p.kv(st)
    bpt, streamed = p.bytes_per_token(st)
    if mlock and st.offload == "resident":
        notes.append("weights locked in RAM with mlock: needs LimitMEMLOCK (systemd) or "
                     f"ulimit -l of at least {format_size(sum(r.resident_bytes for r in rows))}")
    types = {name: type_id(g.chosen) for g in shape.groups if g.chosen != g.source
             for name, _, _ in g.tensors}
    total_loss = sum(g.loss(g.chosen) for g in shape.groups)
    norm = sum(g.sensitivity * g.n_elements for g in shape.groups if g.kind != "vector") or 1
    return Plan(
        model=shape.name, arch=shape.arch, device=profile.name, device_title=profile.title,
        groups=rows, tensor_types=types,
        stream_window=p.stream_window() if st.offload == "stream" else 0,
        kv_type=st.kv_type, n_ctx=st.n_ctx, n_batch=st.n_batch, parallel=st.parallel,
        kv_bytes=kv_bytes, kv_detail=kv_detail, buffers=p.buffers(st), overhead=p.overhead(),
        total=p.total(st), budget=budget, threads=threads, offload=st.offload,
        mlock=mlock and st.offload == "resident", bytes_per_token=bpt,
        streamed_per_token=streamed, mem_bandwidth_gbs=profile.mem_bandwidth_gbs,
        storage_mbs=profile.storage_mbs, sustained_fraction=profile.sustained_fraction,
        quality_cost=total_loss / norm, notes=notes,
    )
