# setuptools reads everything from pyproject.toml; cffi's build hook is the one thing that
# still has to be passed here: the CPU probe and one kernel module per ISA variant of the
# target platform (kernels/build_kernels.py decides which).
import importlib.util
from pathlib import Path

from setuptools import setup

_spec = importlib.util.spec_from_file_location(
    "build_kernels", Path(__file__).resolve().parent / "kernels" / "build_kernels.py")
_build_kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build_kernels)

setup(cffi_modules=_build_kernels.cffi_modules())
