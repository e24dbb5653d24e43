"""llama.cpp (llama-cpp-python, built from source) as the oracle the tests compare with."""

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest


def llama_cpp_reference(path: Path, **kwargs):
    """llama_cpp.Llama on `path` with extra buffer types (weight repacking, AMX) turned off.

    On this CPU (AMX_INT8) llama-cpp-python 0.3.36 segfaults in ggml_backend_amx_mul_mat
    whenever a batch has more than one token (so every logits_all eval), for any model,
    including the default one. Llama() does not expose llama_model_params.use_extra_bufts, so
    it is cleared in the defaults while the model loads. The plain CPU path it falls back to
    gives the same logits as token-by-token evaluation.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    low_level = llama_cpp.llama_cpp
    default_params = low_level.llama_model_default_params

    def params_without_extra_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = params_without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    finally:
        low_level.llama_model_default_params = default_params


def llamacpp_last_logits(llm, tokens) -> np.ndarray:
    """Evaluate tokens (appended to llm's sequence) and return the last position's logits. With
    logits_all off, llama.cpp computes only that row's logits, and its last layer goes on after
    attention with that row alone, as ours does."""
    llm.eval(tokens)
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()


def arithmetic_matches_ours() -> bool:
    """Whether our kernels compute what this llama.cpp build computes, bit for bit: our avx2
    variant reproduces the summation orders of llama.cpp's CPU backend built for AVX2 + FMA +
    F16C (no AVX-512) with llamafile's tinyBLAS, its default on such a CPU. Other ISAs sum in
    their own orders (on both sides), so there the comparison is statistical."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgellm import kernels

    info = llama_cpp.llama_print_system_info().decode()
    features = {part.split("=")[0].strip() for part in info.split("|") if part.strip().endswith("= 1")}
    return (kernels.VARIANT == "avx2" and {"AVX2", "FMA", "F16C", "LLAMAFILE"} <= features
            and not any(f.startswith("AVX512") for f in features))


class GGMLKernels:
    """llama.cpp's own CPU kernels (the libggml-cpu llama-cpp-python ships), through ctypes:
    the activation quantizer (from_float) and the dot product (vec_dot) of a weight type."""

    class _Traits(ctypes.Structure):  # struct ggml_type_traits_cpu
        _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                    ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]

    _FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    _VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def __init__(self):
        llama_cpp = pytest.importorskip("llama_cpp")
        # the libraries llama_cpp itself loaded (LLAMA_CPP_LIB_PATH: another build of them)
        libdir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
        ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        self.lib.ggml_cpu_init()
        self.lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(self._Traits)

    def _traits(self, type_: int):
        return self.lib.ggml_get_type_traits_cpu(type_).contents

    def vec_dot_type(self, type_: int) -> int:
        return self._traits(type_).vec_dot_type

    def from_float(self, type_: int, x: np.ndarray, row_bytes: int) -> np.ndarray:
        """One f32 row quantized to `type_` by ggml's CPU quantizer."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(row_bytes, np.uint8)
        self._FROM_FLOAT(self._traits(type_).from_float)(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def matmul(self, type_: int, w: np.ndarray, x: np.ndarray, xq_row_bytes: int) -> np.ndarray:
        """y[t, r] = vec_dot(weight row r, token t quantized by from_float): llama.cpp's
        product for one token (decode), and, for q4_0 / q5_0 / q8_0, for any batch (tinyBLAS
        sums each product in the same order)."""
        dot = self._VEC_DOT(self._traits(type_).vec_dot)
        vt = self.vec_dot_type(type_)
        y = np.empty((x.shape[0], w.shape[0]), np.float32)
        s = ctypes.c_float()
        for t in range(x.shape[0]):
            xq = x[t].astype(np.float32) if vt == 0 else self.from_float(vt, x[t], xq_row_bytes)
            for r in range(w.shape[0]):
                dot(x.shape[1], ctypes.byref(s), 0, w[r].ctypes.data, 0, xq.ctypes.data, 0, 1)
                y[t, r] = s.value
        return y
