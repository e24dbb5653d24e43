"""Imports go one way: down the layers, never up and never across.

    cli                      the command line: composes everything, imported by nothing
    services                 transports; use the runtime and the devices
    runtime    devices       beside each other: neither imports the other (the runtime takes a
                             memory plan as a value, the devices read a model's header as one)
    kernels                  C kernels and their cffi layer
    errors                   the shared error types: import nothing of edgellm

A module may import its own layer and the layers below it. Every `import` counts, including
one inside a function: an import hidden in a function to dodge a cycle is still an upward
import. The layers are the packages pyproject.toml maps to folders, so a new package without
a place here fails too.
"""

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

# What each layer may import (besides itself).
ALLOWED = {
    "errors": set(),
    "kernels": {"errors"},
    "runtime": {"errors", "kernels"},
    "devices": {"errors", "kernels"},
    "services": {"errors", "kernels", "runtime", "devices"},
    "cli": {"errors", "kernels", "runtime", "devices", "services"},
}


def layer_folders() -> dict[str, Path]:
    """Layer name -> folder, from pyproject.toml's package-dir (edgellm.X = "X")."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {package.split(".")[1]: REPO / folder for package, folder in package_dir.items()
            if package.count(".") == 1}


def module_name(path: Path, layer: str, folder: Path) -> str:
    parts = ["edgellm", layer, *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_layers(source: str, module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, imported module, its layer) for every edgellm import in `source`, at any depth
    (functions, classes, try blocks), relative imports resolved against `module`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from edgellm import kernels` imports the layer named, not `edgellm`
            targets = [f"{base}.{alias.name}" for alias in node.names] if base == "edgellm" else [base]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == "edgellm" and len(parts) > 1:
                found.append((node.lineno, target, parts[1]))
    return found


def violations() -> list[str]:
    folders = layer_folders()
    assert set(folders) == set(ALLOWED), f"packages without a layer rule: {set(folders) ^ set(ALLOWED)}"
    bad = []
    for layer, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            if any(p.startswith(".") or p == "build" for p in path.relative_to(folder).parts):
                continue
            module = module_name(path, layer, folder)
            for line, target, other in imported_layers(path.read_text(), module, path.name == "__init__.py"):
                if other != layer and other not in ALLOWED[layer]:
                    bad.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {target}")
    return bad


def test_every_import_goes_down_the_layers():
    assert violations() == []


def test_every_layer_has_modules_to_check():
    for layer, folder in layer_folders().items():
        assert list(folder.rglob("*.py")), f"{layer}: no modules in {folder}"


@pytest.mark.parametrize("source, layer", [
    ("def f():\n    from edgellm.services.serve import run_serve\n", "services"),
    ("from edgellm import devices\n", "devices"),
    ("import edgellm.cli.main\n", "cli"),
    ("from ..devices import planner\n", "devices"),
])
def test_an_upward_import_is_found_even_inside_a_function(source, layer):
    found = imported_layers(source, "edgellm.runtime.bench", is_package=False)
    assert [other for _, _, other in found] == [layer]
