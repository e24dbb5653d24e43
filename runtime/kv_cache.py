"""The KV cache: per layer, K and V rows in f16 (or q8_0, when the memory plan picks it), and
which position each slot holds. One KVCache holds one sequence; a Batch is one forward pass
over the next tokens of several sequences, each attending to its own cache only.

Layers with a sliding window keep a ring of `window + n_batch` slots (slot = pos % size),
enough for every query of a batch to see its whole window; the other layers keep one
slot per position of the context. Layers with the same slot count share one slot table.
"""

import numpy as np

from edgellm import kernels
from edgellm.kernels import F16, Q8_0, lib, row_size
from edgellm.errors import EdgeLLMError
from edgellm.runtime.layers import Buffer


class SlotTable:
    def __init__(self, n_slots: int, window: int, n_batch: int):
        self.n_slots = n_slots
        self.window = window                                  # 0: no window
        self.slot_pos = Buffer((n_slots,), np.int32)          # (n_slots,) position held, -1 empty
        self.slot_pos.a[:] = -1
        self.slots = Buffer((n_batch,), np.int32)             # (n_batch,) slots of this batch


class LayerCache:
    def __init__(self, table: SlotTable, kv_dim: int, kv_type: int):
        self.table = table
        self.kv_dim = kv_dim
        row = row_size(kv_type, kv_dim)
        self.k = Buffer((table.n_slots, row), np.uint8)       # (n_slots, n_kv_head * head_dim) kv_type
        self.v = Buffer((table.n_slots, row), np.uint8)


class KVCache:
    def __init__(self, n_ctx: int, n_batch: int, kv_dims: list[int], windows: list[int],
                 kv_type: int = F16, head_dim: int = 0):
        if kv_type not in (F16, Q8_0) or (kv_type == Q8_0 and head_dim % 32):
            raise EdgeLLMError(f"the KV cache can be F16, or Q8_0 when the head size is a multiple of 32 "
                               f"(type {kv_type}, head size {head_dim})")
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.n_batch = n_batch
        self.n_past = 0                                       # positions 0..n_past-1 are cached
        self.pos = Buffer((n_batch,), np.int32)               # (n_batch,) positions of this batch
        self._arange = np.arange(n_batch, dtype=np.int32)
        tables: dict[tuple, SlotTable] = {}
        self.layers = []
        for kv_dim, window in zip(kv_dims, windows):
            n_slots = min(n_ctx, window + n_batch) if window else n_ctx
            key = (n_slots, window)
            if key not in tables:
                tables[key] = SlotTable(n_slots, window, n_batch)
            self.layers.append(LayerCache(tables[key], kv_dim, kv_type))
        self.tables = list(tables.values())

    @property
    def nbytes(self) -> int:
        return sum(c.k.a.nbytes + c.v.a.nbytes for c in self.layers)

    def begin_batch(self, n: int) -> None:
        """Give the next n positions their slots (before any layer stores into them)."""
        pos = self.pos.a[:n]
        np.add(self._arange[:n], self.n_past, out=pos)
        for t in self.tables:
            slots = t.slots.a[:n]
            np.remainder(pos, t.n_slots, out=slots)
            t.slot_pos.a[slots] = pos

    def end_batch(self, n: int) -> None:
        self.n_past += n

    def can_keep(self, n_keep: int) -> bool:
        """Whether truncating to n_keep positions leaves every window intact: a ring has
        overwritten positions older than n_past - n_slots."""
        return all(t.n_slots >= self.n_ctx or self.n_past - n_keep <= t.n_slots - t.window
                   for t in self.tables)

    def truncate(self, n_keep: int) -> None:
        for t in self.tables:
            dropped = t.slot_pos.a >= n_keep
            t.slot_pos.a[dropped] = -1
            if kernels.DEBUG:  # what was dropped reads as NaN (Buffer)
                for c in self.layers:
                    if c.table is t:
                        c.k.a[dropped] = 0xFF
                        c.v.a[dropped] = 0xFF
        self.n_past = n_keep

    def copy_prefix(self, src: "KVCache", n: int) -> bool:
        """Make this cache hold src's positions 0..n-1 (src: a cache of the same shape), if
        src still holds every one a later position can see (in a sliding-window layer, the
        last `window`); returns whether it did. A shared prompt prefix is copied, not
        evaluated again."""
        if n > src.n_past:
            return False
        kept = [np.arange(max(0, n - t.window) if t.window else 0, n, dtype=np.int32) for t in self.tables]
        if not all((ts.slot_pos.a[pos % ts.n_slots] == pos).all() for ts, pos in zip(src.tables, kept)):
            return False
        self.truncate(0)
        for t, pos in zip(self.tables, kept):
            slots = pos % t.n_slots
            t.slot_pos.a[slots] = pos
            for c, cs in zip(self.layers, src.layers):
                if c.table is t:
                    c.k.a[slots] = cs.k.a[slots]
                    c.v.a[slots] = cs.v.a[slots]
        self.n_past = n
        return True

    def attend(self, il: int, q, k, v, n: int, n_head: int, n_kv_head: int, head_dim: int,
               scale: float, out, rowwise: bool = False) -> None:
        """Store this batch's k, v for layer il, then attend with q: (n, n_head, head_dim).
        rowwise: each row attends alone, as a decode step would (the kernels sum a batch of
        queries in another order than one: on AVX2, as llama.cpp does)."""
        c = self.layers[il]
        t = c.table
        lib.el_kv_store(self.kv_type, k, v, c.k.p, c.v.p, t.slots.p, n, c.kv_dim)
        # slots past the newest position are empty: do not scan them (a row does not see
        # those past its own position: they weigh an exact 0)
        n_active = min(t.n_slots, self.n_past + n)
        if not rowwise:
            lib.el_attention(q, self.pos.p, n, n_head, n_kv_head, head_dim, self.kv_type, c.k.p, c.v.p,
                             t.slot_pos.p, n_active, t.window, scale, out)
            return
        q_dim = n_head * head_dim
        for i in range(n):   # a few rows: a speculated run
            lib.el_attention(q + i * q_dim, self.pos.p + i, 1, n_head, n_kv_head, head_dim, self.kv_type,
                             c.k.p, c.v.p, t.slot_pos.p, n_active, t.window, scale, out + i * q_dim)


class Batch:
    """The rows of one forward pass: runs of consecutive rows, each run the next tokens of one
    sequence (its own KVCache). Every row has its position in its sequence, and attends to
    its own sequence only; the rows whose logits are wanted are the last of their runs. A run
    of several rows that all want logits is a decode step of several tokens (speculation):
    its rows attend one by one, each exactly as decoding it alone would."""

    def __init__(self, n_batch: int):
        self.n_batch = n_batch
        self.pos = Buffer((n_batch,), np.int32)              # (n_batch,) each row's position
        self.out_rows = np.zeros(n_batch, dtype=np.int64)    # rows whose logits are wanted
        self.runs: list[tuple[KVCache, int, int, bool]] = []  # (cache, first row, rows, rowwise)
        self.n = 0                                           # rows in this pass
        self.n_out = 0                                       # rows with logits

    def set(self, runs: list[tuple[KVCache, int, int]]) -> None:
        """runs: (cache, number of tokens, how many of its last tokens' logits are wanted:
        0, 1, or all of a speculated run's)."""
        self.runs.clear()
        r = n_out = 0
        for cache, n, logits in runs:
            if not 1 <= n or not 0 <= logits <= n:
                raise ValueError(f"a run of a batch needs a token and at most its tokens' logits ({n}, {logits})")
            self.runs.append((cache, r, n, n > 1 and logits == n))
            r += n
            self.out_rows[n_out:n_out + logits] = np.arange(r - logits, r)
            n_out += logits
        if r > self.n_batch:
            raise ValueError(f"a batch of {r} tokens is more than the {self.n_batch} it was sized for")
        self.n, self.n_out = r, n_out

    def begin(self) -> None:
        """Give every row its sequence's next slot and position (before any layer stores)."""
        for cache, r, n, _ in self.runs:
            cache.begin_batch(n)
            self.pos.a[r:r + n] = cache.pos.a[:n]

    def end(self) -> None:
        for cache, _, n, _ in self.runs:
            cache.end_batch(n)

    def attend(self, il: int, q, k, v, n_head: int, n_kv_head: int, head_dim: int, scale: float,
               out) -> None:
        """Each run stores its k, v rows in its cache and attends to it: q, out (rows, n_head *
        head_dim); k, v (rows, n_kv_head * head_dim)."""
        if len(self.runs) == 1:
            cache, _, n, rowwise = self.runs[0]
            cache.attend(il, q, k, v, n, n_head, n_kv_head, head_dim, scale, out, rowwise)
            return
        q_dim, kv_dim = n_head * head_dim, n_kv_head * head_dim
        for cache, r, n, rowwise in self.runs:
            cache.attend(il, q + r * q_dim, k + r * kv_dim, v + r * kv_dim, n, n_head, n_kv_head,
                         head_dim, scale, out + r * q_dim, rowwise)
