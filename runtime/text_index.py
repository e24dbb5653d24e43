"""text -> position in a StringArray (a vocabulary's tokens, a BPE vocabulary's merges), with
a bounded cache of recent lookups.

StringArray.find hashes the text's bytes (int.from_bytes, a multiply and a modulo), reads the
slots of an open-addressing table (8 B per string) and compares one candidate's bytes: a few
hundred nanoseconds, against ~50 ns for a dict of every text, which would cost ~170 B per
token held (45 MiB for Gemma 3's 262144 tokens). Tokenizing asks about the same few thousand
texts (pieces of words, pairs of symbols) over and over, so the merge loops first look in
`cache` (a dict, misses included) and only call lookup() on a cache miss. The table is built
with the index, at load, so that the first text tokenized does not pay for it.
"""

from __future__ import annotations

from edgellm.runtime.gguf_file import StringArray

__all__ = ["TextIndex", "CACHE_LIMIT"]

# Texts the cache holds before it is dropped wholesale (~100 B each: at most ~1.6 MiB).
CACHE_LIMIT = 1 << 14


class TextIndex:
    """Looks texts up in a StringArray: the first index of a repeated text, or the last with
    last=True (a vocabulary's text -> id map keeps the last, llama.cpp's merge ranks the
    first)."""

    __slots__ = ("strings", "cache", "_last")

    def __init__(self, strings: StringArray, last: bool = False):
        self.strings = strings
        self.cache: dict[str, int] = {}  # text -> index, -1 when absent
        self._last = last
        strings.build_table()

    def lookup(self, text: str) -> int:
        """The index of `text` or -1, from the table (call after a miss in `cache`)."""
        cache = self.cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        i = cache[text] = self.strings.find(text, self._last)
        return i

    def get(self, text: str, default: int | None = None) -> int | None:
        i = self.cache.get(text)
        if i is None:
            i = self.lookup(text)
        return default if i < 0 else i

    def __contains__(self, text: str) -> bool:
        return self.get(text) is not None

    def __len__(self) -> int:
        return len(self.strings)
