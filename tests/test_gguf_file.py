"""GGUFFile: a corpus of malformed files, the default model, and agreement with gguf.GGUFReader."""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, GGUFValueType as VT

from edgellm.errors import ModelFileError
from edgellm.kernels.ggml_types import GGML_TYPES
from edgellm.runtime.gguf_file import GGUFFile, GGUFValueType, StringArray, TensorInfo


# -- a byte-level GGUF builder for crafting malformed files ----------------------------------


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, VT.STRING, gstr(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, VT.UINT32, u32(value))


def kv_array(key: str, etype: int, values: list, count: int | None = None) -> bytes:
    if etype == VT.STRING:
        body = b"".join(gstr(v) for v in values)
    else:
        body = b"".join(struct.pack("<" + {VT.UINT32: "I", VT.FLOAT32: "f"}[etype], v)
                        for v in values)
    return kv(key, VT.ARRAY, u32(etype) + u64(len(values) if count is None else count) + body)


def tinfo(name: str | bytes, shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (gstr(name) + u32(len(shape)) + b"".join(u64(d) for d in shape)
            + u32(ggml_type) + u64(offset))


ARCH = kv_str("general.architecture", "llama")


def gguf_bytes(kvs=(ARCH,), tensors=(), data=b"", *, magic=b"GGUF", version=3,
               n_tensors=None, n_kv=None, alignment=32) -> bytes:
    head = (magic + u32(version) + u64(len(tensors) if n_tensors is None else n_tensors)
            + u64(len(kvs) if n_kv is None else n_kv))
    body = head + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % alignment)
    return body + data


def one_tensor(shape=(32, 2), ggml_type=QT.F32, offset=0, data_len=None, kvs=(ARCH,), **kw):
    """A file with one tensor `w`; its data is as long as the tensor needs unless told."""
    blk, size = GGML_QUANT_SIZES[QT(ggml_type)] if ggml_type in QT._value2member_map_ else (1, 4)
    need = math.prod(shape) // blk * size
    return gguf_bytes(kvs, [tinfo("w", shape, ggml_type, offset)],
                      bytes(need if data_len is None else data_len), **kw)


def write_gguf_with_writer(path: Path, alignment: int | None = None) -> Path:
    """A small valid model written by the independent gguf.GGUFWriter."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(2)
    w.add_name("tiny")
    w.add_token_list(["<unk>", "a", "é", "▁b"])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 64), dtype=np.float32))
    q = gguf.quants.quantize(rng.standard_normal((3, 64), dtype=np.float32), QT.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=QT.Q8_0)  # q: (3, 68) bytes
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _writer_file_truncated(tmp: Path) -> bytes:
    raw = write_gguf_with_writer(tmp / "full.gguf").read_bytes()
    return raw[:-100]


def _writer_file_cut_in_metadata(tmp: Path) -> bytes:
    raw = write_gguf_with_writer(tmp / "full.gguf").read_bytes()
    return raw[:raw.index(b"tokenizer.ggml.tokens") + 40]


def _writer_file_patched(tmp: Path, old: bytes, new: bytes) -> bytes:
    raw = write_gguf_with_writer(tmp / "full.gguf").read_bytes()
    assert raw.count(old) == 1
    return raw.replace(old, new)


# -- the corpus: (id, bytes or a function of a temp dir, the reason the message must state) ---

TOKENS = ["<unk>", "a", "b"]

CORPUS = [
    ("zip_file_bad_magic", b"PK\x03\x04" + bytes(60),
     r"is not a GGUF file \(bad magic b'PK\\x03\\x04'\)"),
    ("text_file_bad_magic", b"#!/bin/sh\necho not a model\n",
     r"is not a GGUF file \(bad magic b'#!/b'\)"),
    ("shorter_than_magic", b"GG", r"is not a GGUF file \(bad magic b'GG'\)"),
    ("header_truncated", b"GGUF" + u32(3) + u64(0), r"shorter than the 24-byte GGUF header"),
    ("version_1", gguf_bytes(version=1), r"unsupported GGUF version 1 .*re-convert"),
    ("version_4", gguf_bytes(version=4), r"unsupported GGUF version 4 \(supported: 2 and 3\)"),
    ("version_big_endian", gguf_bytes(version=0x03000000), r"version 50331648 .*big-endian"),
    ("n_kv_larger_than_file", gguf_bytes(n_kv=2**40),
     r"header claims 1099511627776 metadata entries, more than the \d+ byte file can hold"),
    ("n_kv_2_pow_63", gguf_bytes(n_kv=2**63), r"header claims 9223372036854775808 metadata"),
    ("n_tensors_larger_than_file", gguf_bytes(n_tensors=1000),
     r"header claims 1000 tensors, more than the \d+ byte file can hold"),
    ("key_length_2_pow_63", gguf_bytes([u64(2**63) + b"general.name"]),
     r"metadata key #0 has length 9223372036854775808, past the end of the file"),
    ("string_value_past_eof",
     gguf_bytes([ARCH, kv("general.name", VT.STRING, u64(1000) + b"tiny")]),
     r"string value of key 'general.name' has length 1000, past the end of the file"),
    ("string_value_length_2_pow_63",
     gguf_bytes([kv("general.name", VT.STRING, u64(2**63) + b"tiny")]),
     r"string value of key 'general.name' has length 9223372036854775808"),
    ("numeric_array_length_2_pow_63",
     gguf_bytes([ARCH, kv_array("tokenizer.ggml.scores", VT.FLOAT32, [0.0, 1.0], count=2**63)]),
     r"array of key 'tokenizer.ggml.scores' has length 9223372036854775808, past the end"),
    ("string_array_length_2_pow_63",
     gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, TOKENS, count=2**63)]),
     r"array of key 'tokenizer.ggml.tokens' has length 9223372036854775808, past the end"),
    ("string_array_element_past_eof",
     gguf_bytes([ARCH, kv("tokenizer.ggml.tokens", VT.ARRAY,
                          u32(VT.STRING) + u64(3) + gstr("a") + u64(2**63) + bytes(32))]),
     r"string #1 of key 'tokenizer.ggml.tokens' has length 9223372036854775808, past the end"),
    ("string_array_ends_between_strings",
     gguf_bytes([ARCH, kv("tokenizer.ggml.tokens", VT.ARRAY,
                          u32(VT.STRING) + u64(3) + gstr("a") + gstr("x" * 20))]),
     r"file is truncated inside string #2 of key 'tokenizer.ggml.tokens'"),
    ("invalid_utf8_in_key", gguf_bytes([kv(b"general.\xff\xfename", VT.UINT32, u32(1))]),
     r"metadata key #0 at offset \d+ is not valid UTF-8"),
    ("invalid_utf8_in_string_value", gguf_bytes([ARCH, kv_str("general.name", b"caf\xc3")]),
     r"string value of key 'general.name' at offset \d+ is not valid UTF-8"),
    ("invalid_utf8_in_token",
     gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, [b"a", b"b", b"\xed\xa0\x80"])]),
     r"string #2 of key 'tokenizer.ggml.tokens' at offset \d+ is not valid UTF-8"),
    # An array's strings are checked together: a character cut between two strings is not
    # valid in either.
    ("utf8_character_split_across_tokens",
     gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, [b"a", b"\xc3", b"\xa9b"])]),
     r"string #1 of key 'tokenizer.ggml.tokens' at offset \d+ is not valid UTF-8"),
    ("utf8_continuation_starts_a_token",
     gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, [b"\xc3\xa9", b"\xa9", b"c"])]),
     r"string #1 of key 'tokenizer.ggml.tokens' at offset \d+ is not valid UTF-8"),
    ("unknown_value_type", gguf_bytes([ARCH, kv("general.name", 13, u32(0))]),
     r"key 'general.name' has unknown value type 13"),
    ("unknown_array_element_type",
     gguf_bytes([ARCH, kv("general.tags", VT.ARRAY, u32(99) + u64(1) + u32(0))]),
     r"key 'general.tags' is an array of unknown value type 99"),
    ("arrays_nested_too_deep",
     gguf_bytes([kv("general.tags", VT.ARRAY, (u32(VT.ARRAY) + u64(1)) * 5 + u32(VT.UINT8) + u64(0))]),
     r"key 'general.tags' has arrays nested more than 4 deep"),
    ("empty_key", gguf_bytes([ARCH, kv("", VT.UINT32, u32(1))]), r"metadata key #1 is empty"),
    ("duplicate_metadata_key",
     gguf_bytes([ARCH, kv_str("general.name", "a"), kv_str("general.name", "b")]),
     r"duplicate metadata key 'general.name'"),
    ("alignment_not_power_of_two", one_tensor(kvs=(ARCH, kv_u32("general.alignment", 48))),
     r"'general.alignment' is 48, which is not a power of two"),
    ("alignment_zero", one_tensor(kvs=(ARCH, kv_u32("general.alignment", 0))),
     r"'general.alignment' is 0, which is not a power of two"),
    ("alignment_wrong_type", one_tensor(kvs=(ARCH, kv_str("general.alignment", "32"))),
     r"'general.alignment' must be a uint32 but is string"),
    ("five_dims", one_tensor(shape=(32, 1, 1, 1, 2)),
     r"tensor 'w' has 5 dimensions; GGUF tensors have 1 to 4"),
    ("zero_dims", one_tensor(shape=()), r"tensor 'w' has 0 dimensions"),
    ("zero_dim", one_tensor(shape=(32, 0)), r"tensor 'w' has invalid dimension 1 = 0"),
    ("negative_dim", one_tensor(shape=(2**64 - 32, 2), data_len=256),
     r"tensor 'w' has invalid dimension 0 = -32"),
    ("element_count_overflow", one_tensor(shape=(2**32, 2**32), data_len=256),
     r"tensor 'w' shape \(4294967296, 4294967296\) has more than 2\*\*63 elements"),
    ("unknown_tensor_type", one_tensor(ggml_type=99, data_len=256),
     r"tensor 'w' has unknown ggml type 99"),
    ("removed_tensor_type_q4_2", one_tensor(ggml_type=4, data_len=256),
     r"tensor 'w' has unknown ggml type 4"),
    ("row_not_multiple_of_block", one_tensor(shape=(48, 2), ggml_type=QT.Q4_0, data_len=64),
     r"tensor 'w' of type Q4_0 has a row length of 48, not a multiple of its block size 32"),
    ("k_quant_row_not_multiple_of_256", one_tensor(shape=(640, 2), ggml_type=QT.Q4_K, data_len=720),
     r"tensor 'w' of type Q4_K has a row length of 640, not a multiple of its block size 256"),
    ("offset_not_aligned", one_tensor(offset=16, data_len=512),
     r"tensor 'w' data offset 16 is not a multiple of the alignment 32"),
    ("offset_past_eof", one_tensor(offset=2**40, data_len=256),
     r"tensor 'w' data offset 1099511627776 is past the end of the file"),
    ("tensor_data_truncated", one_tensor(shape=(32, 4), data_len=200),
     r"file is truncated: the tensor data needs 512 bytes but only 200 are present"),
    ("overlapping_tensors",
     gguf_bytes([ARCH], [tinfo("a", (32, 2), QT.F32, 0), tinfo("b", (32,), QT.F32, 128)], bytes(512)),
     r"tensors 'a' and 'b' overlap: 'a' spans data bytes \[0, 256\) and 'b' starts at 128"),
    ("two_tensors_same_data",
     gguf_bytes([ARCH], [tinfo("a", (32,), QT.F32, 0), tinfo("b", (32,), QT.F32, 0)], bytes(128)),
     r"tensors 'a' and 'b' overlap"),
    ("duplicate_tensor_name",
     gguf_bytes([ARCH], [tinfo("w", (32,), QT.F32, 0), tinfo("w", (32,), QT.F32, 128)], bytes(256)),
     r"duplicate tensor name 'w'"),
    ("empty_tensor_name", gguf_bytes([ARCH], [tinfo("", (32,), QT.F32, 0)], bytes(128)),
     r"tensor #0 has an empty name"),
    ("tensor_name_too_long", gguf_bytes([ARCH], [tinfo("w" * 65, (32,), QT.F32, 0)], bytes(128)),
     r"tensor name 'w+' is longer than 64 bytes"),
    ("data_section_missing", gguf_bytes([ARCH], n_tensors=1) + tinfo("w", (32, 2), QT.F32, 0),
     r"file is truncated: it ends at byte \d+, before the tensor data section at byte \d+"),
    ("tensor_info_truncated", gguf_bytes([ARCH], n_tensors=1) + tinfo("w", (32, 2), QT.F32, 0)[:-6],
     r"file is truncated inside the info of tensor 'w'"),
    ("writer_file_truncated", _writer_file_truncated,
     r"file is truncated: the tensor data needs \d+ bytes but only \d+ are present \(100 missing\)"),
    ("writer_file_cut_in_metadata", _writer_file_cut_in_metadata,
     r"array of key 'tokenizer.ggml.tokens' has length 4, past the end of the file"),
    ("writer_file_version_patched_to_1",
     lambda tmp: _writer_file_patched(tmp, b"GGUF\x03\x00\x00\x00", b"GGUF\x01\x00\x00\x00"),
     r"unsupported GGUF version 1"),
    ("writer_file_tensor_type_patched",
     # the Q8_0 tensor's info: n_dims 2, ne (64, 3), type 8 -> type 200
     lambda tmp: _writer_file_patched(tmp, u32(2) + u64(64) + u64(3) + u32(QT.Q8_0),
                                      u32(2) + u64(64) + u64(3) + u32(200)),
     r"tensor 'blk.0.attn_q.weight' has unknown ggml type 200"),
]

# Python objects made while failing (exception, traceback, message, path) cost a few KiB
# whatever the file says; anything proportional to a claimed length would be far above this.
FIXED_OVERHEAD_BYTES = 16 * 1024


@pytest.mark.parametrize("name, content, reason", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_file_is_rejected_with_its_reason(tmp_path, name, content, reason):
    raw = content(tmp_path) if callable(content) else content
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(raw)

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFileError, match=reason) as err:
            GGUFFile(path)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert str(err.value).startswith(str(path))
    assert elapsed < 1.0
    assert peak < len(raw) + FIXED_OVERHEAD_BYTES, f"peak {peak} B for a {len(raw)} B file"


def test_corpus_has_at_least_twenty_distinct_reasons():
    assert len({reason for _, _, reason in CORPUS}) >= 20


def test_builder_makes_valid_files_so_corpus_failures_are_the_corruption(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes(
        [ARCH, kv_u32("general.alignment", 64), kv_array("tokenizer.ggml.tokens", VT.STRING, TOKENS)],
        [tinfo("a", (32, 2), QT.F32, 0), tinfo("b", (64,), QT.Q4_0, 256)],
        bytes(256) + bytes(range(36)), alignment=64))
    with GGUFFile(path) as g:
        assert g.metadata == {"general.architecture": "llama", "general.alignment": 64,
                              "tokenizer.ggml.tokens": TOKENS}
        assert g.alignment == 64
        assert g.data_offset % 64 == 0
        assert list(g.tensors) == ["a", "b"]
        b = g.tensor("b")
        assert (b.type, b.shape, b.n_bytes, b.offset) == (QT.Q4_0, (64,), 36, g.data_offset + 256)
        assert b.data.tobytes() == bytes(range(36))


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(ModelFileError, match=r"empty.gguf is empty, not a GGUF model file"):
        GGUFFile(path)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ModelFileError, match=r"is a directory, not a GGUF model file"):
        GGUFFile(tmp_path)


def test_missing_path_is_rejected(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope.gguf: no such file; check the model path"):
        GGUFFile(tmp_path / "nope.gguf")


def test_missing_key_and_tensor_are_reported_with_the_file_name(tmp_path):
    with GGUFFile(write_gguf_with_writer(tmp_path / "m.gguf")) as g:
        with pytest.raises(ModelFileError, match=r"m.gguf: missing required key 'llama.context_length'"):
            g.require("llama.context_length")
        with pytest.raises(ModelFileError, match=r"m.gguf: missing required tensor 'output.weight'"):
            g.tensor("output.weight")
        assert g.get("llama.context_length") is None
        assert g.get("llama.context_length", 2048) == 2048


def test_required_key_of_the_wrong_type_is_reported(tmp_path):
    path = tmp_path / "wrong_type.gguf"
    path.write_bytes(gguf_bytes([ARCH, kv_str("llama.block_count", "18"),
                                 kv_u32("llama.embedding_length", 64),
                                 kv("llama.use_parallel_residual", VT.BOOL, b"\x01"),
                                 kv("llama.rope.freq_base", VT.FLOAT32, struct.pack("<f", 1e4))]))
    with GGUFFile(path) as g:
        assert g.require("llama.block_count") == "18"
        with pytest.raises(ModelFileError,
                           match=r"key 'llama.block_count' must be int but is string \('18'\)"):
            g.require("llama.block_count", int)
        with pytest.raises(ModelFileError, match=r"key 'llama.block_count' must be int"):
            g.get("llama.block_count", 1, int)
        # a bool is not a count, though Python's bool is an int
        with pytest.raises(ModelFileError, match=r"must be int but is bool"):
            g.require("llama.use_parallel_residual", int)
        assert g.require("llama.embedding_length", int) == 64
        # an integer where a float is wanted is accepted as a float
        eps = g.require("llama.embedding_length", float)
        assert eps == 64.0 and type(eps) is float
        assert g.require("llama.rope.freq_base", float) == 10000.0
        assert g.require("llama.block_count", (int, str)) == "18"


def test_version_2_file_is_read_like_version_3(tmp_path):
    raw = write_gguf_with_writer(tmp_path / "v3.gguf").read_bytes()
    (tmp_path / "v2.gguf").write_bytes(raw[:4] + u32(2) + raw[8:])
    with GGUFFile(tmp_path / "v3.gguf") as v3, GGUFFile(tmp_path / "v2.gguf") as v2:
        assert (v3.version, v2.version) == (3, 2)
        assert v2.metadata["tokenizer.ggml.tokens"] == v3.metadata["tokenizer.ggml.tokens"]
        assert [t.data.tobytes() for t in v2.tensors.values()] == \
            [t.data.tobytes() for t in v3.tensors.values()]


def test_custom_alignment_places_tensor_data_on_its_boundaries(tmp_path):
    with GGUFFile(write_gguf_with_writer(tmp_path / "a.gguf", alignment=256)) as g:
        assert g.alignment == 256
        assert g.data_offset % 256 == 0
        assert all(t.offset % 256 == 0 for t in g.tensors.values())


def test_file_without_tensors_loads(tmp_path):
    path = tmp_path / "vocab.gguf"
    path.write_bytes(gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, TOKENS)]))
    with GGUFFile(path) as g:
        assert g.tensors == {}
        assert g.metadata["tokenizer.ggml.tokens"] == TOKENS
        assert g.data_offset == g.file_size == len(path.read_bytes())


def test_string_arrays_are_offsets_into_the_file_and_read_like_lists(tmp_path):
    path = tmp_path / "vocab.gguf"
    texts = ["<unk>", "", "é", "a", "▁the", "a"]
    path.write_bytes(gguf_bytes([ARCH, kv_array("tokenizer.ggml.tokens", VT.STRING, texts)]))
    g = GGUFFile(path)
    tokens = g.require("tokenizer.ggml.tokens", list)
    assert isinstance(tokens, StringArray) and len(tokens) == 6
    assert tokens == texts and list(tokens) == texts and tokens[2] == "é" and tokens[-1] == "a"
    assert tokens[1:3] == ["", "é"] and tokens.lengths.tolist() == [5, 0, 2, 1, 6, 1]
    # each string's bytes sit at its offset in the file, after its u64 length
    raw = path.read_bytes()
    start = raw.index(b"\x05" + bytes(7) + b"<unk>")  # offsets count from here
    assert [raw[start + a:start + b - 8] for a, b in zip(tokens.offsets, tokens.offsets[1:])] \
        == [t.encode() for t in texts]
    assert (tokens.find("é"), tokens.find(""), tokens.find("zz")) == (2, 1, -1)
    assert (tokens.find("a"), tokens.find("a", last=True)) == (3, 5)  # repeated text
    g.close()
    assert tokens[4] == "▁the" and tokens.find("▁the") == 4  # the strings outlive close()


def test_string_array_from_strings_matches_the_file_one(tmp_path):
    texts = [f"t{i}" for i in range(3000)] + ["t7", ""]
    built = StringArray.from_strings(texts)
    assert built == texts and len(built) == 3002 and built[-3] == "t2999"
    assert [built.find(t, last=True) for t in ("t0", "t7", "", "t2999", "none")] == \
        [0, 3000, 3001, 2999, -1]
    assert StringArray.from_strings([]).find("a") == -1


def test_tensor_views_stay_readable_after_close(tmp_path):
    g = GGUFFile(write_gguf_with_writer(tmp_path / "m.gguf"))
    norm = g.tensor("output_norm.weight")
    g.close()
    g.close()  # closing twice is harmless
    assert np.array_equal(norm.data.view(np.float32), np.ones(64, dtype=np.float32))


# -- the default model ----------------------------------------------------------------------


def _mapped_object(a: np.ndarray):
    """The object at the bottom of a numpy view's base chain."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_default_model_metadata_and_tensor_directory(default_model_path):
    with GGUFFile(default_model_path) as g:
        assert g.version == 3
        assert g.alignment == 32
        assert g.require("general.architecture", str) == "gemma3"
        assert g.require("gemma3.block_count", int) == 18
        assert g.require("gemma3.embedding_length", int) == 640
        assert g.require("gemma3.attention.head_count_kv", int) == 1
        assert g.require("gemma3.attention.layer_norm_rms_epsilon", float) == np.float32(1e-6)
        tokens = g.require("tokenizer.ggml.tokens", list)
        assert len(tokens) == 262144
        assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"]
        scores = g.require("tokenizer.ggml.scores", np.ndarray)
        assert scores.dtype == np.float32 and scores.shape == (262144,)
        assert g.require("tokenizer.ggml.token_type", np.ndarray).dtype == np.int32

        assert len(g.tensors) == 236
        emb = g.tensor("token_embd.weight")
        assert (emb.type_name, emb.shape) == ("Q8_0", (640, 262144))
        assert emb.n_rows == 262144
        assert emb.row_bytes == 640 // 32 * 34
        assert emb.n_bytes == 262144 * 680
        assert emb.n_elements == 640 * 262144
        types = {t.type_name for t in g.tensors.values()}
        assert types == {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}
        # tensors tile the data section in file order, each on an alignment boundary
        infos = list(g.tensors.values())
        assert infos[0].offset == g.data_offset
        assert max(t.offset + t.n_bytes for t in infos) <= g.file_size
        assert all(t.offset % 32 == 0 for t in infos)
        assert g.file_size == os.path.getsize(default_model_path)


def test_default_model_tokens_are_found_by_their_text(default_model_path):
    with GGUFFile(default_model_path) as g:
        tokens = g.require("tokenizer.ggml.tokens", list)
        texts = list(tokens)
        assert len(set(texts)) == len(texts) == 262144
        assert all(tokens.find(t) == i for i, t in enumerate(texts))
        assert tokens.find("▁Hello") == 26352 and tokens.find("no such token here") == -1


def test_default_model_tensor_data_is_a_zero_copy_view_of_the_file(default_model_path):
    with GGUFFile(default_model_path) as g, open(default_model_path, "rb") as f:
        infos = list(g.tensors.values())
        for t in (infos[0], infos[len(infos) // 2], infos[-1], g.tensor("token_embd.weight")):
            assert t.data.dtype == np.uint8 and t.data.shape == (t.n_bytes,)
            assert not t.data.flags.owndata and not t.data.flags.writeable
            assert isinstance(_mapped_object(t.data), mmap.mmap)
            whole = np.frombuffer(_mapped_object(t.data), dtype=np.uint8)
            assert np.shares_memory(t.data, whole)
            assert t.data.ctypes.data - whole.ctypes.data == t.offset
            f.seek(t.offset)
            n = min(t.n_bytes, 1 << 20)
            assert t.data[:n].tobytes() == f.read(n)
            f.seek(t.offset + t.n_bytes - n)
            assert t.data[-n:].tobytes() == f.read(n)


def test_default_model_header_parses_fast(default_model_path):
    # gguf.GGUFReader takes ~40 s here; ours is ~0.2 s of CPU. A loose bound catches a
    # regression to per-element parsing without being a benchmark.
    t0 = time.process_time()
    GGUFFile(default_model_path).close()
    assert time.process_time() - t0 < 2.0


# -- agreement with gguf.GGUFReader on a file written by gguf.GGUFWriter -------------------

METADATA = {
    "test.u8": (255, VT.UINT8), "test.i8": (-128, VT.INT8),
    "test.u16": (65535, VT.UINT16), "test.i16": (-32768, VT.INT16),
    "test.u32": (2**32 - 1, VT.UINT32), "test.i32": (-(2**31), VT.INT32),
    "test.u64": (2**64 - 1, VT.UINT64), "test.i64": (-(2**63), VT.INT64),
    "test.f32": (0.1, VT.FLOAT32), "test.f64": (0.1, VT.FLOAT64),
    "test.bool_true": (True, VT.BOOL), "test.bool_false": (False, VT.BOOL),
    "test.string": ("héllo ▁wörld", VT.STRING), "test.empty_string": ("", VT.STRING),
}
ARRAYS = {
    "test.arr_u8": ([0, 7, 255], VT.UINT8, np.uint8),
    "test.arr_i8": ([-1, 2], VT.INT8, np.int8),
    "test.arr_u16": ([1, 65535], VT.UINT16, np.uint16),
    "test.arr_i16": ([-2, 3], VT.INT16, np.int16),
    "test.arr_u32": ([1, 2**32 - 1], VT.UINT32, np.uint32),
    "test.arr_i32": ([-5, 6, 7], VT.INT32, np.int32),
    "test.arr_u64": ([2**64 - 1], VT.UINT64, np.uint64),
    "test.arr_i64": ([-(2**63), 1], VT.INT64, np.int64),
    "test.arr_f32": ([0.5, -1.25, 3e38], VT.FLOAT32, np.float32),
    "test.arr_f64": ([0.1, 1e300], VT.FLOAT64, np.float64),
    "test.arr_bool": ([True, False, True], VT.BOOL, np.bool_),
}
STRINGS = ["<s>", "", "▁the", "日本", "\x00nul", "🙂"]
NESTED = [[1, 2], [3]]


def test_ggml_type_table_is_the_gguf_packages():
    ours = {t: (name, elements, nbytes) for t, (name, elements, nbytes) in GGML_TYPES.items()}
    theirs = {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGML_QUANT_SIZES}
    assert ours == theirs
    assert {int(t): t.name for t in VT} == {int(t): t.name for t in GGUFValueType}


def _every_type_tensors(rng) -> list[tuple[str, np.ndarray, tuple[int, int], QT]]:
    """One (name, stored array, GGUF (ne0, ne1), type) per ggml type the gguf package knows."""
    shape = (3, 256)  # numpy order (rows, ne0); 256 is a multiple of every block size
    out = []
    for qtype in GGML_QUANT_SIZES:
        x = rng.standard_normal(shape).astype(np.float32)
        try:
            stored = gguf.quants.quantize(x, qtype)
        except (NotImplementedError, gguf.quants.QuantError):
            # no quantizer in gguf (k-quants, i-quants, ints): random bytes in its layout
            blk, size = GGML_QUANT_SIZES[qtype]
            stored = rng.integers(0, 256, (shape[0], shape[1] // blk * size), dtype=np.uint8)
        out.append((f"t.{qtype.name.lower()}", stored, (shape[1], shape[0]), qtype))
    return out


def test_matches_gguf_reader_on_every_value_and_tensor_type(tmp_path):
    path = tmp_path / "every_type.gguf"
    rng = np.random.default_rng(1)
    tensors = _every_type_tensors(rng)
    w = gguf.GGUFWriter(str(path), "llama")
    for key, (value, vtype) in METADATA.items():
        w.add_key_value(key, value, vtype)
    for key, (values, etype, _) in ARRAYS.items():
        w.add_key_value(key, values, VT.ARRAY, sub_type=etype)
    w.add_array("test.strings", STRINGS)
    w.add_array("test.nested", NESTED)
    for name, stored, (ne0, ne1), qtype in tensors:
        w.add_tensor(name, stored, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as g:
        assert g.data_offset == reader.data_offset
        assert g.alignment == reader.alignment
        # every key the reader sees, with the same value (GGUF.* are its header pseudo-keys)
        keys = [k for k in reader.fields if not k.startswith("GGUF.")]
        assert list(g.metadata) == keys
        for key in keys:
            field = reader.fields[key]
            ours = g.metadata[key]
            if key == "test.nested":
                assert [a.tolist() for a in ours] == NESTED
            elif isinstance(ours, np.ndarray):
                assert ours.dtype == ARRAYS[key][2]
                assert ours.tolist() == field.contents()
            else:
                assert ours == field.contents(), key

        assert g.metadata["test.f32"] == np.float32(0.1)
        assert g.metadata["test.f64"] == 0.1
        assert g.metadata["test.u64"] == 2**64 - 1
        assert g.metadata["test.bool_true"] is True
        assert g.metadata["test.strings"] == STRINGS
        assert g.metadata["test.arr_f32"].tolist() == [0.5, -1.25, np.float32(3e38)]

        assert list(g.tensors) == [t.name for t in reader.tensors] == [t[0] for t in tensors]
        for rt, (name, stored, (ne0, ne1), qtype) in zip(reader.tensors, tensors):
            t = g.tensors[name]
            assert (t.type, t.shape) == (qtype, (ne0, ne1)) == (rt.tensor_type, tuple(rt.shape))
            assert (t.offset, t.n_bytes, t.n_elements) == (rt.data_offset, rt.n_bytes, rt.n_elements)
            assert t.n_rows == ne1 and t.row_bytes * ne1 == t.n_bytes
            assert t.data.tobytes() == rt.data.tobytes() == stored.tobytes()
            assert t.type_name == qtype.name


def test_tensor_info_compares_by_its_description_not_its_bytes(tmp_path):
    with GGUFFile(write_gguf_with_writer(tmp_path / "m.gguf")) as g:
        t = g.tensor("output_norm.weight")
        same = TensorInfo(t.name, t.type, t.shape, t.offset, t.n_bytes, np.zeros(1, np.uint8))
        assert t == same and hash(t) == hash(same)
        assert "data" not in repr(t)
