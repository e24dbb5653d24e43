"""Finding the model file a command names: a GGUF path, or a model pulled by Ollama.

`-m gemma3:270m` is looked up in the Ollama store the way ollama itself does it
(server/modelpath.go, server/manifest.go): the store is $OLLAMA_MODELS, else
~/.ollama/models; a name is `[host/][namespace/]model[:tag]` with the host
registry.ollama.ai, the namespace `library` and the tag `latest` by default; its manifest
is `manifests/<host>/<namespace>/<model>/<tag>`, a JSON image manifest whose layer of
mediaType application/vnd.ollama.image.model is the GGUF, stored as the blob
`blobs/sha256-<hex>` for its digest `sha256:<hex>`.

A path that exists wins over a name, so a file called `gemma3:270m` in the working
directory is that file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgellm.errors import EdgeLLMError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"

# One part of a name: what ollama accepts (letters, digits, _ . -), not starting with a
# separator; a host may carry a :port.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAME = re.compile(rf"^(?:(?:(?P<host>{_PART}(?::\d+)?)/)?(?P<namespace>{_PART})/)?"
                   rf"(?P<model>{_PART})(?::(?P<tag>{_PART}))?$")


def ollama_models_dir() -> Path:
    """The Ollama store: $OLLAMA_MODELS, else ~/.ollama/models (ollama's own default)."""
    root = os.environ.get("OLLAMA_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".ollama" / "models"


@dataclass(frozen=True)
class OllamaName:
    """A parsed `[host/][namespace/]model[:tag]`, with ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OllamaName | None:
        """The name `text` spells, or None if it cannot be an Ollama name (a path)."""
        if text.endswith(".gguf"):
            return None
        m = _NAME.match(text)
        if m is None:
            return None
        return cls(m["host"] or DEFAULT_HOST, m["namespace"] or DEFAULT_NAMESPACE,
                   m["model"], m["tag"] or DEFAULT_TAG)

    @property
    def display(self) -> str:
        """The name as `ollama list` shows it: the default host and namespace left out."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def manifest_path(self, store: Path) -> Path:
        return store / "manifests" / self.host / self.namespace / self.model / self.tag


def blob_path(store: Path, digest: str) -> Path:
    """`sha256:<hex>` -> blobs/sha256-<hex> (ollama writes the colon as a dash on disk)."""
    algorithm, sep, hexdigest = digest.partition(":")
    if not sep or algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise EdgeLLMError(f"invalid blob digest {digest!r}: expected sha256:<64 hex digits>")
    return store / "blobs" / f"sha256-{hexdigest}"


def model_blob(manifest: Path, store: Path) -> Path | None:
    """The GGUF blob a manifest's model layer names (it need not exist); None if the
    manifest has no model layer (an adapter or a template alone)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgeLLMError(f"Ollama manifest {manifest} cannot be read: {exc}") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE:
            return blob_path(store, str(layer.get("digest", "")))
    return None


def resolve_ollama(name: OllamaName, store: Path | None = None) -> Path:
    """The GGUF blob of an Ollama model, or EdgeLLMError naming the manifest looked for."""
    store = ollama_models_dir() if store is None else store
    manifest = name.manifest_path(store)
    if not manifest.is_file():
        raise EdgeLLMError(f"model not found: {name.display} is neither a file nor an Ollama "
                           f"model (looked for {manifest})")
    blob = model_blob(manifest, store)
    if blob is None:
        raise EdgeLLMError(f"Ollama manifest {manifest} has no model layer ({MODEL_MEDIA_TYPE}): "
                           "it is not a model edgellm can run")
    if not blob.is_file():
        raise EdgeLLMError(f"Ollama model {name.display}: its model blob {blob} is missing "
                           f"(ollama pull {name.display} fetches it again)")
    return blob


def resolve_model(spec: str | os.PathLike | None) -> str | None:
    """The GGUF file a command's model argument names: an existing path as given, else an
    Ollama model name's blob. None (the default model) stays None.

    The usual mistakes are one clear line (EdgeLLMError), before anything is loaded."""
    if spec is None:
        return None
    path = os.fspath(spec)
    if os.path.isdir(path):
        raise EdgeLLMError(f"{path} is a directory, not a GGUF file")
    if os.path.exists(path):
        return path
    name = OllamaName.parse(path)
    if name is None:
        raise EdgeLLMError(f"model file not found: {path}")
    return str(resolve_ollama(name))


@dataclass(frozen=True)
class StoredModel:
    """One manifest in the store, as `edgellm list` shows it."""

    name: OllamaName
    manifest: Path
    blob: Path | None      # None when the manifest names no model layer or cannot be read
    size: int | None       # the blob's bytes, None if it is missing
    modified: float        # the manifest's mtime (when it was pulled or created)
    problem: str = ""      # why the name cannot be run, shown instead of the blob


def list_ollama_models(store: Path | None = None) -> list[StoredModel]:
    """Every manifests/<host>/<namespace>/<model>/<tag> in the store, by name."""
    store = ollama_models_dir() if store is None else store
    root = store / "manifests"
    found = []
    for manifest in sorted(root.glob("*/*/*/*")):
        if not manifest.is_file() or manifest.name.startswith("."):
            continue
        host, namespace, model, tag = manifest.relative_to(root).parts
        name = OllamaName(host, namespace, model, tag)
        blob, size, problem = None, None, ""
        try:
            blob = model_blob(manifest, store)
        except EdgeLLMError:
            problem = "(unreadable manifest)"
        else:
            if blob is None:
                problem = "(no model layer)"
            elif blob.is_file():
                size = blob.stat().st_size
            else:
                problem = f"(missing blob {blob})"
        found.append(StoredModel(name, manifest, blob, size, manifest.stat().st_mtime, problem))
    return sorted(found, key=lambda m: m.name.display)
