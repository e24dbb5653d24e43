"""edgellm.runtime: GGUF models, tokenizers, generation and the CLI."""

from edgellm.runtime.errors import EdgeLLMError, ModelFileError

__all__ = ["EdgeLLMError", "ModelFileError"]
