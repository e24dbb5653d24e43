"""llama.cpp's test assets (vocabulary files with tokenizer test vectors, chat templates),
taken from the llama-cpp-python source distribution so tests need nothing but pip; and
llama.cpp built from the same sources for AVX2 only, the oracle of our avx2 variant on a
CPU whose own llama.cpp build uses AVX-512.

    llamacpp_models_dir() / "ggml-vocab-llama-spm.gguf"
    LLAMA_CPP_LIB_PATH=$(python tests/llamacpp_assets.py avx2-lib) pytest ...

The sdist matching the installed llama_cpp (else PINNED_VERSION) is downloaded once with pip
and only its vendor/llama.cpp/models/ folder is kept, in $EDGELLM_CACHE/llamacpp-<version>/
(default ~/.cache/edgellm). The folder is unpacked beside its final place and renamed into
it, so an interrupted run never leaves a half-filled folder behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgellm.runtime.default_model import cache_dir

PINNED_VERSION = "0.3.36"
_MODELS_PREFIX = "vendor/llama.cpp/models/"


def llamacpp_version() -> str:
    """The llama-cpp-python version whose assets match the reference library in use."""
    try:
        import llama_cpp
    except ImportError:
        return PINNED_VERSION
    return llama_cpp.__version__


def llamacpp_models_dir() -> Path:
    """The `vendor/llama.cpp/models` folder of the llama-cpp-python sdist, fetched on first use."""
    version = llamacpp_version()
    base = cache_dir() / f"llamacpp-{version}"
    models = base / "models"
    if models.is_dir():
        return models
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
    try:
        sdist = _download_sdist(version, work / "download")
        staged = work / "models"
        _extract_models(sdist, staged)
        try:
            staged.rename(models)
        except OSError:
            if not models.is_dir():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return models


# llama.cpp's CPU backend for AVX2 + FMA + F16C (Haswell, Zen 1-3) and nothing wider: the
# configuration llamacpp_oracle.arithmetic_matches_ours() recognises.
_AVX2_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF", "-DGGML_AMX_TILE=OFF",
               "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_LLAMAFILE=ON", "-DBUILD_SHARED_LIBS=ON",
               "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"]


def llamacpp_avx2_lib_dir() -> Path:
    """The folder of libllama.so and libggml*.so built from the llama-cpp-python sdist's own
    llama.cpp for AVX2 only (_AVX2_FLAGS), for LLAMA_CPP_LIB_PATH; built on first use (cmake,
    a few minutes on 2 cores) into $EDGELLM_CACHE/llamacpp-<version>/avx2/."""
    version = llamacpp_version()
    base = cache_dir() / f"llamacpp-{version}"
    lib = base / "avx2" / "bin"
    if (lib / "libllama.so").exists():
        return lib
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        sdist = _download_sdist(version, work / "download")
        src = work / "llama.cpp"
        _extract_tree(sdist, "vendor/llama.cpp/", src, skip="vendor/llama.cpp/models/")
        build = base / "avx2"  # the libraries find each other here (their RPATH)
        shutil.rmtree(build, ignore_errors=True)
        for cmd in (["cmake", "-S", str(src), "-B", str(build), *_AVX2_FLAGS],
                    ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1), "--target", "llama"]):
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--quiet", f"llama-cpp-python=={version}",
           "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    sdists = sorted(dest.glob("llama_cpp_python-*.tar.gz")) if dest.is_dir() else []
    if result.returncode != 0 or not sdists:
        raise RuntimeError(f"could not download the llama-cpp-python {version} sdist with "
                           f"{' '.join(cmd)}:\n{result.stdout}{result.stderr}")
    return sdists[0]


def _extract_models(sdist: Path, dest: Path) -> None:
    """Copy the sdist's <top>/vendor/llama.cpp/models/ tree into dest (regular files only)."""
    _extract_tree(sdist, _MODELS_PREFIX, dest)


def _extract_tree(sdist: Path, prefix: str, dest: Path, skip: str | None = None) -> None:
    """Copy the sdist's <top>/<prefix> tree into dest (regular files only), less <top>/<skip>."""
    with tarfile.open(sdist, "r:gz") as tar:
        found = False
        for member in tar:
            top, _, rest = member.name.partition("/")
            if not rest.startswith(prefix) or not member.isfile() or (skip and rest.startswith(skip)):
                continue
            relative = Path(rest[len(prefix):])
            if relative.is_absolute() or ".." in relative.parts:
                continue  # never write outside dest
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            found = True
    if not found:
        raise RuntimeError(f"{sdist.name} has no {prefix} folder")


if __name__ == "__main__":  # python tests/llamacpp_assets.py avx2-lib: build, print the folder
    if sys.argv[1:] != ["avx2-lib"]:
        sys.exit("usage: python tests/llamacpp_assets.py avx2-lib")
    print(llamacpp_avx2_lib_dir())
