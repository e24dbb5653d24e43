"""Kept for code written against the old place: the error types live in `edgellm.errors`
(below every layer, so kernels and devices can raise them too). Import them from there."""

from edgellm.errors import EdgeLLMError, ModelFileError

__all__ = ["EdgeLLMError", "ModelFileError"]
