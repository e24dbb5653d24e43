# setuptools reads everything from pyproject.toml; cffi's build hook is the one thing
# that still has to be passed here.
from setuptools import setup

setup(cffi_modules=["kernels/build_kernels.py:ffibuilder"])
