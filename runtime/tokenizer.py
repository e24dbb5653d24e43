"""Tokenizers built from GGUF metadata, token-exact with llama.cpp (src/llama-vocab.cpp).

    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    ids = tok.encode("Hello")                 # [2, 9259] with Gemma 3: <bos>, "Hello"
    tok.decode(ids)                           # "<bos>Hello"
    tok.decode(ids, skip_special=True)        # "Hello"

What lives here is what llama.cpp does around the two algorithms (tokenizer_spm.py for
`llama` vocabularies, tokenizer_bpe.py for `gpt2` and `gemma4` ones):

- loading: token attributes from token types, special-token ids and their defaults per
  model type, the end-of-generation set found by token text, the tokens whose text makes
  them control tokens, and the per-model lstrip/rstrip attributes;
- encoding: special tokens are cut out of the text first (tokenizer_st_partition), longest
  first; with parse_special=False only USER_DEFINED tokens are cut (as Hugging Face does);
- decoding: a token's piece (llama_token_to_piece), the leading-space strip of SPM
  vocabularies and the clean-up of " ." " 's" ... some BPE vocabularies ask for.

Building makes no Python object per vocabulary entry (Gemma 3 has 262144 tokens): the texts
stay a StringArray (offsets into the mapped GGUF file), text -> id goes through its hash
table (text_index.TextIndex, with a cache of recent lookups), attributes and scores are
flat arrays, and pieces are made on first use and kept.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

import numpy as np

from edgellm.errors import EdgeLLMError, ModelFileError
from edgellm.runtime.gguf_file import StringArray
from edgellm.runtime.text_index import TextIndex
from edgellm.runtime.tokenizer_bpe import PRE_TOKENIZERS, UNICODE_TO_BYTE, BPEEncoder
from edgellm.runtime.tokenizer_spm import SPMEncoder

__all__ = ["Tokenizer", "StreamDecoder"]

# Token attributes, as llama.cpp's llama_token_attr bits.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF tokenizer.ggml.token_type (0 undefined, 1 normal, 2 unknown, 3 control,
# 4 user defined, 5 unused, 6 byte) -> attribute; other values are undefined.
_ATTR_OF_TYPE = np.array([ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL,
                          ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE], dtype=np.int32)

_SPACE = "\u2581"  # '▁', SentencePiece's visible space
_C_SPACES = " \t\n\v\f\r"  # C isspace(), what llama.cpp's lstrip/rstrip remove

# Tokens llama.cpp recognises by their text (llama_vocab::impl::load).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
              "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
              "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss

_SPECIAL_ID_KEYS = {  # tokenizer.ggml.<key> -> our name; the deprecated FIM keys last
    "bos_token_id": "bos", "eos_token_id": "eos", "eot_token_id": "eot",
    "eom_token_id": "eom", "unknown_token_id": "unk", "seperator_token_id": "sep",
    "padding_token_id": "pad", "mask_token_id": "mask",
    "fim_pre_token_id": "fim_pre", "fim_suf_token_id": "fim_suf",
    "fim_mid_token_id": "fim_mid", "fim_pad_token_id": "fim_pad",
    "fim_rep_token_id": "fim_rep", "fim_sep_token_id": "fim_sep",
    "prefix_token_id": "fim_pre", "suffix_token_id": "fim_suf", "middle_token_id": "fim_mid",
}

_SUPPORTED_MODELS = "'llama' (SentencePiece), 'gpt2' (byte-level BPE) and 'gemma4'"


class Tokenizer:
    """A model's vocabulary: text <-> token ids, exactly as llama.cpp tokenizes.

    Build it with Tokenizer.from_metadata(metadata).
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool  # encode(add_special=True) starts with bos_id
    add_eos: bool  # encode(add_special=True) ends with eos_id
    add_space_prefix: bool  # SPM: text gets a leading space; decode drops it again
    clean_spaces: bool  # decode removes the space in " ," " ." " 's" ... (some BPE vocabularies)
    eog_ids: frozenset[int]  # tokens that end generation
    model: str  # tokenizer.ggml.model
    pre: str  # the pre-tokenizer in use (BPE), "default" for SPM

    @classmethod
    def from_metadata(cls, metadata: dict) -> Tokenizer:
        """Build the tokenizer from a GGUF metadata dict (GGUFFile(path).metadata)."""
        return cls(metadata)

    def __init__(self, metadata: dict):
        def get(key, kind, default=None):
            value = metadata.get("tokenizer.ggml." + key, default)
            if value is not default and not isinstance(value, kind):
                raise ModelFileError(f"tokenizer.ggml.{key} has the wrong type "
                                     f"({type(value).__name__})")
            return value

        model = get("model", str)
        if model is None:
            raise ModelFileError("the model file has no tokenizer (tokenizer.ggml.model is "
                                 "missing); use a GGUF converted with its vocabulary")
        pre_name = get("pre", str, "")
        texts = get("tokens", (StringArray, list))
        if not texts:
            raise ModelFileError("the model file has no vocabulary (tokenizer.ggml.tokens)")
        if not isinstance(texts, StringArray):
            texts = StringArray.from_strings(texts)
        n = len(texts)
        self.vocab_size = n
        self.model = model

        # Per-model-type defaults (llama.cpp: special ids, then the tokenizer flags).
        special = dict.fromkeys(["bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
                                 "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep",
                                 "fim_sep"])
        self.add_space_prefix = False
        self.add_bos = False
        self.add_eos = False
        self._escape_whitespaces = False
        self.clean_spaces = False
        if model == "llama":
            self._is_spm = True
            special.update(bos=1, eos=2, unk=0)
            self.add_space_prefix = True
            self.add_bos = True
            self.pre = "default"
        elif model in ("gpt2", "gemma4"):
            self._is_spm = False
            if model == "gemma4":
                pre_name = "gemma4"
            else:
                special.update(bos=11, eos=11)
                pre_name = pre_name or "default"  # llama.cpp warns that quality will suffer
            pre = PRE_TOKENIZERS.get(pre_name)
            if pre is None:
                raise ModelFileError(
                    f"unsupported BPE pre-tokenizer '{pre_name}' (tokenizer.ggml.pre); "
                    f"edgellm knows: {', '.join(sorted(PRE_TOKENIZERS))}")
            if not pre.has_bos:
                special["bos"] = None
            self.pre = pre_name
            self.add_bos = pre.add_bos
            self.clean_spaces = pre.clean_spaces
            self._escape_whitespaces = not pre.byte_encode
        else:
            raise ModelFileError(f"unsupported tokenizer model '{model}' "
                                 f"(tokenizer.ggml.model): edgellm reads {_SUPPORTED_MODELS} "
                                 "vocabularies")
        self.add_space_prefix = get("add_space_prefix", bool, self.add_space_prefix)

        # Texts: llama.cpp renames empty ones so that every text maps to one id; when a
        # text repeats, the last id wins.
        byte_lengths = texts.lengths  # (n_vocab,)
        if not byte_lengths.all():
            texts = StringArray.from_strings([t or f"[EMPTY_{i}]" for i, t in enumerate(texts)])
            byte_lengths = texts.lengths
        self._texts: StringArray = texts
        self._token_ids = token_ids = TextIndex(texts, last=True)

        attrs = _attributes_of_types(metadata.get("tokenizer.ggml.token_type"), n)

        # Special ids from metadata; a default outside the vocabulary is dropped, an
        # out-of-range id in the file keeps the default.
        for name, tid in special.items():
            if tid is not None and tid >= n:
                special[name] = None
        for key, name in _SPECIAL_ID_KEYS.items():
            value = metadata.get("tokenizer.ggml." + key)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                    and 0 <= value < n:
                special[name] = int(value)
        self.add_bos = get("add_bos_token", bool, self.add_bos)
        self.add_eos = get("add_eos_token", bool, self.add_eos)
        if not self._is_spm and PRE_TOKENIZERS[self.pre].force_add_bos:
            self.add_bos = True  # llama.cpp overrides the file for Gemma 4

        eog = _find_tokens_by_text(texts, token_ids, attrs, special)

        # Special tokens cut out of text before tokenizing, longest (in bytes) first.
        special_ids = np.nonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))[0]
        special_ids = sorted(special_ids.tolist(), key=lambda t: (-int(byte_lengths[t]), t))
        _apply_strip_attributes(metadata, token_ids, attrs, special_ids)

        # (n_vocab,) llama_token_attr; a memoryview indexes as Python ints, fast
        self._attrs = memoryview(np.ascontiguousarray(attrs, dtype=np.uint16))  # the ATTR_ bits
        # (id, text, lstrip, rstrip) in partition order; control and unknown tokens are cut
        # only with parse_special=True.
        self._specials_all = [(t, texts[t], bool(self._attrs[t] & ATTR_LSTRIP),
                               bool(self._attrs[t] & ATTR_RSTRIP)) for t in special_ids]
        self._specials_user = [s for s in self._specials_all
                               if not self._attrs[s[0]] & (ATTR_CONTROL | ATTR_UNKNOWN)]

        self.bos_id = special["bos"]
        self.eos_id = special["eos"]
        self.eot_id = special["eot"]
        self.unk_id = special["unk"]
        self.pad_id = special["pad"]
        self.eog_ids = frozenset(eog)
        self._pieces: dict[int, bytes] = {}  # token -> piece, filled on first use

        if self._is_spm:
            scores = metadata.get("tokenizer.ggml.scores")
            if scores is None:
                scores = [0.0] * n
            elif len(scores) < n:
                raise ModelFileError(f"tokenizer.ggml.scores has {len(scores)} entries for "
                                     f"{n} tokens")
            else:  # (n_vocab,) float32 shared with the metadata, read as Python floats (exactly);
                # the metadata's array may be an unaligned view of the file, which numpy
                # exports as "=f", a format memoryview cannot index: cast it back to "f"
                scores = memoryview(np.ascontiguousarray(np.asarray(scores, dtype=np.float32)[:n])).cast("B").cast("f")
            self._spm = SPMEncoder(token_ids, scores, self.unk_id)
        else:
            merges = metadata.get("tokenizer.ggml.merges")
            if isinstance(merges, list):
                merges = StringArray.from_strings(merges)
            if not isinstance(merges, StringArray):
                raise ModelFileError("the BPE vocabulary has no merges (tokenizer.ggml.merges); "
                                     "reconvert the model")
            self._bpe = BPEEncoder(token_ids, merges, PRE_TOKENIZERS[self.pre])

    # ---- encoding -------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS as the model asks (add_bos/add_eos); parse_special turns
        control-token texts such as "<start_of_turn>" into their tokens (user-defined tokens
        are always recognised).
        """
        if not isinstance(text, str):
            raise EdgeLLMError(f"encode() takes text (str), not {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise EdgeLLMError("the text contains a lone surrogate code point, which is not "
                               "valid Unicode; decode the input with errors='replace'") from None
        fragments = self._partition(text, parse_special) if text else []
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise EdgeLLMError("the model asks for a BOS token but its vocabulary has none; "
                                   "encode with add_special=False")
            out.append(self.bos_id)
        if self._is_spm:
            prev_special = True  # the first fragment, and any after a special token, gets a space
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    fragment = " " + fragment
                self._spm.encode(fragment.replace(" ", _SPACE), out)
                prev_special = False
        else:
            for fragment in fragments:
                if isinstance(fragment, int):
                    out.append(fragment)
                elif self._escape_whitespaces:
                    self._bpe.encode(fragment.replace(" ", _SPACE), out)
                else:
                    self._bpe.encode(fragment, out)
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise EdgeLLMError("the model asks for an EOS token but its vocabulary has none; "
                                   "encode with add_special=False")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of `text`: a list of plain-text fragments and ids.

        Tokens are taken longest first, each cut everywhere before the next one is looked
        for. A token with lstrip/rstrip also removes the whitespace before/after it.
        """
        fragments: list[str | int] = [text]
        for tid, token, lstrip, rstrip in (self._specials_all if parse_special
                                           else self._specials_user):
            if token not in text:  # fragments are pieces of text, so none can hold it
                continue
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token not in fragment:
                    cut.append(fragment)
                    continue
                pos = 0
                while (match := fragment.find(token, pos)) >= 0:
                    left = fragment[pos:match]
                    if lstrip:
                        left = left.rstrip(_C_SPACES)
                    if left:
                        cut.append(left)
                    cut.append(tid)
                    pos = match + len(token)
                    if rstrip:
                        while pos < len(fragment) and fragment[pos] in _C_SPACES:
                            pos += 1
                if pos < len(fragment):
                    cut.append(fragment[pos:])
            fragments = cut
        return fragments

    # ---- decoding -------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The token's text in the vocabulary, e.g. '▁Hello', 'ĠHello', '<0x0A>'."""
        self._check_id(token_id)
        return self._texts[token_id]

    def token_to_piece(self, token_id: int) -> bytes:
        """The bytes the token stands for (llama_token_to_piece with special=True): special
        tokens render as their text, byte tokens as their byte, '▁'/'Ġ' as spaces."""
        return self._piece(token_id, True)

    def token_id(self, text: str) -> int | None:
        """The id of the token whose vocabulary text is `text` ('<end_of_turn>'), or None."""
        return self._token_ids.get(text)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of a token sequence, as llama_detokenize(ids, remove_special=skip_special,
        unparse_special=not skip_special).

        skip_special drops control tokens (BOS, <end_of_turn>, ...). SPM vocabularies drop the
        leading space the encoder added (only when the sequence does not start with a removed
        BOS, as in llama.cpp). Bytes that are not valid UTF-8 become U+FFFD.
        """
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        special = not skip_special
        parts = []
        for tid in ids:
            piece = self._piece(tid, special)
            if remove_space and piece[:1] == b" ":
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        data = b"".join(parts)
        if self.clean_spaces:
            data = _clean_up_spaces(data)
        return data.decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        """A decoder for generated tokens, one at a time (see StreamDecoder)."""
        return StreamDecoder(self, skip_special)

    def _check_id(self, token_id: int) -> None:
        if not (isinstance(token_id, (int, np.integer)) and 0 <= token_id < self.vocab_size):
            raise EdgeLLMError(f"token id {token_id!r} is outside the vocabulary "
                               f"(0..{self.vocab_size - 1})")

    def _piece(self, token_id: int, special: bool) -> bytes:
        self._check_id(token_id)
        attr = self._attrs[token_id]
        if not special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id, attr)
        return piece

    def _make_piece(self, token_id: int, attr: int) -> bytes:
        text = self._texts[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            if self._is_spm or self._escape_whitespaces:
                return text.replace(_SPACE, " ").encode("utf-8")
            return _byte_decode(text)
        if attr & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16)])  # "<0xNN>"
            except ValueError:
                return b""  # a byte token with some other text: nothing to render
        return b""  # unused and undefined tokens render as nothing


def _attributes_of_types(token_types, n: int) -> np.ndarray:
    """(n,) int32 llama_token_attr from tokenizer.ggml.token_type (all normal without it)."""
    if token_types is None:
        return np.full(n, ATTR_NORMAL, dtype=np.int32)
    token_types = np.asarray(token_types)
    if len(token_types) < n:
        raise ModelFileError(f"tokenizer.ggml.token_type has {len(token_types)} entries for "
                             f"{n} tokens")
    token_types = token_types[:n]
    known = (token_types >= 0) & (token_types < len(_ATTR_OF_TYPE))
    return np.where(known, _ATTR_OF_TYPE[np.where(known, token_types, 0)],
                    ATTR_UNDEFINED).astype(np.int32)


def _find_tokens_by_text(texts: StringArray, token_ids: TextIndex, attrs: np.ndarray,
                         special: dict[str, int | None]) -> set[int]:
    """What llama.cpp infers from token texts: fills the EOT/EOM/FIM roles the file leaves
    open, marks those tokens control (and control tokens named "unused" unused), and returns
    the end-of-generation set. Updates `attrs` and `special` in place."""

    def ids_of(candidates):
        return sorted({tid for t in candidates if (tid := token_ids.get(t)) is not None})

    # llama.cpp walks a hash map, so when several texts qualify for one role its pick is
    # arbitrary; ours is the lowest id.
    for name, candidates in [("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()]:
        if special[name] is None:
            found = ids_of(candidates)
            if found:
                special[name] = found[0]
                attrs[found[0]] |= ATTR_CONTROL
    for tid in np.nonzero(attrs & ATTR_CONTROL)[0].tolist():
        if "unused" in texts[tid]:
            attrs[tid] |= ATTR_UNUSED

    eog = {special[k] for k in ("fim_pad", "fim_rep", "fim_sep") if special[k] is not None}
    for tid in ids_of(_EOG_TEXTS):
        eog.add(tid)
        attrs[tid] |= ATTR_CONTROL
    for tid in ids_of(_ALWAYS_RENDERED):
        attrs[tid] = ATTR_USER_DEFINED
    eog.update(special[k] for k in ("eos", "eot", "eom") if special[k] is not None)

    eog_texts = {texts[t]: t for t in eog}
    # With <|return|> and <|call|> (gpt-oss), or <|calls|> and <|flush|> (solar-open),
    # <|end|> ends a message, not the generation.
    if "<|end|>" in eog_texts and ("<|call|>" in eog_texts or "<|calls|>" in eog_texts) \
            and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        end = eog_texts.pop("<|end|>")
        eog.discard(end)
        attrs[end] = ATTR_USER_DEFINED
    # Gemma 4 and PLaMo 2 have an ordinary </s>.
    if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
        eog.discard(eog_texts["</s>"])
        attrs[eog_texts["</s>"]] = ATTR_NORMAL
    return eog


def _apply_strip_attributes(metadata: dict, token_ids: TextIndex, attrs: np.ndarray,
                            special_ids: list[int]) -> None:
    """Per-model lstrip/rstrip attributes (not stored in GGUF; llama.cpp sets them by name)."""
    name = str(metadata.get("general.name", "")).lower()
    pre = str(metadata.get("tokenizer.ggml.pre", ""))
    arch = str(metadata.get("general.architecture", ""))

    def set_attr(text, bit, on):
        tid = token_ids.get(text)
        if tid is not None:
            attrs[tid] = attrs[tid] | bit if on else attrs[tid] & ~bit

    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        set_attr("<mask>", ATTR_LSTRIP, True)
    elif "phi-3" in name or "phi3" in name:
        # Phi-3's special tokens swallow the whitespace after them.
        for tid in special_ids:
            attrs[tid] |= ATTR_RSTRIP
        set_attr("</s>", ATTR_RSTRIP, True)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            set_attr(text, ATTR_RSTRIP, False)
    elif "modern-bert" in name:
        set_attr("[MASK]", ATTR_LSTRIP, True)


class StreamDecoder:
    """Decodes generated tokens one by one into text.

    feed() returns only complete UTF-8 characters: the bytes of a character split across
    tokens (an emoji as three byte tokens, say) are held until it is whole. Pieces are joined
    as they are: no leading-space strip, no clean-up. Invalid UTF-8 becomes U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._special = not skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer._piece(token_id, self._special))

    def flush(self) -> str:
        """Whatever is held back (an unfinished character becomes U+FFFD); resets the decoder."""
        return self._utf8.decode(b"", final=True)


def _byte_decode(text: str) -> bytes:
    """Bytes of a byte-level BPE token text ('Ġ' -> b' '), as llama_decode_text."""
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in text)
    except KeyError:
        pass
    out = bytearray()
    for c in text:
        b = UNICODE_TO_BYTE.get(c)
        if b is not None:
            out.append(b)
        else:  # llama.cpp's marker for a character outside the byte map
            out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


_SPACE_BEFORE_PUNCT = re.compile(rb" (?=[?!.,])")
_SPACE_BEFORE_CONTRACTION = re.compile(rb" (?='[sm]|'re|'ve)")


def _clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces: three passes over the bytes.

    1. " ?" " !" " ." " ," lose the space;
    2. a quote between two spaces, " ' ", loses both spaces;
    3. " 's" " 'm" " 're" " 've" lose the space (" 't" " 'd" " 'll" keep it).
    """
    text = _SPACE_BEFORE_PUNCT.sub(b"", text)
    if b" ' " in text:
        # Pass 2 compacts in place and zeroes the byte after each removed quote, so in
        # " ' ' " the second quote no longer sees a space before it; keep that exactly.
        buf = bytearray(text)
        n, total, i = len(buf), 1, 1
        while i < n:
            x = buf[i]
            if x == ord("'") and i + 1 < n and buf[i - 1] == ord(" ") == buf[i + 1]:
                total -= 1
                i += 1
                buf[i] = 0
            buf[total] = x
            total += 1
            i += 1
        text = bytes(buf[:total])
    return _SPACE_BEFORE_CONTRACTION.sub(b"", text)
