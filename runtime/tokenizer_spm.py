"""SentencePiece-style BPE (`tokenizer.ggml.model = llama`: Llama 2, Gemma 3, Phi-3), token-exact
with llama.cpp's llm_tokenizer_spm.

A fragment of text arrives with spaces already escaped to '▁' (and the leading '▁' added when
the vocabulary wants one). It is split into UTF-8 characters, then the adjacent pair whose
concatenation is the vocabulary token with the highest score is joined (leftmost on ties),
again and again, until no adjacent pair forms a token. There is no pre-splitting into words:
tokens may span spaces. A final symbol that is not a token is emitted as its bytes through
the <0xNN> byte tokens.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from edgellm.errors import ModelFileError
from edgellm.runtime.text_index import TextIndex

__all__ = ["SPMEncoder"]


class SPMEncoder:
    """Encodes text fragments with one vocabulary's token scores."""

    def __init__(self, token_ids: TextIndex, scores: Sequence[float], unk_id: int | None):
        self._token_ids = token_ids
        self._scores = scores
        # byte -> token: "<0xNN>", else the byte as a one-character token (llama.cpp's
        # byte_to_token). With neither, llama.cpp throws; we fall back to the unknown token.
        self._byte_ids: list[int | None] = []
        for b in range(256):
            tid = token_ids.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = token_ids.get(chr(b))
            self._byte_ids.append(tid if tid is not None else unk_id)

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of one escaped fragment to `out`."""
        token_ids = self._token_ids
        for symbol in self._merge(text):
            tid = token_ids.get(symbol)
            if tid is not None:
                out.append(tid)
                continue
            for b in symbol.encode("utf-8"):
                tid = self._byte_ids[b]
                if tid is None:
                    raise ModelFileError(
                        f"the vocabulary has no token for byte 0x{b:02X} (no <0x{b:02X}> "
                        "byte token and no unknown token), so this text cannot be encoded"
                    )
                out.append(tid)

    def _merge(self, text: str) -> list[str]:
        symbols = list(text)  # symbols[i] == "" once merged into its left neighbour
        n = len(symbols)
        if n < 2:
            return symbols
        # text -> id, or -1 for no token: the cache first, the vocabulary's table on a miss
        cached, lookup = self._token_ids.cache.get, self._token_ids.lookup
        scores = self._scores
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        # (-score, left, right, length of the joined text): heapq pops the highest score,
        # then the leftmost pair. A popped pair is stale when a side was merged away or has
        # grown since the push (lengths only grow, so equal length means unchanged).
        heap = []
        for i in range(n - 1):
            pair = symbols[i] + symbols[i + 1]
            tid = cached(pair)
            if tid is None:
                tid = lookup(pair)
            if tid >= 0:
                heap.append((-scores[tid], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:  # hot loop: one iteration per candidate merge of the whole fragment
            _, left, right, size = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or len(a) + len(b) != size:
                continue
            symbols[left] = a = a + b
            symbols[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
                c = symbols[after]
                pair = a + c
                tid = cached(pair)
                if tid is None:
                    tid = lookup(pair)
                if tid >= 0:
                    heapq.heappush(heap, (-scores[tid], left, after, len(a) + len(c)))
            before = prev[left]
            if before >= 0:
                c = symbols[before]
                pair = c + a
                tid = cached(pair)
                if tid is None:
                    tid = lookup(pair)
                if tid >= 0:
                    heapq.heappush(heap, (-scores[tid], before, left, len(c) + len(a)))
        return [s for s in symbols if s]
