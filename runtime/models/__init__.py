"""Architectures, one self-contained file each, found by GGUF `general.architecture`."""

from importlib import import_module

from edgellm.errors import EdgeLLMError

# general.architecture -> module in this package
ARCHITECTURES = {"gemma3": "gemma3", "llama": "llama", "phi3": "phi3", "qwen2": "qwen2", "qwen3": "qwen3"}
# architectures whose graph is one of the above
ALIASES = {"mistral": "llama"}


def model_class(arch: str):
    """The Model class of an architecture, or a clear error naming the supported ones."""
    name = ALIASES.get(arch, arch)
    if name not in ARCHITECTURES:
        supported = ", ".join(sorted([*ARCHITECTURES, *ALIASES]))
        raise EdgeLLMError(f"architecture '{arch}' is not supported (supported: {supported})")
    return import_module(f"{__name__}.{ARCHITECTURES[name]}").Model
