"""Byte-level BPE (`tokenizer.ggml.model = gpt2`), token-exact with llama.cpp's llm_tokenizer_bpe.

Encoding one fragment of text (special tokens are already split out by the Tokenizer):

1. pre-tokenize: the regexes chosen by `tokenizer.ggml.pre` cut the text into words. Each
   regex runs inside the pieces left by the previous one, and both its matches and the gaps
   between them become pieces (llama.cpp's unicode_regex_split);
2. byte-encode each word: its UTF-8 bytes mapped to the 256 printable stand-ins GPT-2 uses,
   so a space becomes 'Ġ' (not for gemma4-style BPE, which works on raw UTF-8 with '▁');
3. merge: repeatedly join the adjacent pair of symbols with the lowest merge rank (leftmost
   on ties) until no adjacent pair has a rank; each final symbol is a token, or if it is
   not in the vocabulary, its bytes are looked up one by one.

Words repeat a lot in text, so the ids of each word are cached.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from edgellm.runtime.gguf_file import StringArray
from edgellm.runtime.text_index import TextIndex

__all__ = ["BPEEncoder", "BPEPreTokenizer", "PRE_TOKENIZERS", "BYTE_TO_UNICODE", "UNICODE_TO_BYTE"]


def _byte_to_unicode() -> list[str]:
    """GPT-2's reversible map from bytes to printable characters.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0,
    0xAD) are given the code points 256, 257, ... in byte order, so a space is U+0120 'Ġ'.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    n = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE: list[str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_UNICODE)}
# str.translate table applied to a word decoded as Latin-1 (one char per byte).
_BYTE_ENCODE_TABLE = {b: c for b, c in enumerate(BYTE_TO_UNICODE)}


# Pre-tokenizer regexes, in the `regex` module's syntax. They are the patterns of the models'
# tokenizer.json as llama.cpp runs them: case-insensitive contractions spelled out as '[sS]',
# and the trailing '\s+' that llama.cpp's hand-written GPT-2 splitter applies (a lone
# whitespace before a non-space becomes its own word either way).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# DeepSeek LLM's explicit letter and punctuation sets, verbatim from its tokenizer.json.
_DEEPSEEK_LETTERS = (
    r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    r"\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    r"\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    r"\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    r"\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    r"\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    r"\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    r"\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    r"\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    r"\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    r"\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    r"\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    r"\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"

_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_STARCODER = (r"\p{N}", _GPT2)


@dataclass(frozen=True)
class BPEPreTokenizer:
    """How one `tokenizer.ggml.pre` value splits text, and the vocabulary flags llama.cpp ties
    to it (llama_vocab::impl::load)."""

    patterns: tuple[str, ...]
    clean_spaces: bool = True  # decode drops the space of " ," " ." " 's" ... (HF's clean-up)
    ignore_merges: bool = False  # a word that is itself a token is not merged
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    force_add_bos: bool = False  # add a BOS whatever the file says (Gemma 4)
    has_bos: bool = True  # False: the default BOS id is none
    byte_encode: bool = True  # False: merges run on raw UTF-8 with '▁' for spaces (gemma4)
    newline_words_whole: bool = False  # gemma4: a run of newlines that is a token stays whole


def _pre(patterns, **flags) -> BPEPreTokenizer:
    if isinstance(patterns, str):
        patterns = (patterns,)
    return BPEPreTokenizer(tuple(patterns), **flags)


_LLAMA3_PRE = _pre(_LLAMA3, ignore_merges=True, add_bos=True)
_GPT2_PRE = _pre(_GPT2)
_QWEN2_PRE = _pre(_QWEN2, clean_spaces=False)
_STARCODER_PRE = _pre(_STARCODER)
_GEMMA4_PRE = _pre(r"[^\n]+|\n+", force_add_bos=True, byte_encode=False,
                   newline_words_whole=True)

# tokenizer.ggml.pre -> pre-tokenizer; the groups follow llama_vocab::impl::load. Types that
# need llama.cpp's special-purpose splitters (kimi-k2, afmoe, tiny_aya, superbpe) are absent.
PRE_TOKENIZERS: dict[str, BPEPreTokenizer] = {
    "default": _pre(_DEFAULT),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano"], _LLAMA3_PRE),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _pre(_LLAMA3)),
    "chatglm-bpe": _pre(_LLAMA3, has_bos=False),
    **dict.fromkeys(["glm4", "glm5"], _pre(_LLAMA3, has_bos=False, ignore_merges=True)),
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
                     "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais",
                     "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe"], _GPT2_PRE),
    **dict.fromkeys(["trillion", "granite-docling"], _pre(_GPT2, clean_spaces=False)),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"],
                    _QWEN2_PRE),
    **dict.fromkeys(["stablelm2", "megrez"], _pre(_QWEN2)),
    "qwen35": _pre(_QWEN35, clean_spaces=False),
    **dict.fromkeys(["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"],
                    _STARCODER_PRE),
    **dict.fromkeys(["command-r", "smollm"], _pre(_STARCODER, clean_spaces=False)),
    "falcon": _pre((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    # "\s+$" in tokenizer.json: ECMAScript's $ is the end of the piece, Python's \Z.
    "deepseek-llm": _pre((r"[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT, r"\s+\Z", _CJK,
                          r"\p{N}+"), clean_spaces=False),
    "deepseek-coder": _pre((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
                           clean_spaces=False),
    **dict.fromkeys(["gemma4", "granite-embed-multi-311m"], _GEMMA4_PRE),
}

# Code points assigned after Unicode 15.1, the version of the character tables llama.cpp
# classifies with (its unicode-data.cpp). llama.cpp sees them as unassigned, while the
# `regex` module's newer tables may call them letters or digits; so before the patterns
# that use Unicode categories run, they are replaced with U+0378, unassigned in every
# version. (Ranges: assigned in the `regex` module's Unicode 17, unassigned (Cn) in
# unicodedata2 15.1.0.)
_NEWER_THAN_UNICODE_15_1 = (
    "["
    r"\u088f\u0897\u0c5c\u0cdc\u1acf-\u1add\u1ae0-\u1aeb\u1b4e-\u1b4f\u1b7f\u1c89-\u1c8a"
    r"\u20c1\u2427-\u2429\u2b96\u31e4-\u31e5\ua7cb-\ua7cf\ua7d2\ua7d4\ua7da-\ua7dc\ua7f1"
    r"\ufbc3-\ufbd2\ufd90-\ufd91\ufdc8-\ufdce\U000105c0-\U000105f3\U00010940-\U00010959"
    r"\U00010d40-\U00010d65\U00010d69-\U00010d85\U00010d8e-\U00010d8f\U00010ec2-\U00010ec7"
    r"\U00010ed0-\U00010ed8\U00010efa-\U00010efc\U00011380-\U00011389\U0001138b\U0001138e"
    r"\U00011390-\U000113b5\U000113b7-\U000113c0\U000113c2\U000113c5\U000113c7-\U000113ca"
    r"\U000113cc-\U000113d5\U000113d7-\U000113d8\U000113e1-\U000113e2\U000116d0-\U000116e3"
    r"\U00011b60-\U00011b67\U00011bc0-\U00011be1\U00011bf0-\U00011bf9\U00011db0-\U00011ddb"
    r"\U00011de0-\U00011de9\U00011f5a\U00013460-\U000143fa\U00016100-\U00016139"
    r"\U00016d40-\U00016d79\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3\U00016ff2-\U00016ff6"
    r"\U000187f8-\U000187ff\U00018cff\U00018d09-\U00018d1e\U00018d80-\U00018df2"
    r"\U0001cc00-\U0001ccfc\U0001cd00-\U0001ceb3\U0001ceba-\U0001ced0\U0001cee0-\U0001cef0"
    r"\U0001e5d0-\U0001e5fa\U0001e5ff\U0001e6c0-\U0001e6de\U0001e6e0-\U0001e6f5"
    r"\U0001e6fe-\U0001e6ff\U0001f6d8\U0001f777-\U0001f77a\U0001f8b2-\U0001f8bb"
    r"\U0001f8c0-\U0001f8c1\U0001f8d0-\U0001f8d8\U0001fa54-\U0001fa57\U0001fa89-\U0001fa8a"
    r"\U0001fa8e-\U0001fa8f\U0001fabe\U0001fac6\U0001fac8\U0001facd\U0001fadc\U0001fadf"
    r"\U0001fae9-\U0001faea\U0001faef\U0001fbcb-\U0001fbef\U0001fbfa\U0002b73a-\U0002b73f"
    r"\U0002cea2-\U0002cead\U000323b0-\U00033479"
    "]"
)

# Whitespace beyond ASCII. llama.cpp hands std::regex a copy of the text in which these are
# all U+000B (a character std::regex knows as \s), so an explicit range such as
# [\u3000-\u3002] never matches the ideographic space; we do the same.
_NON_ASCII_SPACE = (r"[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")

_WORD_CACHE_LIMIT = 1 << 16  # words; the cache is dropped wholesale when it grows past this


class BPEEncoder:
    """Encodes text fragments with one vocabulary's merges and pre-tokenizer."""

    def __init__(self, token_ids: TextIndex, merges: StringArray, pre: BPEPreTokenizer):
        self._token_ids = token_ids
        # "left right" -> rank, the merge's index. llama.cpp keeps the first of duplicate
        # merges. Symbols never contain a space (it is 'Ġ' or '▁' by then), so the merge
        # string itself is an unambiguous key.
        self._ranks = TextIndex(merges, last=False)
        # Imported here, by the first BPE vocabulary: the `regex` module costs 1.4 MiB of RSS
        # that an SPM model (Gemma) never needs.
        import regex

        self._non_ascii_space = regex.compile(_NON_ASCII_SPACE)
        self._newer_than_unicode_15_1 = regex.compile(_NEWER_THAN_UNICODE_15_1)
        # (pattern, uses Unicode categories): category patterns see the text as llama.cpp's
        # Unicode 15.1 tables do; explicit code point ranges see the real text.
        self._patterns = [(regex.compile(p), "\\p{" in p) for p in pre.patterns]
        self._pre = pre
        self._cache: dict[str, tuple[int, ...]] = {}

    def pre_tokenize(self, text: str) -> list[str]:
        """Cut text into words: every pattern runs inside every piece of the previous one,
        and both its matches and the gaps between them become pieces."""
        # What the patterns see; one character for one, so offsets carry over to `text`.
        as_seen = as_seen_15_1 = text
        if not text.isascii():
            as_seen = self._non_ascii_space.sub("\x0b", text)
            as_seen_15_1 = self._newer_than_unicode_15_1.sub("\u0378", as_seen)
        spans = [(0, len(text))]
        for pattern, uses_categories in self._patterns:
            subject = as_seen_15_1 if uses_categories else as_seen
            out = []
            for start, end in spans:
                pos = start
                # finditer(s, start, end) behaves like matching s[start:end]: lookaheads
                # and \Z stop at `end`, as llama.cpp's per-piece regex_iterator does.
                for m in pattern.finditer(subject, start, end):
                    m_start, m_end = m.span()
                    if m_start > pos:
                        out.append((pos, m_start))
                    if m_end > m_start:
                        out.append((m_start, m_end))
                    pos = m_end
                if pos < end:
                    out.append((pos, end))
            spans = out
        return [text[start:end] for start, end in spans]

    def encode(self, text: str, out: list[int]) -> None:
        """Append the ids of one fragment of plain text to `out`."""
        cache = self._cache
        for word in self.pre_tokenize(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._encode_word(word)
                if len(cache) >= _WORD_CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        token_ids = self._token_ids
        pre = self._pre
        if pre.byte_encode:
            word = word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE_TABLE)
        if pre.ignore_merges or (pre.newline_words_whole and word.strip("\n") == ""):
            whole = token_ids.get(word)
            if whole is not None:
                return (whole,)
        ids = []
        for symbol in self._merge(word):
            tid = token_ids.get(symbol)
            if tid is not None:
                ids.append(tid)
                continue
            # Not a token: look its bytes up one by one, dropping those with no token, as
            # llama.cpp does. Byte-level vocabularies key a lone byte by its raw character
            # (so only ASCII can match); raw-UTF-8 ones have <0xXX> byte tokens.
            for b in symbol.encode("utf-8"):
                if pre.byte_encode:
                    tid = token_ids.get(chr(b)) if b < 0x80 else None
                else:
                    tid = token_ids.get(f"<0x{b:02X}>")
                if tid is not None:
                    ids.append(tid)
        return tuple(ids)

    def _merge(self, word: str) -> list[str]:
        """The word's symbols after BPE: start from its characters, then keep joining the
        adjacent pair with the lowest rank (leftmost on ties)."""
        symbols = list(word)  # symbols[i] == "" once merged into its left neighbour
        n = len(symbols)
        if n < 2:
            return symbols
        # "left right" -> rank, or -1 for no merge: the cache first, the table on a miss
        cached, lookup = self._ranks.cache.get, self._ranks.lookup
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        # (rank, left, right, length of the joined text): a popped pair is stale when either
        # side was merged away or has grown since it was pushed; lengths only grow, so an
        # unchanged total length means an unchanged pair.
        heap = []
        for i in range(n - 1):
            pair = symbols[i] + " " + symbols[i + 1]
            rank = cached(pair)
            if rank is None:
                rank = lookup(pair)
            if rank >= 0:
                heap.append((rank, i, i + 1, 2))
        heapq.heapify(heap)
        while heap:  # hot loop for long words
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
                pair = a + " " + c
                rank = cached(pair)
                if rank is None:
                    rank = lookup(pair)
                if rank >= 0:
                    heapq.heappush(heap, (rank, left, after, len(a) + len(c)))
            before = prev[left]
            if before >= 0:
                c = symbols[before]
                pair = c + " " + a
                rank = cached(pair)
                if rank is None:
                    rank = lookup(pair)
                if rank >= 0:
                    heapq.heappush(heap, (rank, before, left, len(c) + len(a)))
        return [s for s in symbols if s]
