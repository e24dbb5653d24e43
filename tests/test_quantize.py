"""`edgellm quantize` writes GGUFs that llama.cpp loads and runs."""

import subprocess
import sys

import numpy as np
import pytest

from edgellm.runtime.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def q4_0_model(default_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "gemma3-270m-q4_0.gguf"
    r = subprocess.run([sys.executable, "-m", "edgellm.cli", "quantize", str(default_model_path),
                        str(out), "--type", "Q4_0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def test_quantized_file_has_q4_0_matrices_and_the_same_metadata(q4_0_model, default_model_path):
    src, dst = GGUFFile(default_model_path), GGUFFile(q4_0_model)
    assert set(dst.tensors) == set(src.tensors)
    for name, t in dst.tensors.items():
        assert t.type_name == ("F32" if len(t.shape) == 1 else "Q4_0"), name
        assert t.shape == src.tensors[name].shape
    assert dst.metadata["general.file_type"] == 2   # LLAMA_FTYPE_MOSTLY_Q4_0
    for key, value in src.metadata.items():
        if key != "general.file_type":
            assert np.array_equal(value, dst.metadata[key]) if isinstance(value, np.ndarray) \
                else dst.metadata[key] == value, key


def test_llama_cpp_loads_and_generates_with_the_quantized_model(q4_0_model):
    from llamacpp_oracle import llama_cpp_reference

    from edgellm.runtime.generation import Model
    from edgellm.runtime.sampling import SamplingParams

    llm = llama_cpp_reference(q4_0_model, n_ctx=128, n_threads=2)
    try:
        out = llm("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()
    assert len(out.split()) >= 4 and out.isprintable()
    # and it is the same model to us: our greedy continuation starts the same way
    ours = Model(q4_0_model, n_ctx=128).generate("The capital of France is", max_tokens=1,
                                                 sampling=SamplingParams(temperature=0))
    assert out.startswith("".join(ours))


def test_unknown_target_type_is_refused(default_model_path, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgellm.cli", "quantize", str(default_model_path),
                        str(tmp_path / "x.gguf"), "--type", "Q7_X"], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot quantize to 'Q7_X'" in r.stderr
