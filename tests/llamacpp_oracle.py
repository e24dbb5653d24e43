"""llama.cpp (llama-cpp-python, built from source) as the oracle the tests compare with."""

from pathlib import Path

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
