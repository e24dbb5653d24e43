"""Loading a model and generating text: the runtime's public face.

    model = load_model()                       # the default model
    for piece in model.generate("The capital of France is", max_tokens=32):
        print(piece, end="", flush=True)
"""

import ctypes
import functools
import os
import random
import threading
import time
from pathlib import Path

import numpy as np

from edgellm import kernels
from edgellm.runtime.batching import Scheduler
from edgellm.runtime.chat_template import ChatTemplate
from edgellm.errors import EdgeLLMError, ModelFileError
from edgellm.runtime.gguf_file import GGUFFile
from edgellm.runtime.models import model_class
from edgellm.runtime.sampling import SamplingParams, apply_repeat_penalty, candidates, draw
from edgellm.runtime.speculation import DraftLength, lookup_draft
from edgellm.runtime.streaming import lock_weights, stream_weights
from edgellm.runtime.tokenizer import Tokenizer

DEFAULT_CTX = 4096
# Tokens a constrained greedy step sorts first (the whole vocabulary only if none fits).
CONSTRAINED_TOP = 64
DEFAULT_BATCH = 512


def default_threads() -> int:
    """Physical cores (hyperthreads share the memory bandwidth decode is bound by)."""
    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def load_model(path: str | os.PathLike | None = None, n_ctx: int | None = None,
               threads: int | None = None, plan=None, n_batch: int = DEFAULT_BATCH,
               progress: bool = True, parallel: int | None = None) -> "Model":
    """Load a GGUF model (the default model if path is None) ready to generate; `parallel`
    sequences (each with its own KV cache) can run at once (runtime/batching.py)."""
    if path is None:
        from edgellm.runtime.default_model import default_model_path

        path = default_model_path(progress=progress)
    return Model(path, n_ctx=n_ctx, threads=threads, plan=plan, n_batch=n_batch, parallel=parallel)


class Sequence:
    """One sequence the model holds: its KV cache and the tokens in it, position by position."""

    def __init__(self, cache):
        self.cache = cache
        self.tokens: list[int] = []
        self.history = np.zeros(cache.n_ctx, dtype=np.int32)  # (n_ctx,) tokens, for lookups

    def shared_prefix(self, ids: list[int]) -> int:
        """How many leading tokens of ids this sequence holds (at most all but the last: one
        token must still be evaluated, for its logits)."""
        n, limit = 0, min(len(self.tokens), len(ids) - 1)
        while n < limit and self.tokens[n] == ids[n]:
            n += 1
        return n

    def reuse_prefix(self, ids: list[int]) -> int:
        """Keep the longest prefix of the cache shared with ids; returns how many tokens."""
        n = self.shared_prefix(ids)
        if not self.cache.can_keep(n):
            n = 0
        self.truncate(n)
        return n

    def copy_prefix(self, src: "Sequence", n: int) -> bool:
        """Start this sequence with the first n tokens of src, copied from its cache."""
        if not self.cache.copy_prefix(src.cache, n):
            return False
        self.tokens[:] = src.tokens[:n]
        self.history[:n] = src.history[:n]
        return True

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)
        del self.tokens[n:]

    def reset(self) -> None:
        self.truncate(0)


def release_freed_heap() -> None:
    """Give the C heap's free memory back to the OS. A load frees its temporaries (parsing
    the header, building the tokenizer's tables, requantizing chunks, the kernels' self-check)
    and glibc keeps freed memory below its heap top for reuse unless told: trimming returns
    4-6 MiB of Gemma 3's load that the memory plan does not count. (No-op without glibc.)"""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_LIBC = ctypes.CDLL(None)


class Model:
    """A loaded model. `plan` is a devices.Plan, or a function from the opened GGUFFile to
    one (so the header is parsed once); it sets the context, batch, threads, the tensors
    requantized at load, whether weights are locked or streamed, and how many sequences run
    at once (`parallel`, each with its own KV cache; generate() uses the first)."""

    def __init__(self, path, n_ctx=None, threads=None, plan=None, n_batch=DEFAULT_BATCH, parallel=None):
        t0 = time.perf_counter()
        self.path = Path(path)
        self.gguf = GGUFFile(self.path)
        self.arch = self.gguf.require("general.architecture", str)
        self.name = self.gguf.get("general.name") or self.path.stem
        cls = model_class(self.arch)  # an unsupported architecture fails before any planning
        self.plan = plan(self.gguf) if callable(plan) else plan
        if self.plan is not None:
            n_ctx = n_ctx or self.plan.n_ctx
            n_batch = self.plan.n_batch
            threads = threads or self.plan.threads
            parallel = parallel or getattr(self.plan, "parallel", 1)
        self.threads = kernels.set_threads(threads or default_threads())
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        if n_ctx is None:
            n_ctx = min(DEFAULT_CTX, self.gguf.get(f"{self.arch}.context_length", DEFAULT_CTX))
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 8:
            raise EdgeLLMError(f"context length {n_ctx!r} is too small (at least 8)")
        self.n_ctx = n_ctx
        self.n_batch = max(1, min(n_batch, n_ctx))
        parallel = 1 if parallel is None else parallel
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 64:
            raise EdgeLLMError(f"parallel sequences must be 1..64, got {parallel!r}")
        kv_type = getattr(kernels, self.plan.kv_type) if self.plan else kernels.F16
        self.net = cls(self.gguf, n_ctx, self.n_batch, self.plan.tensor_types if self.plan else None,
                       kv_type, parallel)
        if self.plan is not None:
            # The tensors copied at load are read from the copies: drop any of their file's
            # pages that reading the tensors after them mapped back (a read fault maps the
            # whole large folio around it, reaching back ~2 MiB into the tensor before).
            for name in self.plan.tensor_types:
                t = self.gguf.tensors[name]
                self.gguf.drop_pages(t.offset, t.n_bytes)
        if self.plan is not None and self.plan.offload == "stream":
            stream_weights(self.net, self.gguf)
        if self.plan is not None and self.plan.mlock:
            lock_weights(self.gguf)
        self.n_vocab = self.net.args.n_vocab
        if self.tokenizer.vocab_size != self.n_vocab:
            raise ModelFileError(
                f"{self.path.name}: the tokenizer has {self.tokenizer.vocab_size} tokens but the "
                f"model's embedding has {self.n_vocab}"
            )
        self.sequences = [Sequence(cache) for cache in self.net.caches]
        release_freed_heap()
        self.load_ms = (time.perf_counter() - t0) * 1000

    @functools.cached_property
    def chat_template(self) -> ChatTemplate:
        """The model's chat template, parsed when a chat first needs it (see ChatTemplate)."""
        bos = self.tokenizer.token_text(self.tokenizer.bos_id) if self.tokenizer.bos_id is not None else ""
        eos = self.tokenizer.token_text(self.tokenizer.eos_id) if self.tokenizer.eos_id is not None else ""
        return ChatTemplate.for_model(self.gguf.metadata, self.arch, bos, eos)

    @property
    def parallel(self) -> int:
        return len(self.sequences)

    @property
    def max_logits_rows(self) -> int:
        return self.net.state.logits.a.shape[0]

    @property
    def tokens(self) -> list[int]:
        """What the first sequence's KV cache holds, position by position."""
        return self.sequences[0].tokens

    # ---- evaluation ----

    def eval(self, ids, logits: bool = True, seq: "Sequence | None" = None):
        """Append tokens to a sequence (the first by default); returns the last token's logits."""
        seq = seq or self.sequences[0]
        out = None
        for i in range(0, len(ids), self.n_batch):
            chunk = ids[i:i + self.n_batch]
            out = self.eval_batch([(seq, chunk, logits and i + self.n_batch >= len(ids))])
        return None if out is None else out[0]

    def eval_token(self, token: int, seq: "Sequence | None" = None):
        """One decode step: the per-token path."""
        return self.eval_batch([(seq or self.sequences[0], (token,), True)])[0]

    def eval_batch(self, parts) -> np.ndarray | None:
        """One forward pass over several sequences' next tokens: parts are (Sequence, token
        ids, how many of its last tokens' logits are wanted: a bool for the last one's, or a
        count up to max_logits_rows in all), n_batch tokens at most in all. Returns the wanted
        logits, (n wanted, n_vocab) in the order of parts, a view valid until the next pass."""
        net = self.net
        tokens, runs, r = net.state.tokens.a, [], 0
        for seq, ids, logits in parts:
            if len(seq.tokens) + len(ids) > self.n_ctx:
                raise EdgeLLMError(f"{len(seq.tokens)} + {len(ids)} tokens do not fit the context of {self.n_ctx}")
            tokens[r:r + len(ids)] = ids
            runs.append((seq.cache, len(ids), int(logits)))
            r += len(ids)
        net.batch.set(runs)
        if net.batch.n_out > self.max_logits_rows:
            raise EdgeLLMError(f"{net.batch.n_out} rows of logits asked, {self.max_logits_rows} at most")
        out = net.forward(net.batch)
        for seq, ids, _ in parts:
            n = len(seq.tokens)
            seq.history[n:n + len(ids)] = ids
            seq.tokens.extend(ids)
        return out

    def reset(self) -> None:
        for seq in self.sequences:
            seq.reset()

    def reuse_prefix(self, ids: list[int]) -> int:
        return self.sequences[0].reuse_prefix(ids)

    # ---- text ----

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.chat_template.render(messages, add_generation_prompt)

    def generate(self, prompt, max_tokens: int = 256, sampling: SamplingParams | None = None,
                 stop: list[str] | None = None, constraint=None, speculate: bool = True) -> "Generation":
        """speculate: propose tokens from the text so far and verify them in the pass that
        evaluates the last one (runtime/speculation.py); the output is the same either way."""
        if isinstance(prompt, str):
            ids = self.tokenize(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.n_vocab]
            if bad:
                raise EdgeLLMError(f"token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})")
        else:
            raise EdgeLLMError("prompt must be a string or a list of token ids")
        if not ids:
            raise EdgeLLMError("the prompt is empty")
        if len(ids) >= self.n_ctx:
            raise EdgeLLMError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx}: "
                "shorten the prompt or raise the context length"
            )
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise EdgeLLMError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        stop = list(stop or [])
        if not all(isinstance(s, str) and s for s in stop):
            raise EdgeLLMError("stop must be a list of non-empty strings")
        sampling = (sampling or SamplingParams()).validate()
        return Generation(self, ids, max_tokens, sampling, stop, constraint, speculate=speculate)

    def chat(self, messages: list[dict], **kwargs) -> "Generation":
        text = self.apply_chat_template(messages)
        bos = self.chat_template.bos_token
        # a template that writes the BOS itself must not get a second one
        ids = self.tokenizer.encode(text, add_special=not (bos and text.startswith(bos)), parse_special=True)
        return self.generate(ids, **kwargs)


class Generation:
    """One generation; iterate to run it. Each item is new text (complete UTF-8, with
    any stop string and what could still become one held back).

    It runs in one of the model's sequences (the first unless `seq` is given). Iterating
    runs it alone; either way runtime/batching.py's Scheduler drives it through start(),
    prompt_done(), step() and finish(), a pass at a time."""

    def __init__(self, model: Model, ids, max_tokens, sampling, stop, constraint, seq=None,
                 speculate: bool = True):
        self.model, self.ids, self.max_tokens = model, ids, max_tokens
        self.sampling, self.stop, self.constraint = sampling, stop, constraint
        self.seq = seq or model.sequences[0]
        self.speculate = speculate
        self.text = ""
        self.finish_reason: str | None = None
        self.n_prompt_tokens = len(ids)
        self.n_cached_tokens = 0
        self.n_generated = 0
        self.draft_length = DraftLength()   # its counts: tokens proposed and accepted
        # a constrained reply's likely shape, to propose from: the schema's keys and punctuation
        self._skeleton = None
        if speculate and constraint is not None and hasattr(constraint, "skeleton"):
            self._skeleton = np.array(model.tokenize(constraint.skeleton(), add_special=False), dtype=np.int32)
        self.prompt_ms = 0.0
        self.generate_ms = 0.0
        self._cancelled = threading.Event()
        self._started = False

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def n_proposed(self) -> int:
        return self.draft_length.proposed

    @property
    def n_accepted(self) -> int:
        return self.draft_length.accepted

    def __iter__(self):
        if self._started:
            raise EdgeLLMError("a generation can be iterated only once")
        return self._run()

    def _run(self):
        batch = Scheduler(self.model, [self.seq])
        batch.add(self)
        try:
            while batch.running:
                for _, piece, _ in batch.step():
                    if piece:
                        yield piece
        finally:
            if batch.running:  # the caller stopped iterating
                self.generate_ms = (time.perf_counter() - getattr(self, "_t1", self._t0)) * 1000

    # ---- the steps (a scheduler running several generations calls these) ----

    def start(self) -> list[int]:
        """Keeps the cached prefix the sequence shares with the prompt; returns the prompt
        tokens still to evaluate (at least one)."""
        if self._started:
            raise EdgeLLMError("a generation can be run only once")
        self._started = True
        # Python's generator, not numpy.random: importing that costs ~5 MiB of RSS (OpenSSL
        # with it), and a draw needs one float a token.
        self._rng = random.Random(self.sampling.seed)
        self._t0 = time.perf_counter()
        self.n_cached_tokens = self.seq.reuse_prefix(self.ids)
        return self.ids[self.n_cached_tokens:]

    def prompt_done(self) -> None:
        self._t1 = time.perf_counter()
        self.prompt_ms = (self._t1 - self._t0) * 1000
        self._decoder = self.model.tokenizer.stream_decoder()
        self._emitted = 0          # len(self.text) already given out
        self._hold = max((len(s) for s in self.stop), default=0)

    def propose(self, k: int, next_token: int) -> list[int]:
        """Up to k tokens to verify after next_token, the one about to be evaluated (none
        unless speculating)."""
        n = len(self.seq.tokens)
        k = min(k, self.draft_length.k, self.max_tokens - self.n_generated - 1, self.model.n_ctx - n - 2)
        if not self.speculate or k < 1:
            return []
        self.seq.history[n] = next_token   # where it goes once evaluated
        return lookup_draft(self.seq.history, n + 1, k, self._skeleton).tolist()

    def step(self, logits, n_valid: int | None = None) -> tuple[str, int | None]:
        """Takes the logits of the last evaluated token; returns the new text to give out
        and the next token to evaluate, or None when the generation is over (finish_reason
        set; finish() gives the rest of the text). n_valid: the sequence's tokens up to the
        one these logits follow, when proposals beyond it are still unverified."""
        m = self.model
        self._n_valid = len(self.seq.tokens) if n_valid is None else n_valid
        if self._cancelled.is_set():
            self.finish_reason = "cancelled"
            return "", None
        if self.n_generated >= self.max_tokens or self._n_valid >= m.n_ctx:
            self.finish_reason = "length"
            return "", None
        token = self._sample(logits, self._rng)
        if token is None or token in m.tokenizer.eog_ids:
            self.finish_reason = "stop"
            return "", None
        self.n_generated += 1
        self.text += self._decoder.feed(token)
        cut = self._find_stop(self._emitted)
        if cut is not None:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
            return "", None
        piece = ""
        safe = len(self.text) - self._stop_prefix_len(self._hold)
        if safe > self._emitted:
            piece = self.text[self._emitted:safe]
            self._emitted = safe
        if self.constraint is not None and self.constraint.is_complete(self.text):
            self.finish_reason = "stop"  # the constrained value is whole
            return piece, None
        if self.n_generated >= self.max_tokens:
            # the last token is not evaluated: nothing would read its logits (a pass saved
            # per reply; a next request that shares the reply evaluates it then)
            self.finish_reason = "length"
            return piece, None
        return piece, token

    def finish(self) -> str:
        """The text not given out yet, once step() has ended the generation."""
        if self.finish_reason != "stop" or not self.stop:
            self.text += self._decoder.flush()
        tail = self.text[self._emitted:]
        self._emitted = len(self.text)
        self.generate_ms = (time.perf_counter() - self._t1) * 1000
        return tail

    def _sample(self, logits: np.ndarray, rng) -> int | None:
        p = self.sampling
        n = self._n_valid
        if p.repeat_penalty != 1.0 and p.repeat_last_n > 0 and n:
            apply_repeat_penalty(logits, self.seq.history[max(0, n - p.repeat_last_n):n], p.repeat_penalty)
        if self.constraint is None:
            if p.greedy:
                return int(np.argmax(logits))
            ids, probs = candidates(logits, p)
            return int(ids[draw(probs, rng.random())])
        return self._sample_constrained(logits, rng)

    def _sample_constrained(self, logits, rng) -> int | None:
        """Draw, and redraw without the rejected token, until the constraint allows one."""
        p = self.sampling
        if not p.greedy:
            ids, probs = candidates(logits, p)
            while probs.sum() > 0:
                i = draw(probs, rng.random())
                if self._allowed(int(ids[i])):
                    return int(ids[i])
                probs[i] = 0.0
        # greedy, or no sampled candidate fits: the whole vocabulary, most likely first (ties
        # by id); the best few first, since sorting 262k logits costs ~40 ms a token
        best = int(np.argmax(logits))
        if self._allowed(best):
            return best
        top = np.argpartition(-logits, CONSTRAINED_TOP)[:CONSTRAINED_TOP]
        for token in top[np.lexsort((top, -logits[top]))]:
            if self._allowed(int(token)):
                return int(token)
        tried = set(top.tolist())
        for token in np.argsort(-logits, kind="stable"):
            if int(token) not in tried and self._allowed(int(token)):
                return int(token)
        return None  # nothing allowed: end the generation here

    def _allowed(self, token: int) -> bool:
        if token in self.model.tokenizer.eog_ids:
            return self.constraint.is_complete(self.text)
        piece = self.model.tokenizer.token_to_piece(token).decode("utf-8", "replace")
        return self.constraint.allows(self.text, piece)

    def _find_stop(self, emitted: int) -> int | None:
        start = max(0, emitted - max((len(s) for s in self.stop), default=0))
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix_len(self, hold: int) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        for n in range(min(hold, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
