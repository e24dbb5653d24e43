"""Small leaf helpers the architecture files share: weight matrices, norms, rope,
attention over the KV cache, and run-state buffers.

Every call here goes straight to a C kernel with pointers prepared at load time, so the
per-token path allocates no arrays and loops over no elements in Python.
"""

import mmap
import os
import weakref

import numpy as np

from edgellm import kernels
from edgellm.kernels import F32, Q4_0, Q5_0, dequantize, ffi, lib, pack_x8, ptr, quantize, row_size
from edgellm.errors import ModelFileError
from edgellm.runtime.speculation import SPECULATION_ROWS

# Rows converted at a time when requantizing a tensor at load: bounds the f32 temporary.
_REQUANT_ROWS = 1024


class Linear:
    """y = x @ W.T for a weight of GGUF shape [n_in, n_out]: n_out rows of n_in, in the
    mapped file (no copy) or, when the plan requantizes it, in anonymous memory.

    interleave: a Q4_0 or Q5_0 copy has its rows interleaved eight at a time (kernels/api.h's
    el_matmul_x8), the layout decode streams fastest; for a matrix read whole every token
    (the LM head), whose prefill only ever sees a few rows of x."""

    def __init__(self, tensor, to_type: int | None = None, release=None, interleave: bool = False):
        if len(tensor.shape) != 2:
            raise ModelFileError(f"tensor '{tensor.name}' should be 2-D, has shape {tensor.shape}")
        self.name = tensor.name
        self.n_in, self.n_out = tensor.shape
        self.type = tensor.type
        self.data = tensor.data  # (n_out, row bytes) uint8; keeps the mapping alive
        self.interleaved = False
        if to_type is not None and to_type != tensor.type:
            self.interleaved = interleave and to_type in (Q4_0, Q5_0) and self.n_out % 8 == 0
            self.data = requantize(tensor.data, tensor.type, to_type, self.n_in, release, self.interleaved)
            self.type = to_type
        if not lib.el_type_supported(self.type):
            raise ModelFileError(f"tensor '{tensor.name}' has a type the kernels do not support")
        self.ptr = ffi.cast("void *", self.data.ctypes.data)

    def __call__(self, x, y, n_tokens: int, ws) -> None:
        if self.interleaved:
            lib.el_matmul_x8(self.type, self.ptr, self.n_out, self.n_in, x, n_tokens, y, ws)
        else:
            lib.el_matmul(self.type, self.ptr, self.n_out, self.n_in, x, n_tokens, y, ws)

    def wsize(self, n_tokens: int) -> int:
        if self.interleaved:
            return lib.el_matmul_x8_wsize(self.n_in, n_tokens)
        return lib.el_matmul_wsize(self.type, self.n_in, n_tokens)

    def rows(self, ids, n: int, out) -> None:
        """Dequantized rows `ids[:n]` into out (embedding lookup)."""
        if self.interleaved:
            raise ValueError(f"'{self.name}' has interleaved rows: it is not a lookup table")
        lib.el_get_rows(self.type, self.ptr, self.n_in, ids, n, out)


class Linears:
    """Several Linear that read the same input (a layer's q, k, v; its gate and up), each
    writing a RunState buffer named in `outputs`. Decoding (a few tokens) runs them as one
    kernel call, so the activations are quantized once and the pool gets one job instead of
    several small ones; a prompt batch runs each (its GEMM tiles gain nothing from fusing)."""

    FUSED_MAX_TOKENS = 8  # matmul.c's GEMV path: fewer tokens than GEMM_MIN_TOKENS

    def __init__(self, linears: list, outputs: tuple[str, ...]):
        if len({lin.n_in for lin in linears}) != 1:
            raise ValueError("fused linears must share their input width")
        self.linears, self.outputs = linears, outputs
        self.n_in = linears[0].n_in
        self.types = ffi.new("int[]", [lin.type for lin in linears])
        self.w = ffi.new("void *[]", [lin.ptr for lin in linears])
        self.n_out = ffi.new("int64_t[]", [lin.n_out for lin in linears])
        self.state = self.y = None

    def __call__(self, x, s, n_tokens: int, ws) -> None:
        if n_tokens > self.FUSED_MAX_TOKENS:
            for lin, out in zip(self.linears, self.outputs):
                lin(x, getattr(s, out).p, n_tokens, ws)
            return
        if s is not self.state:  # the outputs' pointers, once per RunState
            self.state, self.y = s, ffi.new("float *[]", [getattr(s, out).p for out in self.outputs])
        lib.el_matmul_multi(len(self.linears), self.types, self.w, self.n_out, self.n_in, x, n_tokens, self.y, ws)

    def wsize(self, n_tokens: int) -> int:
        fused = lib.el_matmul_multi_wsize(len(self.linears), self.types, self.n_in,
                                          min(n_tokens, self.FUSED_MAX_TOKENS))
        return max(fused, *(lin.wsize(n_tokens) for lin in self.linears))


class LMHead(Linear):
    """The output projection. When the plan requantized it, each token's RESCORE largest
    logits are recomputed from the rows as stored in the file, so greedy and top-k choices
    keep the file's precision while the full pass reads the smaller copy. Those rows are read
    with pread (a few per token, into a scratch row): never mapped, they do not pile up in
    RSS, and no page of the mapping has to be dropped after each token (madvise and refaults
    took ~0.4 ms a token, a sixth of the Q4_0 head). Measured on Gemma 3 270M: Q8_0 -> Q5_0
    alone kept greedy top-1 on 235/256 positions of real text; the true top-1 sits in the
    requantized top 16 on all of them."""

    RESCORE = 16

    def __init__(self, tensor, to_type: int | None = None, release=None, path=None):
        super().__init__(tensor, to_type, release, interleave=True)
        self.stored_fd = -1  # the GGUF, open for reading the stored rows (closed with the head)
        if self.type != tensor.type:
            self.stored_type, self.stored_offset = tensor.type, tensor.offset
            self.stored_fd = os.open(path, os.O_RDONLY)
            weakref.finalize(self, os.close, self.stored_fd)
            # the reads are a few rows at random: no readahead
            os.posix_fadvise(self.stored_fd, tensor.offset, tensor.n_bytes, os.POSIX_FADV_RANDOM)

    def __call__(self, x, y, n_tokens: int, ws) -> None:
        super().__call__(x, y, n_tokens, ws)
        if self.stored_fd < 0:
            return
        lib.el_rescore_top(self.stored_type, ffi.NULL, self.stored_fd, self.stored_offset, self.n_out, self.n_in,
                           x, n_tokens, y, self.RESCORE, ws)

    def wsize(self, n_tokens: int) -> int:
        stored = lib.el_rescore_top_wsize(self.stored_type, self.n_in) if self.stored_fd >= 0 else 0
        return max(super().wsize(n_tokens), stored)


class StoredRows:
    """An embedding table whose pages the process does not otherwise hold (the tied table of
    an LM head the plan requantized): each lookup reads its rows from the file with pread
    (el_get_rows_fd), so the table is never mapped. Looked up through the mapping instead,
    every row faults in the 64 KiB around it, and over a long session the table would come
    back into RSS that the plan freed (measured: 30 MiB of Gemma 3's Q8_0 table after a
    load and 32 tokens)."""

    def __init__(self, tensor, path):
        self.name = tensor.name
        self.n_in, self.n_out = tensor.shape
        self.type, self.offset = tensor.type, tensor.offset
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)
        os.posix_fadvise(self.fd, tensor.offset, tensor.n_bytes, os.POSIX_FADV_RANDOM)  # rows at random
        self.row_buf = np.empty(row_size(self.type, self.n_in), np.uint8)
        self.row_buf_p = ffi.cast("void *", self.row_buf.ctypes.data)

    def rows(self, ids, n: int, out) -> None:
        """Dequantized rows `ids[:n]` into out."""
        if lib.el_get_rows_fd(self.type, self.fd, self.offset, self.n_in, ids, n, out, self.row_buf_p):
            raise ModelFileError(f"cannot read rows of '{self.name}' from the model file")


def requantize(data: np.ndarray, src_type: int, dst_type: int, n: int, release=None,
               interleave: bool = False) -> np.ndarray:
    """Rows of n elements converted from src_type to dst_type, in chunks of rows (then
    interleaved eight at a time if asked: pack_x8); release(byte_offset, n_bytes) is told
    each chunk of `data` that is done with."""
    src_row = row_size(src_type, n)
    n_rows = data.size // src_row
    out = np.empty((n_rows, row_size(dst_type, n)), dtype=np.uint8)
    src = data.reshape(n_rows, src_row)
    for r in range(0, n_rows, _REQUANT_ROWS):  # chunks of whole groups of eight
        chunk = src[r:r + _REQUANT_ROWS]
        rows = quantize(dst_type, dequantize(src_type, chunk, n))
        out[r:r + _REQUANT_ROWS] = pack_x8(dst_type, rows, n) if interleave else rows
        if release:
            # Everything read so far, not only this chunk: a read fault maps the page cache's
            # pages around it (fault-around, whole large folios), which reaches back into
            # chunks released before (measured: 18-22 MiB of Gemma 3's 170 MiB Q8_0 table
            # stayed mapped when each chunk released only itself). Pages no longer mapped
            # cost madvise nothing but a page-table walk.
            release(0, r * src_row + chunk.size)
    return out


def vector(tensor) -> np.ndarray:
    """A 1-D weight (norm, bias) as an f32 array (they are tiny: a copy is fine)."""
    if tensor.type == F32:
        return np.ascontiguousarray(tensor.data.view(np.float32))
    return dequantize(tensor.type, tensor.data, tensor.n_elements).reshape(-1)


class RMSNorm:
    def __init__(self, tensor, eps: float):
        self.weight = vector(tensor)
        self.n = self.weight.size
        self.w = ptr(self.weight)
        self.eps = eps

    def __call__(self, x, y, n_rows: int) -> None:
        lib.el_rmsnorm(x, self.w, y, self.n, n_rows, self.eps)


class Buffer:
    """A preallocated f32 (or other dtype) array and its C pointer. Zeros; with the kernels'
    debug build, 0xFF bytes instead (NaN as f32 and f16, -1 as ints: kernels.DEBUG), so that
    reading a value never written shows up."""

    def __init__(self, shape, dtype=np.float32):
        self.a = np.zeros(shape, dtype=dtype)
        if kernels.DEBUG:
            self.a.view(np.uint8)[...] = 0xFF
        self.p = ptr(self.a)


class Weights:
    """Looks up a model's tensors by GGUF name, checks their shapes, and applies the
    plan's requantization (tensor name -> ggml type)."""

    def __init__(self, gguf, tensor_types: dict | None = None):
        self.gguf = gguf
        self.tensor_types = tensor_types or {}

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def _tensor(self, name: str, shape: tuple):
        t = self.gguf.tensor(name)
        if tuple(t.shape) != tuple(shape):
            raise ModelFileError(
                f"{self.gguf.path.name}: tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(shape)}"
            )
        return t

    def linear(self, name: str, n_in: int, n_out: int) -> Linear:
        tensor = self._tensor(name, (n_in, n_out))
        # the requantized copy replaces the file's pages, chunk by chunk, so the load never
        # holds both whole
        release = lambda start, n: self.gguf.drop_pages(tensor.offset + start, n)
        return Linear(tensor, self.tensor_types.get(name), release)

    def head(self, name: str, n_in: int, n_out: int) -> LMHead:
        """The LM head; requantized by the plan, it reads its top candidates' stored rows back
        from the file (LMHead)."""
        tensor = self._tensor(name, (n_in, n_out))
        release = lambda start, n: self.gguf.drop_pages(tensor.offset + start, n)
        return LMHead(tensor, self.tensor_types.get(name), release, self.gguf.path)

    def embedding(self, name: str, n_in: int, n_out: int) -> Linear | StoredRows:
        """An embedding table read only by lookups (one row per token). When the plan
        requantized it (as the tied LM head) its file pages were dropped, and lookups read
        rows with pread (StoredRows); otherwise its pages are advised random, so a lookup
        brings in the row's page, not a readahead window."""
        tensor = self._tensor(name, (n_in, n_out))
        if self.tensor_types.get(name, tensor.type) != tensor.type:
            return StoredRows(tensor, self.gguf.path)
        self.gguf.advise_pages(tensor.offset, tensor.n_bytes, mmap.MADV_RANDOM)
        return Linear(tensor)

    def norm(self, name: str, n: int, eps: float) -> RMSNorm:
        return RMSNorm(self._tensor(name, (n,)), eps)

    def vector(self, name: str, n: int) -> np.ndarray:
        return vector(self._tensor(name, (n,)))


class RunState:
    """Activation buffers for a batch of up to n_batch tokens, allocated once; the
    per-token path only ever writes into these."""

    def __init__(self, n_batch: int, dim: int, q_dim: int, kv_dim: int, ffn_dim: int,
                 n_vocab: int, ws_bytes: int, n_seq: int = 1):
        B = n_batch
        self.x = Buffer((B, dim))             # (B, dim) residual stream
        self.xb = Buffer((B, dim))            # (B, dim) normed input of a sublayer
        self.xb2 = Buffer((B, dim))           # (B, dim) output of a sublayer
        self.q = Buffer((B, q_dim))           # (B, n_head * head_dim)
        self.k = Buffer((B, kv_dim))          # (B, n_kv_head * head_dim)
        self.v = Buffer((B, kv_dim))          # (B, n_kv_head * head_dim)
        self.att = Buffer((B, q_dim))         # (B, n_head * head_dim) attention output
        self.hb = Buffer((B, ffn_dim))        # (B, ffn_dim)
        self.hb2 = Buffer((B, ffn_dim))       # (B, ffn_dim)
        # (rows, n_vocab): each sequence's last token, or a speculated run's every token
        self.logits = Buffer((max(n_seq, SPECULATION_ROWS), n_vocab))
        self.tokens = Buffer((B,), np.int32)  # (B,) token ids of the batch
        self.ws = Buffer((max(ws_bytes, 1),), np.uint8)  # activations quantized for matmuls

    def keep_outputs(self, n: int, n_out: int, rows) -> int:
        """After the last layer's attention, only the rows whose logits are wanted go on (each
        sequence's last, `rows[:n_out]`), as in llama.cpp's graphs: the residual x and the
        attention output xb2 keep those rows, moved to the front. Returns n_out."""
        if n_out < n:
            for i in range(n_out):   # one row per sequence of the batch
                r = rows[i]
                if r != i:
                    self.x.a[i] = self.x.a[r]
                    self.xb2.a[i] = self.xb2.a[r]
        return n_out


def matmul_wsize(linears, n_batch: int) -> int:
    return max(lin.wsize(n_batch) for lin in linears)
