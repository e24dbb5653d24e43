"""Fixtures shared by the whole suite: the real default model and the llama.cpp oracle."""

import pytest


@pytest.fixture(scope="session")
def default_model_path():
    """The real default model (Gemma 3 270M Q4_K_M), assembled once into the cache."""
    from edgellm.runtime.default_model import default_model_path as path

    return path(progress=False)


@pytest.fixture(scope="session")
def default_model(default_model_path):
    """One loaded default model for the session (tests must not rely on its cache state)."""
    from edgellm.runtime.generation import load_model

    return load_model(default_model_path, n_ctx=1024)
