"""Several generations at once (continuous batching): one forward pass per step over every
running generation's next token, so the weights are read once for all of them.

    batch = Scheduler(model)                  # a model loaded with parallel=4
    batch.add(model.generate("Hello", max_tokens=32))
    while batch.running:
        for gen, piece, done in batch.step():
            ...

Each generation runs in one of the model's sequences (its own KV cache). A new one may join
between steps; it takes the free sequence that holds the longest prefix of its prompt, and
a prefix another sequence holds (a kiosk's fixed system prompt) is copied from that
sequence's cache instead of being evaluated again. A prompt is evaluated in chunks beside the
others' decode steps, so a long prompt does not stall the generations already running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgellm.errors import EdgeLLMError
from edgellm.runtime.speculation import SPECULATION_ROWS

if TYPE_CHECKING:  # generation.py runs a lone generation through a Scheduler
    from edgellm.runtime.generation import Generation, Sequence

# Prompt tokens a waiting generation evaluates per step while others decode: a step then
# costs a few decode steps, not a whole prompt's prefill.
PREFILL_CHUNK = 32
# A prefix shorter than this is evaluated again rather than copied from another sequence.
MIN_COPIED_PREFIX = 16


@dataclass
class _Running:
    gen: Generation
    pending: list[int]                 # prompt tokens still to evaluate
    next_token: int | None = None      # the token to evaluate next, once decoding


class Scheduler:
    """Steps the running generations together; not thread-safe (one thread drives it).
    sequences: those it may use (default all the model's)."""

    def __init__(self, model, sequences: list[Sequence] | None = None, prefill_chunk: int = PREFILL_CHUNK):
        self.model = model
        self.prefill_chunk = max(1, prefill_chunk)
        self.free: list[Sequence] = list(model.sequences if sequences is None else sequences)
        self.running: list[_Running] = []
        self.steps = 0

    @property
    def free_slots(self) -> int:
        return len(self.free)

    def add(self, gen: Generation) -> None:
        """Starts a generation (made by model.generate or model.chat) in a free sequence."""
        if not self.free:
            raise EdgeLLMError("every sequence is running a generation")
        shared = {s: s.shared_prefix(gen.ids) for s in self.model.sequences}
        seq = max(self.free, key=shared.get)
        donor = max(shared, key=shared.get)
        if donor is not seq and shared[donor] >= max(shared[seq] + 1, MIN_COPIED_PREFIX):
            seq.copy_prefix(donor, shared[donor])
        self.free.remove(seq)
        gen.seq = seq
        self.running.append(_Running(gen, gen.start()))

    def step(self) -> list[tuple[Generation, str, bool]]:
        """One forward pass: every decoding generation's next token (and the tokens it
        proposes after it, when it is the only generation running), then prompt chunks of the generations still reading theirs, up to the batch size.
        Returns (generation, new text, whether it ended) for each generation that moved; an
        ended generation's text includes the rest (Generation.finish) and its sequence is
        free again."""
        events = []
        for r in [r for r in self.running if r.pending and r.gen.cancelled]:
            r.gen.prompt_done()
            events.append(self._end(r, r.gen.step(None)[0]))
        if not self.running:
            return events
        parts, owners = [], []
        budget = self.model.n_batch
        decoding = [r for r in self.running if not r.pending]
        # proposals only for a generation decoding alone (several already fill the pass with
        # tokens that stand: four decoding at once went 176 -> 137 tok/s with proposals), at
        # most SPECULATION_ROWS rows: the GEMV kernels give each its logits alone, bit for bit
        room = SPECULATION_ROWS - 1 if len(decoding) == len(self.running) == 1 else 0
        room = min(room, self.model.max_logits_rows - 1)
        for r in decoding:
            draft = r.gen.propose(room, r.next_token) if room > 0 else ()
            room -= len(draft)
            parts.append((r.gen.seq, (r.next_token, *draft), 1 + len(draft)))
            owners.append((r, draft))
            budget -= 1 + len(draft)
        for r in self.running:
            if budget <= 0:
                break
            if not r.pending:
                continue
            n = budget if not decoding else min(budget, self.prefill_chunk)
            chunk, r.pending = r.pending[:n], r.pending[n:]
            parts.append((r.gen.seq, chunk, not r.pending))
            if not r.pending:
                owners.append((r, ()))
            budget -= len(chunk)
        logits = self.model.eval_batch(parts)
        self.steps += 1
        row = 0
        for r, draft in owners:
            events.append(self._verify(r, draft, logits[row:row + 1 + len(draft)]))
            row += 1 + len(draft)
        return events

    def _verify(self, r: _Running, draft, logits) -> tuple[Generation, str, bool]:
        """Samples each row as plain decoding would; a proposal stands while it is the token
        sampled before it. The sequence keeps the tokens that stood."""
        gen, seq = r.gen, r.gen.seq
        if r.next_token is None:
            gen.prompt_done()
        base = len(seq.tokens) - len(draft)   # tokens up to the one row 0 follows
        pieces = []
        for i in range(len(logits)):
            piece, token = gen.step(logits[i], base + i)
            pieces.append(piece)
            if token is None or i == len(draft) or token != draft[i]:
                break
        if draft:
            gen.draft_length.update(len(draft), i)
            seq.truncate(base + i)
        if token is None:
            return self._end(r, "".join(pieces))
        r.next_token = token
        return gen, "".join(pieces), False

    def _end(self, r: _Running, piece: str) -> tuple[Generation, str, bool]:
        self.running.remove(r)
        self.free.append(r.gen.seq)
        return r.gen, piece + r.gen.finish(), True

    def abort(self) -> list[Generation]:
        """Ends every running generation after a failed pass (their sequences' caches are
        emptied: the pass may have stopped halfway); returns them."""
        gens = [r.gen for r in self.running]
        for r in self.running:
            r.gen.cancel()
            r.gen.seq.reset()
            self.free.append(r.gen.seq)
        self.running.clear()
        return gens
