"""The one exception type for errors a user can cause, below every layer.

kernels, runtime, devices and services all raise these, so they live in a package that
imports nothing of edgellm: `from edgellm.errors import EdgeLLMError`.
"""


class EdgeLLMError(Exception):
    """Something the user can fix: a bad model file, request, option or config.

    The message says what was wrong and, where it helps, what to do about it.
    """


class ModelFileError(EdgeLLMError):
    """A model file that cannot be loaded: missing, not GGUF, malformed or unsupported."""
