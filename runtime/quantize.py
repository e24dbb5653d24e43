"""`edgellm quantize IN.gguf OUT.gguf --type Q4_0`: rewrite a model's weight matrices in
another type, keeping every metadata key as stored, so llama.cpp loads the result."""

import sys

import numpy as np

from edgellm import kernels
from edgellm.errors import EdgeLLMError
from edgellm.kernels import BF16, F16, F32, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from edgellm.kernels.ggml_types import block_size, type_name as ggml_type_name
from edgellm.runtime.gguf_file import GGUFFile, GGUFValueType as VT
from edgellm.runtime.model_store import resolve_model

TARGETS = {"F16": F16, "BF16": BF16, "Q8_0": Q8_0, "Q4_0": Q4_0, "Q4_1": Q4_1, "Q5_0": Q5_0,
           "Q5_1": Q5_1, "Q2_K": Q2_K, "Q3_K": Q3_K, "Q4_K": Q4_K, "Q5_K": Q5_K, "Q6_K": Q6_K}
# rows that are not whole 256-blocks fall back as llama.cpp's quantizer does
K_FALLBACK = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}
# general.file_type (llama_ftype) of each target
FILE_TYPES = {F16: 1, BF16: 32, Q8_0: 7, Q4_0: 2, Q4_1: 3, Q5_0: 8, Q5_1: 9,
              Q2_K: 10, Q3_K: 12, Q4_K: 15, Q5_K: 17, Q6_K: 18}
_ELEMENT_TYPES = {np.dtype(np.uint8): VT.UINT8, np.dtype(np.int8): VT.INT8, np.dtype(np.uint16): VT.UINT16,
                  np.dtype(np.int16): VT.INT16, np.dtype(np.uint32): VT.UINT32, np.dtype(np.int32): VT.INT32,
                  np.dtype(np.uint64): VT.UINT64, np.dtype(np.int64): VT.INT64,
                  np.dtype(np.float32): VT.FLOAT32, np.dtype(np.float64): VT.FLOAT64, np.dtype(np.bool_): VT.BOOL}


def target_type(tensor, target: int) -> int:
    """The type a tensor is written in: 2-D weights take the target, vectors stay."""
    if len(tensor.shape) < 2 or tensor.type == target:
        return tensor.type
    if tensor.shape[0] % block_size(target)[0]:
        target = K_FALLBACK.get(target, tensor.type)
        if tensor.shape[0] % block_size(target)[0]:
            return tensor.type
    return int(target)


def metadata_to_copy(src: GGUFFile, target: int):
    """(key, value, type, element type or None) of every key of `src` to write, stored as
    `src` stores it (llama.cpp checks some keys' stored types exactly)."""
    for key, value in src.metadata.items():
        if key in ("general.architecture", "general.alignment"):
            continue  # the writer sets these itself
        vtype = src.value_type(key)
        sub_type = None
        if key == "general.file_type":
            value = FILE_TYPES[target]
        if vtype == VT.ARRAY:
            if isinstance(value, np.ndarray):
                sub_type = _ELEMENT_TYPES[value.dtype]
                value = value.tolist()
            elif all(isinstance(v, str) for v in value):
                sub_type = VT.STRING
            else:
                raise EdgeLLMError(f"{src.path.name}: cannot copy nested array '{key}'")
        yield key, value, vtype, sub_type


def quantize_file(src_path, dst_path, type_name: str, progress: bool = True) -> None:
    target = TARGETS.get(type_name.upper())
    if target is None:
        raise EdgeLLMError(f"cannot quantize to {type_name!r}; choose one of {', '.join(TARGETS)}")
    # The gguf package's writer, imported by the one command that writes a file: the package
    # costs 4.6 MiB of RSS and 120 ms to import (yaml comes with it).
    import gguf

    src = GGUFFile(src_path)
    writer = gguf.GGUFWriter(str(dst_path), src.require("general.architecture", str))
    for key, value, vtype, sub_type in metadata_to_copy(src, target):
        writer.add_key_value(key, value, gguf.GGUFValueType(vtype),
                             None if sub_type is None else gguf.GGUFValueType(sub_type))
    for t in src.tensors.values():
        to = target_type(t, target)
        n = t.shape[0]
        if to == t.type:
            data = t.data.reshape(t.n_rows, -1)
        else:
            # row chunks bound the f32 temporary
            data = np.concatenate([kernels.quantize(to, kernels.dequantize(t.type, t.data[r * t.row_bytes:(r + 4096) * t.row_bytes], n))
                                   for r in range(0, t.n_rows, 4096)])
        if to == F32:
            writer.add_tensor(t.name, data.view(np.float32).reshape(tuple(reversed(t.shape))))
        else:
            writer.add_tensor(t.name, data.reshape(t.n_rows, -1), raw_dtype=gguf.GGMLQuantizationType(to))
        if progress:
            print(f"  {t.name:32} {t.type_name:5} -> {ggml_type_name(to)}", file=sys.stderr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_quantize_arguments(p) -> None:
    p.add_argument("input", help="GGUF file (or Ollama model NAME[:TAG]) to read")
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("--type", required=True, help=", ".join(TARGETS))


def run_quantize(args) -> int:
    quantize_file(resolve_model(args.input), args.output, args.type)
    return 0
