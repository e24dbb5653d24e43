"""Models by name from an Ollama store: `-m gemma3:270m` finds the GGUF blob through the
manifest, as ollama lays out $OLLAMA_MODELS, and `edgellm list` shows what is there."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.runtime.model_store import OllamaName, list_ollama_models, resolve_model

MODEL = "application/vnd.ollama.image.model"


def sha256_of(path: Path) -> str:
    stamp = path.with_name(path.name + ".sha256")  # written when the default model is assembled
    if stamp.exists():
        return stamp.read_text().split()[0]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_blob(store: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def add_manifest(store: Path, name: str, layers: list[dict], host="registry.ollama.ai",
                 namespace="library") -> Path:
    """manifests/<host>/<namespace>/<model>/<tag>: an OCI image manifest, as ollama writes it."""
    model, _, tag = name.partition(":")
    config = add_blob(store, json.dumps({"model_format": "gguf", "model_family": "gemma3"}).encode())
    manifest = store / "manifests" / host / namespace / model / (tag or "latest")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 60},
        "layers": layers,
    }))
    return manifest


@pytest.fixture
def store(tmp_path, default_model_path, monkeypatch):
    """An Ollama store holding the default model as gemma3:270m (its blob a symlink to the
    GGUF, named by its real sha256), a namespaced and a hosted copy, and a manifest whose
    layers hold no model."""
    store = tmp_path / "ollama-models"
    (store / "blobs").mkdir(parents=True)
    digest = sha256_of(default_model_path)
    blob = store / "blobs" / f"sha256-{digest}"
    blob.symlink_to(default_model_path)
    template = add_blob(store, b"{{ .Prompt }}")
    layers = [{"mediaType": MODEL, "digest": f"sha256:{digest}", "size": default_model_path.stat().st_size},
              {"mediaType": "application/vnd.ollama.image.template", "digest": template, "size": 13}]
    add_manifest(store, "gemma3:270m", layers)
    add_manifest(store, "tiny:q4", layers, namespace="someone")
    add_manifest(store, "gemma3:270m", layers, host="example.com:5000", namespace="mirror")
    add_manifest(store, "adapter-only:latest", layers[1:])
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    return store


def edgellm(*args, store=None):
    env = dict(os.environ, OLLAMA_MODELS=str(store)) if store else None
    return subprocess.run([sys.executable, "-m", "edgellm.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_run_by_ollama_name_generates_what_the_file_generates(store, default_model_path):
    by_name = edgellm("run", "-m", "gemma3:270m", "-n", "4", "--temp", "0", "Hello", store=store)
    assert by_name.returncode == 0, by_name.stderr
    by_path = edgellm("run", "-m", str(default_model_path), "-n", "4", "--temp", "0", "Hello")
    assert by_path.returncode == 0, by_path.stderr
    assert by_name.stdout == by_path.stdout and by_name.stdout.strip()


def test_a_name_resolves_to_the_blob_of_its_model_layer(store, default_model_path):
    blob = Path(resolve_model("gemma3:270m"))
    assert blob.parent == store / "blobs" and blob.name == f"sha256-{sha256_of(default_model_path)}"
    assert blob.resolve() == default_model_path.resolve()


def test_namespaced_and_hosted_names_find_their_manifests(store):
    assert resolve_model("someone/tiny:q4") == resolve_model("gemma3:270m")
    assert resolve_model("example.com:5000/mirror/gemma3:270m") == resolve_model("gemma3:270m")
    assert OllamaName.parse("someone/tiny") == OllamaName("registry.ollama.ai", "someone", "tiny", "latest")
    assert OllamaName.parse("model.gguf") is None and OllamaName.parse("/abs/gemma3") is None


def test_a_missing_name_is_one_line_naming_the_manifest_looked_for(store):
    r = edgellm("run", "-m", "qwen3:0.6b", "hi", store=store)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "qwen3" / "0.6b"
    assert r.stderr.splitlines() == [f"edgellm: model not found: qwen3:0.6b is neither a file nor an "
                                     f"Ollama model (looked for {manifest})"]


def test_a_missing_namespaced_name_names_its_namespace_and_the_latest_tag(store):
    with pytest.raises(EdgeLLMError, match=re.escape(str(store / "manifests/registry.ollama.ai/someone/big/latest"))):
        resolve_model("someone/big")


def test_a_manifest_without_a_model_layer_is_one_clear_line(store):
    r = edgellm("run", "-m", "adapter-only", "hi", store=store)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "adapter-only" / "latest"
    assert f"Ollama manifest {manifest} has no model layer ({MODEL})" in r.stderr


def test_a_file_that_exists_wins_over_a_name(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("gemma3:270m").write_bytes(b"a file, not the store's model")
    assert resolve_model("gemma3:270m") == "gemma3:270m"


def test_a_path_that_is_not_there_is_still_a_missing_file(store, tmp_path):
    with pytest.raises(EdgeLLMError, match="^model file not found: "):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_list_shows_name_size_date_and_blob_like_ollama_list(store, default_model_path):
    r = edgellm("list", store=store)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "MODIFIED", "PATH"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["adapter-only:latest", "example.com:5000/mirror/gemma3:270m", "gemma3:270m",
                            "someone/tiny:q4"]
    blob = store / "blobs" / f"sha256-{sha256_of(default_model_path)}"
    size = f"{default_model_path.stat().st_size / 1e6:.0f} MB"
    assert re.fullmatch(rf"gemma3:270m +{size} +\d{{4}}-\d\d-\d\d \d\d:\d\d +{re.escape(str(blob))}",
                        rows["gemma3:270m"])
    assert rows["adapter-only:latest"].split()[1:] == ["-", *rows["adapter-only:latest"].split()[2:4], "(no",
                                                       "model", "layer)"]
    assert [m.name.display for m in list_ollama_models(store)] == sorted(rows)


def test_list_of_an_empty_store_says_where_it_looked(tmp_path):
    r = edgellm("list", store=tmp_path / "nothing-here")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.strip() == f"edgellm: no Ollama models in {tmp_path / 'nothing-here'} " \
                               "(set OLLAMA_MODELS to another store)"
