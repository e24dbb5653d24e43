"""Read a GGUF model file: header, metadata and tensor directory, with zero-copy tensor views.

Layout (little-endian, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x        key: string | value_type u32 | value
    n_tensors x   name: string | n_dims u32 | ne[n_dims] u64 | ggml_type u32 | offset u64
    padding to `alignment`, then the tensor data; each tensor at data_offset + offset
    string = length u64 | utf-8 bytes;  array value = elem_type u32 | count u64 | elements

We parse this ourselves instead of using gguf.GGUFReader: that reader builds a numpy view per
element of every array (about 40 s for Gemma 3's 262144-token vocabulary) and trusts the
lengths it reads, so a corrupt length of 2**63 makes it allocate without bound. Here every
count and length is checked against the bytes left in the file *before* anything is read or
allocated, so a malformed file costs at most its own size and fails with a ModelFileError that
names the file and the problem. The GGUF value types are defined here and ggml's tensor types
in kernels/ggml_types.py (tests hold both to the gguf package's).

The file is mmapped read-only; TensorInfo.data is a uint8 view into that mapping (no copies of
weights are made here). Small numeric metadata arrays are copied out; big ones (a vocabulary's
scores and token types, 1 MiB each for Gemma 3) are read-only views of the mapping, whose pages
a tokenizer keeps touched anyway (a read fault maps the whole large folio around it). String
arrays are not turned into Python objects: a StringArray keeps
the offsets of its strings in the mapping (the file's own bytes, zero copy), checked for UTF-8
an array at a time, so like tensor views it keeps the mapping alive. Gemma 3's 262144 tokens
cost 1 MiB that way (3 MiB once looked up by text) instead of ~26 MiB of str objects and a list.
"""

from __future__ import annotations

import mmap
import os
import pathlib
import struct
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from edgellm.errors import ModelFileError
from edgellm.kernels.ggml_types import GGML_TYPES, block_size, type_name

__all__ = ["GGUFFile", "StringArray", "TensorInfo"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 64  # the GGUF spec's limit on tensor names
MAX_ARRAY_NESTING = 4  # arrays of arrays are legal but rare; bound the recursion
INT64_MAX = 2**63 - 1
VIEW_ARRAY_BYTES = 64 << 10  # a numeric metadata array this big is a view of the mapping, not a copy

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv


class GGUFValueType(IntEnum):
    """The type of a metadata value, as the GGUF spec numbers them."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Scalar value types: struct format and Python conversion.
_SCALAR_STRUCTS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}

# Numeric arrays become numpy arrays of these (little-endian) dtypes.
_ARRAY_DTYPES: dict[int, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# Smallest encoding of one array element of each type, to bound a count by the bytes left.
_MIN_ELEMENT_BYTES: dict[int, int] = {t: dt.itemsize for t, dt in _ARRAY_DTYPES.items()}
_MIN_ELEMENT_BYTES[GGUFValueType.STRING] = 8  # the length prefix of an empty string
_MIN_ELEMENT_BYTES[GGUFValueType.ARRAY] = 12  # elem_type u32 + count u64 of an empty array

# A key-value pair takes at least: key length u64 + 1 key byte + value type u32 + 1 value byte.
_MIN_KV_BYTES = 8 + 1 + 4 + 1
# A tensor info takes at least: name length u64 + 1 name byte + n_dims u32 + one dim u64
# + type u32 + offset u64.
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

_VALUE_TYPE_NAMES = {int(t): t.name.lower() for t in GGUFValueType}

_TABLE_LOCK = threading.Lock()  # builds StringArray lookup tables


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file and a zero-copy view of its bytes."""

    name: str
    type: int  # ggml type id (kernels/ggml_types.py)
    shape: tuple[int, ...]  # GGUF order: shape[0] = ne0 = row length (the contiguous dim)
    offset: int  # absolute offset in the file
    n_bytes: int
    data: np.ndarray = field(repr=False, compare=False)  # (n_bytes,) uint8 view of the mmap

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def row_bytes(self) -> int:
        block_elems, block_bytes = block_size(self.type)
        return self.shape[0] // block_elems * block_bytes


_UTF8_CHUNK_BYTES = 1 << 18  # bytes of strings decoded at once to check them


class StringArray(Sequence):
    """A GGUF array of strings kept as bytes plus offsets, not as a list of str.

    A vocabulary is an array of up to a few hundred thousand strings (Gemma 3: 262144), which
    as Python str objects and a str -> id dict cost ~170 B per token. Here string i is the
    UTF-8 bytes data[offsets[i]:offsets[i + 1] - gap]: in a GGUF file `data` is the mapped
    array itself (each string follows its u64 length, so gap = 8) and nothing is copied;
    built from Python strings, `data` is their concatenation (gap = 0). The bytes are valid
    UTF-8 (the reader checks a whole array at once).

    It reads like a list of str (len, indexing, slices give lists, iteration, == with a
    list); find() looks a text up in an open-addressing table built on first use, 8 B per
    string: no str object is kept per entry.
    """

    __slots__ = ("_data", "_offsets", "_offs", "_gap", "_table", "_last_of")

    def __init__(self, data, offsets: np.ndarray, gap: int):
        self._data = data  # bytes or a memoryview of the mapping
        self._offsets = offsets  # (n + 1,) int32 or int64, native order
        self._offs = memoryview(offsets)  # the same, indexed as Python ints (fast)
        self._gap = gap
        # (slots (2**bits,) int32, slot mask, tag shift, tag mask, index bits), built by the
        # first find() or build_table()
        self._table: tuple | None = None
        self._last_of: dict[int, int] = {}  # first index -> last index of a repeated string

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringArray:
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(b"".join(encoded), _narrowest_offsets(offsets), 0)

    @property
    def offsets(self) -> np.ndarray:
        """(n + 1,) start of each string in `data`; string i ends at offsets[i + 1] - gap."""
        return self._offsets

    @property
    def lengths(self) -> np.ndarray:
        """(n,) length of each string in bytes."""
        return np.diff(self._offsets) - self._gap

    def bytes_of(self, i: int) -> bytes:
        offs = self._offs
        return bytes(self._data[offs[i]:offs[i + 1] - self._gap])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        n = len(self._offsets) - 1
        if i.__class__ is not int:
            if isinstance(i, slice):
                return [self[j] for j in range(*i.indices(n))]
            i = i.__index__()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("string index out of range")
        offs = self._offs
        return str(self._data[offs[i]:offs[i + 1] - self._gap], "utf-8")

    def __iter__(self) -> Iterator[str]:
        data, offs, gap = self._data, self._offs, self._gap
        for i in range(len(self._offsets) - 1):
            yield str(data[offs[i]:offs[i + 1] - gap], "utf-8")

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking like a list; not hashable

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:4])
        return f"StringArray([{head}{', ...' if len(self) > 4 else ''}], n={len(self)})"

    def find(self, text: str, last: bool = False) -> int:
        """The index of `text` (the first, or with last=True the last, if it repeats); -1 if
        absent. A few hundred nanoseconds: the text's hash() (cached in the str) picks a
        slot, and the slots from there to the next empty one are read; only a string whose
        tag matches more bits of the hash has its bytes compared."""
        table = self._table
        if table is None:
            table = self._build_table()
        slots, mask, shift, tag_mask, index_bits = table
        h = hash(text)
        s = h & mask
        tag = (h >> shift) & tag_mask
        v = slots[s]
        while v >= 0:  # at most half the slots are taken: an empty one comes
            if v >> index_bits == tag:
                i = v & ((1 << index_bits) - 1)
                offs = self._offs
                if self._data[offs[i]:offs[i + 1] - self._gap] == text.encode("utf-8"):
                    return self._last_of.get(i, i) if last else i
            s = (s + 1) & mask
            v = slots[s]
        return -1

    def build_table(self) -> None:
        """Builds the lookup table now rather than on the first find()."""
        if self._table is None:
            self._build_table()

    def hashes(self) -> np.ndarray:
        """(n,) int64 the hash() of every string as str (this process's: str hashes are
        salted per process). Each string is decoded once for it, from a copy of ~256 KiB of
        the array at a time (slicing bytes is faster than slicing the mapping's view)."""
        n = len(self)
        out = np.empty(n, dtype=np.int64)
        offsets, gap = self._offsets, self._gap
        a = 0
        while a < n:
            b = int(np.searchsorted(offsets, offsets[a] + _UTF8_CHUNK_BYTES, "right")) - 1
            b = min(max(b, a + 1), n)
            starts = (offsets[a:b] - offsets[a]).tolist()
            ends = (offsets[a + 1:b + 1] - gap - offsets[a]).tolist()
            run = bytes(self._data[offsets[a]:offsets[b] - gap])
            out[a:b] = [hash(run[s:e].decode("utf-8")) for s, e in zip(starts, ends)]
            a = b
        return out

    def _build_table(self) -> tuple:
        # Once, under a lock: tokenizers may first look up from several threads at once.
        with _TABLE_LOCK:
            if self._table is not None:
                return self._table
            n = len(self)
            h = self.hashes()  # (n,) int64
            # 2**bits >= 2n slots, at most half full. Linear probing, inserted in rounds:
            # each round every pending string tries its slot; of those on one free slot one
            # wins and the others see it there next round; one on a slot taken by another
            # string moves on to the next slot. A taken slot whose string has the same hash
            # may hold the same text: compared in _note_repeats.
            bits = max(1, (2 * n - 1).bit_length())
            mask = (1 << bits) - 1
            slots = np.full(1 << bits, -1, dtype=np.int32)  # (2**bits,) index or -1
            pending = np.arange(n, dtype=np.int64)
            pos = h & mask
            repeats: dict[bytes, list[int]] = {}  # text -> [slot, first index, last index]
            while len(pending):
                held = slots[pos]
                free = held < 0
                same = ~free & (h[held] == h[pending])
                if same.any():
                    moved = self._note_repeats(pending[same], held[same], pos[same], repeats)
                    same[same] = ~moved  # distinct texts, equal hashes: move on
                slots[pos[free]] = pending[free]
                stay = free & (slots[pos] != pending)  # lost a slot to another string
                move = ~free & ~same
                keep = stay | move
                pos = np.where(move, (pos + 1) & mask, pos)[keep]
                pending = pending[keep]
            for slot, first, last in repeats.values():
                slots[slot] = first
                self._last_of[first] = last
            # a slot holds index | tag << index_bits, the tag being the hash's bits above the
            # slot's: most strings on the way are passed over without a byte comparison
            index_bits = bits - 1  # >= the bits of n - 1, since 2**bits >= 2n
            tag_mask = (1 << max(0, 30 - index_bits)) - 1
            taken = slots >= 0
            tags = (h[slots[taken]] >> bits) & tag_mask
            slots[taken] |= (tags << index_bits).astype(np.int32)
            self._table = (memoryview(slots), mask, bits, tag_mask, index_bits)
            return self._table

    def _note_repeats(self, pending: np.ndarray, held: np.ndarray, pos: np.ndarray,
                      repeats: dict) -> np.ndarray:
        """For strings that found a string of the same hash in their slot: which are the same
        text (a repeat, kept out of the table: the slot gets the text's first index, and
        _last_of its last) and which only share the hash (returned True: they move on)."""
        moved = np.zeros(len(pending), dtype=bool)
        for k, (i, j, slot) in enumerate(zip(pending.tolist(), held.tolist(), pos.tolist())):
            text = self.bytes_of(i)
            if text != self.bytes_of(j):
                moved[k] = True
                continue
            seen = repeats.setdefault(text, [slot, j, j])
            seen[1], seen[2] = min(seen[1], i), max(seen[2], i)
        return moved


def _narrowest_offsets(offsets: np.ndarray) -> np.ndarray:
    """int32 offsets when they fit (half the memory), else int64."""
    if len(offsets) and offsets[-1] <= np.iinfo(np.int32).max:
        return offsets.astype(np.int32)
    return offsets.astype(np.int64, copy=False)


def _type_label(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _value_label(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of {value.dtype}"
    if isinstance(value, StringArray):
        return "array of string"
    if isinstance(value, list):
        return "array of string" if value and isinstance(value[0], str) else "array"
    return type(value).__name__


def _matches(value: object, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is int and isinstance(value, bool):
            continue  # bool is an int subclass, but a flag is not a count
        if k is float and isinstance(value, int) and not isinstance(value, bool):
            return True  # an integer where a float is wanted is fine (converted below)
        if k is list and isinstance(value, StringArray):
            return True  # an array of strings reads as a list of str
        if isinstance(value, k):
            return True
    return False


class GGUFFile:
    """A GGUF file, mmapped read-only and validated; see the module docstring for the layout.

    Raises ModelFileError for anything that is not a well-formed GGUF v2/v3 file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.version = 0
        self.metadata: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = 0
        self.file_size = 0
        self._value_types: dict[str, int] = {}  # key -> GGUFValueType, for typed errors
        self._mm: mmap.mmap | None = None
        self._u8: np.ndarray | None = None  # (file_size,) uint8 view of the whole mapping
        self._mv: memoryview | None = None  # the same as bytes, for string arrays
        self._open()
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- public API -------------------------------------------------------------------------

    def get(self, key: str, default: object = None, kind: type | tuple[type, ...] | None = None):
        """The value of `key`, or `default` if absent; with `kind`, a present value must match."""
        if key not in self.metadata:
            return default
        return self._checked(key, kind)

    def require(self, key: str, kind: type | tuple[type, ...] | None = None):
        """The value of `key`; ModelFileError if it is missing or (with `kind`) of another type.

        `kind` is int, float, str, bool, list, np.ndarray or a tuple of them. int rejects bools;
        float accepts integers and returns them as float.
        """
        if key not in self.metadata:
            self._fail(f"missing required key '{key}'; the file was not converted for this "
                       f"model type or is incomplete")
        return self._checked(key, kind)

    def value_type(self, key: str) -> GGUFValueType:
        """The GGUF type `key` is stored as (ARRAY for arrays); KeyError if absent.

        Needed to copy metadata into another file unchanged, since llama.cpp checks the
        stored type of keys such as token ids (uint32) exactly.
        """
        return GGUFValueType(self._value_types[key])

    def tensor(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            self._fail(f"missing required tensor '{name}'")
        return info

    def drop_pages(self, offset: int, n_bytes: int) -> None:
        """Tell the kernel the mapped pages of [offset, offset + n_bytes) are not needed
        (MADV_DONTNEED): once the runtime has requantized a tensor into memory its file
        pages would otherwise stay resident and count twice. They are clean, so they are
        simply dropped (and reread if ever touched again)."""
        self.advise_pages(offset, n_bytes, mmap.MADV_DONTNEED)

    def advise_pages(self, offset: int, n_bytes: int, advice: int) -> None:
        """madvise() a byte range of the mapping (widened to whole pages)."""
        if self._mm is None:
            return
        start = offset - offset % mmap.PAGESIZE
        self._mm.madvise(advice, start, offset + n_bytes - start)

    def close(self) -> None:
        """Drop this file's hold on the mapping.

        The tensor views (TensorInfo.data) and string arrays keep the mapping alive, so
        weights and vocabularies taken from a file stay valid after it is closed; the mapping
        is unmapped when this object and every view of it have been freed (at once here for a
        file without tensors or string arrays).
        """
        mm, self._mm = self._mm, None
        self._u8 = self._mv = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views export the buffer; the mapping goes when the last one does

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({str(self.path)!r}, version={self.version}, "
                f"{len(self.metadata)} keys, {len(self.tensors)} tensors)")

    # -- helpers ----------------------------------------------------------------------------

    def _fail(self, message: str):
        raise ModelFileError(f"{self.path}: {message}")

    def _checked(self, key: str, kind):
        value = self.metadata[key]
        if kind is None:
            return value
        if not _matches(value, kind):
            stored = _VALUE_TYPE_NAMES.get(self._value_types.get(key, -1), _value_label(value))
            self._fail(f"key '{key}' must be {_type_label(kind)} but is {stored} ({value!r:.60})")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        others = tuple(k for k in kinds if k is not float)
        if float in kinds and not (others and _matches(value, others)) and isinstance(value, int):
            return float(value)
        return value

    def _open(self) -> None:
        path = self.path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ModelFileError(f"{path} is empty, not a GGUF model file")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no such file; check the model path") from None
        except IsADirectoryError:
            raise ModelFileError(f"{path} is a directory, not a GGUF model file") from None
        except PermissionError:
            raise ModelFileError(f"{path}: permission denied reading the model file") from None
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{path}: cannot open or map the model file ({e})") from None
        self.file_size = size
        # One read-only uint8 view of the whole file; tensor views are slices of it.
        self._u8 = np.frombuffer(self._mm, dtype=np.uint8)
        self._mv = memoryview(self._mm)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        buf, end = self._mm, self.file_size
        if end < 4 or buf[:4] != GGUF_MAGIC:
            raise ModelFileError(f"{self.path} is not a GGUF file (bad magic {bytes(buf[:4])!r})")
        if end < _HEADER.size:
            self._fail(f"file is truncated: {end} bytes is shorter than the "
                       f"{_HEADER.size}-byte GGUF header")
        _, version, n_tensors, n_kv = _HEADER.unpack_from(buf, 0)
        if version not in SUPPORTED_VERSIONS:
            hint = ""
            if version == 1:
                hint = "; GGUF v1 is obsolete, re-convert the model with a current llama.cpp"
            elif version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                hint = "; the file looks big-endian, use a little-endian build of the model"
            self._fail(f"unsupported GGUF version {version} (supported: 2 and 3){hint}")
        self.version = version
        pos = _HEADER.size
        # Every entry has a minimum encoded size, so the counts are bounded by the file size
        # before we loop over (or allocate for) them.
        if n_kv > (end - pos) // _MIN_KV_BYTES:
            self._fail(f"header claims {n_kv} metadata entries, more than the "
                       f"{end} byte file can hold; the file is corrupt")
        if n_tensors > (end - pos - n_kv * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES:
            self._fail(f"header claims {n_tensors} tensors, more than the "
                       f"{end} byte file can hold; the file is corrupt")

        for i in range(n_kv):
            pos = self._read_kv(pos, i)
        self._read_alignment()

        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            info, pos = self._read_tensor_info(pos, i)
            if info[0] in names:
                self._fail(f"duplicate tensor name '{info[0]}'")
            names.add(info[0])
            infos.append(info)

        align = self.alignment
        data_offset = (pos + align - 1) // align * align
        if data_offset > end:
            if n_tensors:
                self._fail(f"file is truncated: it ends at byte {end}, before the tensor "
                           f"data section at byte {data_offset}")
            data_offset = end  # a tensor-less file (e.g. a vocab) need not carry the padding
        self.data_offset = data_offset
        self._place_tensors(infos)

    def _read_string(self, pos: int, what: str) -> tuple[str, int]:
        buf, end = self._mm, self.file_size
        if end - pos < 8:
            self._fail(f"file is truncated inside {what} (offset {pos})")
        (n,) = _U64.unpack_from(buf, pos)
        pos += 8
        if n > end - pos:
            self._fail(f"{what} has length {n}, past the end of the file "
                       f"({end - pos} bytes left at offset {pos})")
        try:
            return str(buf[pos:pos + n], "utf-8"), pos + n
        except UnicodeDecodeError as e:
            self._fail(f"{what} at offset {pos} is not valid UTF-8 ({e.reason} at byte {e.start})")

    def _read_u32(self, pos: int, what: str) -> int:
        if self.file_size - pos < 4:
            self._fail(f"file is truncated inside {what} (offset {pos})")
        return _U32.unpack_from(self._mm, pos)[0]

    def _read_kv(self, pos: int, index: int) -> int:
        key, pos = self._read_string(pos, f"metadata key #{index}")
        if not key:
            self._fail(f"metadata key #{index} is empty")
        if key in self.metadata:
            self._fail(f"duplicate metadata key '{key}'")
        vtype = self._read_u32(pos, f"the type of metadata key '{key}'")
        value, pos = self._read_value(pos + 4, vtype, key, 0)
        self.metadata[key] = value
        self._value_types[key] = vtype
        return pos

    def _read_value(self, pos: int, vtype: int, key: str, depth: int) -> tuple[object, int]:
        buf, end = self._mm, self.file_size
        scalar = _SCALAR_STRUCTS.get(vtype)
        if scalar is not None:
            if end - pos < scalar.size:
                self._fail(f"file is truncated inside the value of key '{key}'")
            return scalar.unpack_from(buf, pos)[0], pos + scalar.size
        if vtype == GGUFValueType.STRING:
            return self._read_string(pos, f"string value of key '{key}'")
        if vtype == GGUFValueType.ARRAY:
            return self._read_array(pos, key, depth)
        self._fail(f"key '{key}' has unknown value type {vtype} "
                   f"(known: 0..{max(_VALUE_TYPE_NAMES)})")

    def _read_array(self, pos: int, key: str, depth: int) -> tuple[object, int]:
        buf, end = self._mm, self.file_size
        if depth >= MAX_ARRAY_NESTING:
            self._fail(f"key '{key}' has arrays nested more than {MAX_ARRAY_NESTING} deep")
        if end - pos < 12:
            self._fail(f"file is truncated inside the array header of key '{key}'")
        etype = _U32.unpack_from(buf, pos)[0]
        (n,) = _U64.unpack_from(buf, pos + 4)
        pos += 12
        min_bytes = _MIN_ELEMENT_BYTES.get(etype)
        if min_bytes is None:
            self._fail(f"key '{key}' is an array of unknown value type {etype} "
                       f"(known: 0..{max(_VALUE_TYPE_NAMES)})")
        if n > (end - pos) // min_bytes:
            self._fail(f"array of key '{key}' has length {n}, past the end of the file "
                       f"({end - pos} bytes left at offset {pos})")
        dtype = _ARRAY_DTYPES.get(etype)
        if dtype is not None:
            nbytes = n * dtype.itemsize
            # A small one is copied out, so a file of a few keys does not pin the mapping; a
            # big one is a read-only view, like the tensors and string arrays (no second copy
            # of what the header's pages hold).
            arr = np.frombuffer(buf, dtype=dtype, count=n, offset=pos) if n else np.empty(0, dtype=dtype)
            if nbytes < VIEW_ARRAY_BYTES:  # (a view may be unaligned: numpy reads it as it is)
                arr = arr.copy()
            if dtype.kind == "b" and n and arr.view(np.uint8).max() > 1:
                arr = arr.view(np.uint8) != 0  # any non-zero byte is true, as in C
            return arr, pos + nbytes
        if etype == GGUFValueType.STRING:
            return self._read_string_array(pos, n, key)
        # An array of arrays: each element is itself encoded as elem_type | count | elements.
        out = []
        for _ in range(n):
            value, pos = self._read_array(pos, key, depth + 1)
            out.append(value)
        return out, pos

    def _read_string_array(self, pos: int, n: int, key: str) -> tuple[StringArray, int]:
        # Hot loop of loading: a vocabulary is an array of up to a few hundred thousand
        # strings, so this loop only steps from length to length (~0.15 us a string, a
        # sixth of decoding and hashing each); the bytes are checked for UTF-8 a whole array
        # at once, and hashed only when the array is first looked up by text. A bad length
        # is reported by the careful loop of _check_string_lengths.
        buf, end = self._mm, self.file_size
        unpack = _U64.unpack_from
        base = pos
        starts = array("q", [pos])  # (n + 1,) where each string's length field starts
        append = starts.append
        try:
            for _ in range(n):
                pos += unpack(buf, pos)[0] + 8  # struct.error past the end of the mapping
                append(pos)
        except (struct.error, OverflowError):  # past the mapping, or past int64
            pos = end + 1
        if pos > end:
            self._check_string_lengths(base, n, key)
        offsets = np.frombuffer(starts, dtype=np.int64) - (base - 8)  # string i's bytes
        self._check_utf8(base, offsets, key)
        return StringArray(self._mv[base:pos], _narrowest_offsets(offsets), 8), pos

    def _check_string_lengths(self, pos: int, n: int, key: str) -> None:
        """Fails with the first string of an array whose length runs past the end."""
        buf, end = self._mm, self.file_size
        i = 0
        try:
            for i in range(n):
                (ln,) = _U64.unpack_from(buf, pos)
                pos += 8
                if ln > end - pos:
                    self._fail(f"string #{i} of key '{key}' has length {ln}, past the end of "
                               f"the file ({end - pos} bytes left at offset {pos})")
                pos += ln
        except struct.error:
            self._fail(f"file is truncated inside string #{i} of key '{key}'")

    def _check_utf8(self, base: int, offsets: np.ndarray, key: str) -> None:
        """Fails unless every string of an array (string i: file bytes base + offsets[i] up
        to the next one's u64 length) is UTF-8. Decoded a few hundred strings at once, the
        lengths between them replaced by spaces: a string that ends inside a character, or
        starts with a continuation byte, makes the run invalid too."""
        n = len(offsets) - 1
        u8 = self._u8
        a = 0
        while a < n:
            b = int(np.searchsorted(offsets, offsets[a] + _UTF8_CHUNK_BYTES, "right")) - 1
            b = min(max(b, a + 1), n)
            run = u8[base + offsets[a]:base + offsets[b] - 8].copy()
            fields = offsets[a + 1:b] - 8 - offsets[a]  # (b - a - 1,) length fields in `run`
            for k in range(8):
                run[fields + k] = 0x20
            try:
                str(run, "utf-8")
            except UnicodeDecodeError:
                for i in range(a, b):
                    pos = base + int(offsets[i])
                    try:
                        str(self._mv[pos:base + int(offsets[i + 1]) - 8], "utf-8")
                    except UnicodeDecodeError as e:
                        self._fail(f"string #{i} of key '{key}' at offset {pos} is not valid "
                                   f"UTF-8 ({e.reason} at byte {e.start})")
            a = b

    def _read_alignment(self) -> None:
        key = "general.alignment"
        if key not in self.metadata:
            return
        vtype = self._value_types[key]
        if vtype != GGUFValueType.UINT32:
            self._fail(f"'{key}' must be a uint32 but is {_VALUE_TYPE_NAMES[vtype]}")
        align = self.metadata[key]
        if align == 0 or align & (align - 1):
            self._fail(f"'{key}' is {align}, which is not a power of two")
        self.alignment = align

    def _read_tensor_info(self, pos: int, index: int) -> tuple[tuple, int]:
        buf, end = self._mm, self.file_size
        name, pos = self._read_string(pos, f"the name of tensor #{index}")
        if not name:
            self._fail(f"tensor #{index} has an empty name")
        if len(name.encode()) > MAX_TENSOR_NAME_BYTES:
            self._fail(f"tensor name '{name[:80]}' is longer than {MAX_TENSOR_NAME_BYTES} bytes")
        n_dims = self._read_u32(pos, f"tensor '{name}'")
        pos += 4
        if not 1 <= n_dims <= MAX_DIMS:
            self._fail(f"tensor '{name}' has {n_dims} dimensions; GGUF tensors have 1 to "
                       f"{MAX_DIMS}")
        if end - pos < 8 * n_dims + 12:
            self._fail(f"file is truncated inside the info of tensor '{name}'")
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos)
        pos += 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12

        n_elements = 1
        for axis, d in enumerate(shape):
            if d == 0 or d > INT64_MAX:
                shown = d if d <= INT64_MAX else d - 2**64
                self._fail(f"tensor '{name}' has invalid dimension {axis} = {shown} in shape "
                           f"{self._shape_str(shape)}")
            n_elements *= d
        if n_elements > INT64_MAX:
            self._fail(f"tensor '{name}' shape {self._shape_str(shape)} has more than 2**63 "
                       f"elements (element count overflow)")
        if ggml_type not in GGML_TYPES:
            self._fail(f"tensor '{name}' has unknown ggml type {ggml_type}; the file may need "
                       f"a newer edgellm")
        qname, block_elems, block_bytes = GGML_TYPES[ggml_type]
        if shape[0] % block_elems:
            self._fail(f"tensor '{name}' of type {qname} has a row length of {shape[0]}, "
                       f"not a multiple of its block size {block_elems}")
        n_bytes = n_elements // block_elems * block_bytes
        return (name, ggml_type, tuple(shape), offset, n_bytes), pos

    @staticmethod
    def _shape_str(shape) -> str:
        return "(" + ", ".join(str(d) for d in shape) + ")"

    def _place_tensors(self, infos: list[tuple]) -> None:
        data_size = self.file_size - self.data_offset
        needed = 0
        for name, _, _, offset, n_bytes in infos:
            if offset % self.alignment:
                self._fail(f"tensor '{name}' data offset {offset} is not a multiple of the "
                           f"alignment {self.alignment}")
            if offset >= data_size:
                self._fail(f"tensor '{name}' data offset {offset} is past the end of the file "
                           f"(the data section has {data_size} bytes); the file is truncated "
                           f"or corrupt")
            needed = max(needed, offset + n_bytes)
        if needed > data_size:
            self._fail(f"file is truncated: the tensor data needs {needed} bytes but only "
                       f"{data_size} are present ({needed - data_size} missing); download or "
                       f"copy the model again")

        by_offset = sorted(infos, key=lambda t: t[3])
        for prev, cur in zip(by_offset, by_offset[1:]):
            if cur[3] < prev[3] + prev[4]:
                self._fail(f"tensors '{prev[0]}' and '{cur[0]}' overlap: '{prev[0]}' spans data "
                           f"bytes [{prev[3]}, {prev[3] + prev[4]}) and '{cur[0]}' starts at "
                           f"{cur[3]}")

        u8 = self._u8
        for name, ggml_type, shape, offset, n_bytes in infos:
            start = self.data_offset + offset
            self.tensors[name] = TensorInfo(name, ggml_type, shape, start, n_bytes,
                                            u8[start:start + n_bytes])
