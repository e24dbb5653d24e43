"""edgellm.runtime: GGUF models, tokenizers, generation and the CLI."""

from edgellm.errors import EdgeLLMError, ModelFileError
from edgellm.runtime.generation import Generation, Model, load_model
from edgellm.runtime.sampling import SamplingParams

__all__ = ["EdgeLLMError", "ModelFileError", "Generation", "Model", "SamplingParams", "load_model"]
