"""llama.cpp's test assets (vocabulary files with tokenizer test vectors, chat templates),
taken from the llama-cpp-python source distribution so tests need nothing but pip.

    llamacpp_models_dir() / "ggml-vocab-llama-spm.gguf"

The sdist matching the installed llama_cpp (else PINNED_VERSION) is downloaded once with pip
and only its vendor/llama.cpp/models/ folder is kept, in $EDGELLM_CACHE/llamacpp-<version>/
(default ~/.cache/edgellm). The folder is unpacked beside its final place and renamed into
it, so an interrupted run never leaves a half-filled folder behind.
"""

from __future__ import annotations

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
    with tarfile.open(sdist, "r:gz") as tar:
        found = False
        for member in tar:
            top, _, rest = member.name.partition("/")
            if not rest.startswith(_MODELS_PREFIX) or not member.isfile():
                continue
            relative = Path(rest[len(_MODELS_PREFIX):])
            if relative.is_absolute() or ".." in relative.parts:
                continue  # never write outside dest
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            found = True
    if not found:
        raise RuntimeError(f"{sdist.name} has no {_MODELS_PREFIX} folder")
