"""Draft-free speculation: tokens proposed from the sequence itself, verified in one pass.

Decode reads every weight once per token; checking a few proposed tokens in the same pass
costs little more (the GEMV kernels unpack each weight row once for four tokens), so every
accepted proposal is a token for almost nothing. Replies that copy from their prompt (JSON
keys, values quoted from a sensor table, fixed templates) are where proposals come cheap:
the continuation of the latest earlier occurrence of the last few tokens (prompt lookup, as
llama.cpp's n-gram speculation).

Verifying is sampling: each verified row's logits are sampled exactly as plain decoding would
(Generation.step, same random draw), and a proposal is accepted iff the sampled token equals
it. For a proposal q that is one token with certainty, that is the speculative sampling rule
(accept with probability min(1, p/q) = p(d); on rejection draw from (p - q)+, which is p
without d), so the output distribution is unchanged; and since up to seven rows of a decode
step give each row bit for bit its logits alone (the GEMV path), greedy and seeded outputs are
the plain ones token for token.
"""

import numpy as np

# Proposed tokens per step at most: with the token being evaluated, 6 rows (the GEMV path
# sums each row as alone up to 7).
MAX_DRAFT = 5
SPECULATION_ROWS = 1 + MAX_DRAFT   # logits rows a speculated step wants
# Match lengths tried, longest first: a single-token match proposes wrongly too often.
NGRAMS = (4, 3, 2)


def lookup_draft(history: np.ndarray, n: int, k: int, also: np.ndarray | None = None) -> np.ndarray:
    """Up to k tokens that followed the latest earlier occurrence of the last g tokens of
    history[:n] (g in NGRAMS, longest first), in history or else in `also` (a text the reply
    is likely to follow: a JSON schema's skeleton); empty when the tail recurs in neither."""
    for g in NGRAMS:
        if n <= g or k < 1:
            continue
        tail = history[n - g:n]
        # in history, an occurrence other than the tail itself: one that ends before it does
        for corpus, end in ((history, n - 1), (also, None)):
            if corpus is None:
                continue
            begin = _follows(corpus[:end], tail)
            if begin >= 0:
                stop = n if corpus is history else len(corpus)
                return corpus[begin:min(begin + k, stop)]
    return history[:0]


def _follows(corpus: np.ndarray, tail: np.ndarray) -> int:
    """Where the latest occurrence of tail in corpus ends (the index after it), or -1."""
    g = len(tail)
    starts = np.flatnonzero(corpus[:len(corpus) - g + 1] == tail[0]) if len(corpus) >= g else corpus[:0]
    for j in range(1, g):
        if not starts.size:
            break
        starts = starts[corpus[starts + j] == tail[j]]
    return int(starts[-1]) + g if starts.size else -1


class DraftLength:
    """How many tokens to propose next, from how the last proposals fared: it grows by one
    after a proposal accepted whole and falls to what was accepted (at least one) otherwise,
    so text that never repeats itself costs one extra row now and then, not five."""

    def __init__(self, start: int = 2):
        self.k = start
        self.proposed = 0
        self.accepted = 0

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        self.k = min(MAX_DRAFT, self.k + 1) if accepted == proposed else max(1, accepted)
