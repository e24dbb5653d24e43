"""Tokenizers against llama.cpp: its tokenizer test vectors, its library as the oracle (through
llama-cpp-python), and the default model.

The vectors are llama.cpp's models/ggml-vocab-<name>.gguf.inp/.out pairs, read the way
tests/test-tokenizer-0.cpp reads them: inputs separated by "\\n__ggml_vocab_test__\\n", one
line of space-separated ids per input, tokenized with add_special=False, parse_special=False.
"""

from __future__ import annotations

import ctypes
import functools

import gguf
import pytest

from edgellm.errors import EdgeLLMError, ModelFileError
from edgellm.runtime.gguf_file import GGUFFile
from edgellm.runtime.tokenizer import Tokenizer
from edgellm.runtime.tokenizer_bpe import PRE_TOKENIZERS
from llamacpp_assets import llamacpp_models_dir

# The vocabularies the runtime must get right, then every other BPE/SPM vocabulary llama.cpp
# ships vectors for (they cover the other pre-tokenizers and Gemma 4's BPE).
REQUIRED_VOCABS = ["llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2"]
EXTRA_VOCABS = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "mpt",
                "qwen35", "refact", "starcoder"]
VOCABS = REQUIRED_VOCABS + EXTRA_VOCABS
_SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_path(name: str):
    return llamacpp_models_dir() / f"ggml-vocab-{name}.gguf"


def load_metadata(path) -> dict:
    with GGUFFile(path) as f:
        return f.metadata


@functools.cache
def vocab_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_metadata(load_metadata(vocab_path(name)))


@functools.cache
def vector_cases(name: str) -> list[tuple[str, list[int]]]:
    """(input, expected ids) pairs of one vocabulary, in file order."""
    base = vocab_path(name)
    raw = base.with_name(base.name + ".inp").read_bytes().decode("utf-8")
    inputs, pos = [], 0
    while pos < len(raw):
        end = raw.find(_SEPARATOR, pos)
        if end < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:end])
        pos = end + len(_SEPARATOR)
    lines = base.with_name(base.name + ".out").read_bytes().decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    assert len(inputs) == len(lines), f"{name}: {len(inputs)} inputs, {len(lines)} outputs"
    return [(text, [int(t) for t in line.strip().split(" ")] if line.strip() else [])
            for text, line in zip(inputs, lines)]


VECTOR_PARAMS = [pytest.param(name, i, id=f"{name}-{i:02d}")
                 for name in VOCABS for i in range(len(vector_cases(name)))]


@pytest.mark.parametrize("name,index", VECTOR_PARAMS)
def test_llamacpp_vector_encodes_exactly(name, index):
    text, expected = vector_cases(name)[index]
    got = vocab_tokenizer(name).encode(text, add_special=False, parse_special=False)
    assert got == expected, f"input {text!r}"


# ---- llama.cpp itself as the oracle ------------------------------------------------------


class LlamaCppVocab:
    """A vocabulary loaded by llama.cpp (vocab_only), called through llama-cpp-python's C API."""

    def __init__(self, path):
        import llama_cpp

        self.lib = llama_cpp
        self.llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self.lib.llama_token * cap)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special,
                                    parse_special)
        assert n >= 0
        return list(buf[:n])

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.lib.llama_token * max(len(ids), 1))(*ids)
        cap = 64 + 64 * len(ids)
        buf = ctypes.create_string_buffer(cap)
        n = self.lib.llama_detokenize(self.vocab, arr, len(ids), buf, cap, remove_special,
                                      unparse_special)
        assert n >= 0
        return buf.raw[:n]

    def piece(self, token_id: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self.vocab, token_id, buf, 256, 0, True)
        assert n >= 0
        return buf.raw[:n]

    def special_id(self, fn) -> int | None:
        tid = fn(self.vocab)
        return None if tid < 0 else tid


@functools.cache
def llamacpp_vocab(name: str) -> LlamaCppVocab:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    return LlamaCppVocab(vocab_path(name))


# Texts beyond the vectors: special-token texts, the phi-3 rstrip rule, clean-up patterns.
ORACLE_TEXTS = [
    "Hello , world ! Is it ? Yes . It 's , I 'm , we 're , you 've , don 't , we 'll , a ' b",
    "<s>Hello</s> <|endoftext|> <|im_start|>user\nHi<|im_end|>\n<|user|>\n  Hi<|end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "  leading spaces, trailing spaces  \n\n\n\ttabs\r\nwindows ▁ visible space",
    "mixed: Ελληνικά, русский, 日本語テキスト, 한국어, עברית, 🦙🚀😶‍🌫️, \u0301 combining",
    "numbers 1 12 123 1234 12345 3.14159 -7 1e10 0x1F",
]


@pytest.mark.parametrize("parse_special", [False, True], ids=["text", "parse_special"])
@pytest.mark.parametrize("name", VOCABS)
def test_encode_matches_llamacpp(name, parse_special):
    oracle = llamacpp_vocab(name)
    tok = vocab_tokenizer(name)
    for text in ORACLE_TEXTS + [text for text, _ in vector_cases(name)]:
        for add_special in (False, True):
            assert tok.encode(text, add_special, parse_special) == \
                oracle.tokenize(text, add_special, parse_special), \
                f"{text!r} add_special={add_special}"


@pytest.mark.parametrize("name", VOCABS)
def test_decode_matches_llamacpp(name):
    oracle = llamacpp_vocab(name)
    tok = vocab_tokenizer(name)
    for text in ORACLE_TEXTS + [text for text, _ in vector_cases(name)]:
        ids = tok.encode(text, add_special=True, parse_special=True)
        for skip_special in (False, True):
            expected = oracle.detokenize(ids, remove_special=skip_special,
                                         unparse_special=not skip_special)
            assert tok.decode(ids, skip_special=skip_special) == \
                expected.decode("utf-8", "replace"), f"{text!r} skip_special={skip_special}"


@pytest.mark.parametrize("name", VOCABS)
def test_special_tokens_match_llamacpp(name):
    oracle = llamacpp_vocab(name)
    tok = vocab_tokenizer(name)
    lib = oracle.lib
    assert tok.vocab_size == oracle.n_tokens
    assert tok.bos_id == oracle.special_id(lib.llama_vocab_bos)
    assert tok.eos_id == oracle.special_id(lib.llama_vocab_eos)
    # When several texts qualify as EOT (<|im_end|> and <|endoftext|>), llama.cpp's pick
    # follows its hash map's order; ours is the lowest id. Both are end-of-generation.
    eot = oracle.special_id(lib.llama_vocab_eot)
    assert (tok.eot_id is None) == (eot is None)
    assert eot is None or eot in tok.eog_ids and tok.eot_id in tok.eog_ids
    assert tok.add_bos == lib.llama_vocab_get_add_bos(oracle.vocab)
    assert tok.add_eos == lib.llama_vocab_get_add_eos(oracle.vocab)
    eog = {t for t in range(oracle.n_tokens) if lib.llama_vocab_is_eog(oracle.vocab, t)}
    assert tok.eog_ids == eog


@pytest.mark.parametrize("name", REQUIRED_VOCABS)
def test_every_token_piece_matches_llamacpp(name):
    oracle = llamacpp_vocab(name)
    tok = vocab_tokenizer(name)
    for tid in range(tok.vocab_size):
        assert tok.token_to_piece(tid) == oracle.piece(tid), f"token {tid} {tok.token_text(tid)!r}"


def write_small_bpe_vocab(path, pre: str) -> None:
    """GPT-2's first 3000 tokens and the merges that make them, plus three control tokens,
    as a GGUF with tokenizer.ggml.pre = `pre` and no special-token ids (so the defaults apply)."""
    metadata = load_metadata(vocab_path("gpt-2"))
    n = 3000  # GPT-2's merge i makes token 256 + i
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(metadata["tokenizer.ggml.tokens"][:n]
                          + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    writer.add_token_types([1] * n + [3, 3, 3])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"][:n - 256])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_matches_llamacpp(pre, tmp_path):
    """Every tokenizer.ggml.pre we accept splits text and sets BOS/EOS, EOG and the decode
    clean-up as llama.cpp does for that name (on a small GPT-2 vocabulary)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    path = tmp_path / f"{pre}.gguf"
    write_small_bpe_vocab(path, pre)
    tok = Tokenizer.from_metadata(load_metadata(path))
    oracle = LlamaCppVocab(path)
    lib = oracle.lib
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (
        oracle.special_id(lib.llama_vocab_bos), oracle.special_id(lib.llama_vocab_eos),
        lib.llama_vocab_get_add_bos(oracle.vocab), lib.llama_vocab_get_add_eos(oracle.vocab))
    assert tok.eog_ids == {t for t in range(oracle.n_tokens)
                           if lib.llama_vocab_is_eog(oracle.vocab, t)}
    for text in ORACLE_TEXTS + [text for text, _ in vector_cases("gpt-2")]:
        for parse_special in (False, True):
            assert tok.encode(text, True, parse_special) == \
                oracle.tokenize(text, True, parse_special), repr(text)
        ids = oracle.tokenize(text, True, True)
        for skip_special in (False, True):
            assert tok.decode(ids, skip_special) == oracle.detokenize(
                ids, skip_special, not skip_special).decode("utf-8", "replace"), repr(text)


# ---- properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABS)
def test_decode_inverts_encode(name):
    """decode(encode(x)) == x, except where the vocabulary's clean-up changes the text
    (covered exactly by test_bpe_decode_cleans_up_spaces_like_llamacpp)."""
    tok = vocab_tokenizer(name)
    cleaned = (" ?", " !", " .", " ,", " '")
    for text, _ in vector_cases(name):
        if tok.clean_spaces and any(p in text for p in cleaned):
            continue
        assert tok.decode(tok.encode(text, add_special=False)) == text


def test_bpe_decode_cleans_up_spaces_like_llamacpp():
    tok = vocab_tokenizer("gpt-2")
    text = "Hello , world ! Is it ? Yes . It 's , I 'm , we 're , you 've , don 't , a ' b"
    assert tok.decode(tok.encode(text)) == \
        "Hello, world! Is it? Yes. It's, I'm, we're, you've, don 't, a'b"
    assert vocab_tokenizer("qwen2").decode(vocab_tokenizer("qwen2").encode(text)) == text


def test_spm_decode_drops_the_added_space_prefix():
    tok = vocab_tokenizer("llama-spm")
    ids = tok.encode("Hello world")
    assert ids == [1, 15043, 3186]
    assert tok.decode(ids[1:]) == "Hello world"
    assert tok.decode(ids) == "<s> Hello world"
    # llama.cpp keeps the space when it removes a leading BOS.
    assert tok.decode(ids, skip_special=True) == " Hello world"


def test_stream_decoder_holds_bytes_of_a_split_character():
    tok = vocab_tokenizer("llama-spm")
    ids = tok.encode("a🦙b", add_special=False)
    # '🦙' has no token: it is spelled with the byte tokens <0xF0> <0x9F> <0xA6> <0x99>.
    assert [tok.token_text(t) for t in ids] == ["▁a", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "b"]
    stream = tok.stream_decoder()
    assert [stream.feed(t) for t in ids] == [" a", "", "", "", "🦙", "b"]
    assert stream.flush() == ""


def test_stream_decoder_yields_only_whole_cjk_characters():
    tok = vocab_tokenizer("gpt-2")
    text = "我想在apple工作天～"
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    outputs = [stream.feed(t) for t in ids]
    assert "".join(outputs) + stream.flush() == text
    assert "" in outputs  # some character really is split across tokens
    assert all("\ufffd" not in o for o in outputs)
    assert len(ids) > len([o for o in outputs if o])


def test_stream_decoder_flush_replaces_an_unfinished_character():
    tok = vocab_tokenizer("llama-spm")
    stream = tok.stream_decoder()
    assert stream.feed(tok.encode("🦙", add_special=False)[1]) == ""  # <0xF0>
    assert stream.flush() == "\ufffd"
    assert stream.feed(tok.encode("a", add_special=False)[0]) == " a"


def test_stream_decoder_renders_or_skips_control_tokens():
    tok = vocab_tokenizer("llama-spm")
    assert tok.stream_decoder().feed(tok.eos_id) == "</s>"
    assert tok.stream_decoder(skip_special=True).feed(tok.eos_id) == ""


def test_parse_special_turns_control_texts_into_tokens():
    tok = vocab_tokenizer("llama-bpe")
    text = "<|start_header_id|>user<|end_header_id|>"
    assert tok.encode(text, add_special=False, parse_special=True) == [128006, 882, 128007]
    as_text = tok.encode(text, add_special=False, parse_special=False)
    assert 128006 not in as_text and tok.decode(as_text) == text


def test_phi3_special_tokens_swallow_following_whitespace():
    tok = vocab_tokenizer("phi-3")
    user, end = tok.token_id("<|user|>"), tok.token_id("<|end|>")
    ids = tok.encode("<|user|>\n  Hi<|end|>", add_special=False, parse_special=True)
    assert ids[0] == user and ids[-1] == end
    assert tok.decode(ids[1:-1]) == "Hi"


def test_out_of_range_token_is_rejected():
    tok = vocab_tokenizer("gpt-2")
    with pytest.raises(EdgeLLMError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(EdgeLLMError, match="outside the vocabulary"):
        tok.token_to_piece(-1)


@pytest.mark.parametrize("name,model", [("bert-bge", "bert"), ("nomic-bert-moe", "t5")])
def test_unsupported_tokenizer_model_is_rejected(name, model):
    with pytest.raises(EdgeLLMError, match=f"unsupported tokenizer model '{model}'"):
        Tokenizer.from_metadata(load_metadata(vocab_path(name)))


def test_unknown_pre_tokenizer_is_rejected():
    metadata = dict(load_metadata(vocab_path("gpt-2")), **{"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(ModelFileError, match="unsupported BPE pre-tokenizer 'no-such-pre'"):
        Tokenizer.from_metadata(metadata)


# ---- the default model (Gemma 3 270M, SPM, 262144 tokens) ---------------------------------


@pytest.fixture(scope="module")
def default_tokenizer(default_model_path):
    return Tokenizer.from_metadata(load_metadata(default_model_path))


DEFAULT_MODEL_TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  multiple   spaces\n\nnewlines\ttabs\r\n",
    "emoji 🦙🚀 and CJK 我想在apple工作 and Ελληνικά",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
]


def test_default_model_special_tokens(default_tokenizer):
    tok = default_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == \
        (262144, 2, 1, True, False)
    # <eos>, <end_of_turn>, and </s>: llama.cpp ends generation on any token with that text.
    assert tok.eog_ids == {1, 106, 212}
    assert [tok.token_text(t) for t in (1, 106, 212)] == ["<eos>", "<end_of_turn>", "</s>"]


def test_default_model_chat_turn(default_tokenizer):
    tok = default_tokenizer
    text = "<start_of_turn>user\nHi<end_of_turn>\n"
    assert tok.encode(text, parse_special=True) == [2, 105, 2364, 107, 10979, 106, 107]
    assert tok.decode([2, 105, 2364, 107, 10979, 106, 107]) == "<bos>" + text


@pytest.fixture(scope="module")
def default_oracle(default_model_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    return LlamaCppVocab(default_model_path)


@pytest.mark.parametrize("parse_special", [False, True], ids=["text", "parse_special"])
def test_default_model_encodes_like_llama_cpp_python(default_tokenizer, default_oracle,
                                                      parse_special):
    for text in DEFAULT_MODEL_TEXTS:
        expected = default_oracle.llama.tokenize(text.encode("utf-8"), add_bos=True,
                                                 special=parse_special)
        assert default_tokenizer.encode(text, parse_special=parse_special) == expected, repr(text)


def test_default_model_vocabulary_matches_llamacpp(default_tokenizer, default_oracle):
    tok, oracle, lib = default_tokenizer, default_oracle, default_oracle.lib
    assert tok.eog_ids == {t for t in range(oracle.n_tokens)
                           if lib.llama_vocab_is_eog(oracle.vocab, t)}
    assert tok.eot_id == oracle.special_id(lib.llama_vocab_eot)
    for tid in range(tok.vocab_size):
        assert tok.token_to_piece(tid) == oracle.piece(tid), f"token {tid} {tok.token_text(tid)!r}"
