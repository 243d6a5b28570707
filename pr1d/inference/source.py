"""Where a model's files are: a local ``save_pretrained`` folder, or a Hugging Face Hub id in the local cache.

``resolve_model(ref, local_files_only=...)`` turns either into a folder every loader here reads with
``local_files_only=True`` (:data:`pr1d.inference.generate.LOCAL_ONLY`): the one place that may reach the Hub
is this one, and only when ``local_files_only`` is off (``[registry] local_files_only = false``). Only
weights in safetensors, configs and tokenizer files are fetched; never code (``trust_remote_code`` is off
everywhere) and never pickled weights.

Runs in stage workers (huggingface_hub comes with transformers); torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# What a model folder needs, by file name: no *.bin/*.pt (pickles), no *.py (remote code), no ONNX/GGUF copies.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.md"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class ModelNotFound(RuntimeError):
    """The model reference names neither a model folder here nor a Hub model pr1 may load."""


def is_hub_id(ref: str) -> bool:
    """``org/name`` that is not a path that exists here (``./org/name`` or an absolute path never is one)."""
    return bool(_HUB_ID.match(ref)) and not Path(ref).exists() and ".." not in ref


def resolve_model(ref: str | Path, *, local_files_only: bool = True, revision: str | None = None,
                  allow_hint: str = "set [registry] local_files_only = false") -> Path:
    """The local folder of ``ref`` (a folder with ``config.json``, or a Hub id), downloading only when allowed.

    Raises :class:`ModelNotFound` with what to do: a missing folder; a Hub id not in the cache while
    ``local_files_only`` is on (fetch it on a host with network: ``hf download ID``, or turn the setting off);
    a Hub id that does not exist or cannot be reached.
    """
    text = str(ref)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is a folder but not a model (no config.json): point at the folder "
                                "save_pretrained wrote")
        return path
    if not is_hub_id(text):
        raise ModelNotFound(f"model {text!r}: no such folder, and not a Hub id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id=text, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                   local_files_only=local_files_only)
    except LocalEntryNotFoundError as e:
        if local_files_only:
            raise ModelNotFound(
                f"Hub model {text!r} is not in the local Hugging Face cache ({_cache_dir()}): run "
                f"`hf download {text}` on a host with network (same HF_HOME), or {allow_hint} to let pr1 "
                "download it") from e
        raise ModelNotFound(f"Hub model {text!r} could not be downloaded: {e}") from e
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, HTTP errors: one message with the cause
        raise ModelNotFound(f"Hub model {text!r}: {type(e).__name__}: {e}") from e
    out = Path(folder)
    if not (out / "config.json").is_file():
        raise ModelNotFound(f"Hub model {text!r} has no config.json: not a transformers model")
    if not any(out.glob("*.safetensors")):
        raise ModelNotFound(f"Hub model {text!r} has no safetensors weights (pickled weights are never loaded)")
    return out


def _cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub always has it
        return "~/.cache/huggingface/hub"
