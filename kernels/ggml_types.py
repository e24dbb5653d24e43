"""ggml's tensor types as data: type id -> (name, elements per block, bytes per block).

The numbering and block sizes are ggml's (ggml.h `enum ggml_type`, `ggml_type_traits`); a
test holds this table to the gguf package's GGML_QUANT_SIZES. Kept here rather than imported
from the gguf package, which costs ~120 ms and 4.6 MiB of RSS to import (it brings yaml and
its writer) in a process that only reads files.
"""

from __future__ import annotations

__all__ = ["GGML_TYPES", "type_id", "type_name", "block_size", "row_bytes"]

GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

_IDS = {name: t for t, (name, _, _) in GGML_TYPES.items()}


def type_name(t: int) -> str:
    """"Q4_K" for 12; KeyError for an id ggml does not define (as far as this table knows)."""
    return GGML_TYPES[t][0]


def type_id(name: str) -> int:
    """12 for "Q4_K"; KeyError for an unknown name."""
    return _IDS[name]


def block_size(t: int) -> tuple[int, int]:
    """(elements, bytes) of one block of type `t`."""
    _, elements, nbytes = GGML_TYPES[t]
    return elements, nbytes


def row_bytes(t: int, n_elements: int) -> int:
    """Bytes of `n_elements` values of type `t` (a whole number of blocks)."""
    _, elements, nbytes = GGML_TYPES[t]
    return n_elements // elements * nbytes
