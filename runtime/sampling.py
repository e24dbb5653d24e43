"""Sampling: small pure functions over a logits vector that take their random number as
an argument (so a seed reproduces a run exactly).

The order follows llama.cpp's default chain: repetition penalty, top-k, top-p, min-p,
temperature, then a draw from the distribution.
"""

from dataclasses import dataclass

import numpy as np

from edgellm.errors import EdgeLLMError


@dataclass
class SamplingParams:
    temperature: float = 0.8     # 0 -> greedy
    top_k: int = 40              # 0 -> all tokens
    top_p: float = 0.95          # 1 -> off
    min_p: float = 0.05          # 0 -> off
    repeat_penalty: float = 1.0  # 1 -> off
    repeat_last_n: int = 64
    seed: int | None = None      # None -> random

    def validate(self) -> "SamplingParams":
        def bad(field, why):
            raise EdgeLLMError(f"sampling option {field}={getattr(self, field)!r}: {why}")

        for field, kind in (("temperature", float), ("top_p", float), ("min_p", float),
                            ("repeat_penalty", float), ("top_k", int), ("repeat_last_n", int)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                bad(field, f"must be {'a number' if kind is float else 'an integer'}")
            if not np.isfinite(value):
                bad(field, "must be finite")
        if self.temperature < 0:
            bad("temperature", "must be >= 0")
        if self.top_k < 0:
            bad("top_k", "must be >= 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if self.repeat_penalty <= 0:
            bad("repeat_penalty", "must be > 0")
        if self.repeat_last_n < 0:
            bad("repeat_last_n", "must be >= 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "must be an integer")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repeat_penalty(logits: np.ndarray, recent: np.ndarray, penalty: float) -> None:
    """In place: logits of recently seen tokens shrink toward zero (llama.cpp's rule:
    positive logits divided by the penalty, negative ones multiplied)."""
    ids = np.unique(recent)
    vals = logits[ids]
    logits[ids] = np.where(vals > 0, vals / penalty, vals * penalty)


def candidates(logits: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and probabilities left after top-k, top-p, min-p and temperature,
    most likely first. The probabilities sum to 1."""
    n = logits.size
    k = n if p.top_k <= 0 or p.top_k >= n else p.top_k
    ids = np.argpartition(-logits, k - 1)[:k] if k < n else np.arange(n)
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    z = logits[ids].astype(np.float64)
    probs = np.exp(z - z[0])
    probs /= probs.sum()
    keep = k
    if p.top_p < 1.0:
        # smallest prefix whose mass reaches top_p
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
    if p.min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(probs[:keep] >= p.min_p * probs[0]))))
    ids, z = ids[:keep], z[:keep]
    probs = np.exp((z - z[0]) / p.temperature)
    probs /= probs.sum()
    return ids, probs


def draw(probs: np.ndarray, r: float) -> int:
    """Index drawn from a distribution given a uniform r in [0, 1)."""
    i = int(np.searchsorted(np.cumsum(probs), r * probs.sum(), side="right"))
    return min(i, probs.size - 1)
