"""Model versions: immutable, content-addressed model folders under ``<models>/<agent>/<version>``.

A version id is ``"v-"`` + the first 16 hex digits of the sha256 of the weights: the ``sha256sum``-style
manifest (``"<sha256>  <path>\\n"`` per ``*.safetensors`` file, sorted by path) hashed again, i.e.

    (cd DIR && LC_ALL=C sha256sum $(find . -name '*.safetensors' -printf '%P\\n' | LC_ALL=C sort)) | sha256sum

Identical weights give the same version and registering them again is a no-op; the same weights with
different companion files (an ``adapter_config.json`` with another LoRA alpha) are refused rather than
silently merged. Every file's sha256 is recorded so a version can be verified byte for byte.

Only safe formats are accepted: safetensors weights (headers checked), JSON/text companions. Pickles
(``*.bin``, ``*.pt``, ...), Python files and configs that need ``trust_remote_code`` (``auto_map``) are
refused, as are symlinks and odd file names (no path traversal through a model folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ..ledger.store import Conflict, Ledger, LedgerError, NotFound

# Agent ids and version ids become directory names: letters, digits, ".", "_", "-", not starting with a dot.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
# Each component of a file path inside a model folder.
SAFE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
# Formats that unpickle on load, i.e. run code from the file.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".so")
WEIGHTS_SUFFIX = ".safetensors"
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit
CHUNK = 1 << 20


class RegistryError(LedgerError):
    """A registry problem worded for the operator (refused model, corrupt version, bad name)."""


class UnsafeModel(RegistryError):
    """The model folder holds something that could run code when loaded, or escapes its folder."""


def check_name(kind: str, name: str) -> str:
    """``name`` if it is safe as a directory name, else RegistryError (no ``..``, ``/``, leading dot)."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise RegistryError(
            f"{kind} {name!r}: only letters, digits, '.', '_' and '-' are allowed, not starting with '.' "
            "(at most 200 characters)"
        )
    return name


def checked_policy(policy: dict | None) -> dict:
    """A version's ParallelExecutionPolicy in its full wire form; ``{}`` for a model without one (it runs
    plain generation). A bad policy is refused when the version is registered, not when it is pushed."""
    if not policy:
        return {}
    from ..inference.policy import ParallelExecutionPolicy, PolicyError

    try:
        return ParallelExecutionPolicy.from_dict(policy).to_dict()
    except PolicyError as e:
        raise RegistryError(f"policy: {e}") from None


def agent_dir(models_root: Path, agent_id: str) -> Path:
    return Path(models_root) / check_name("agent id", agent_id)


def version_dir(models_root: Path, agent_id: str, version_id: str) -> Path:
    return agent_dir(models_root, agent_id) / check_name("version id", version_id)


# -- scanning and checking a model folder -------------------------------------------------------------


def _hub_blob(src: Path, link: Path) -> bool:
    """Whether ``link`` is a Hugging Face cache snapshot's link to its own repo's blob (``models--org--name/
    snapshots/<rev>/f -> ../../blobs/<sha>``): the layout `hf download` leaves, copied as the file it names."""
    repo = src.parent.parent
    if src.parent.name != "snapshots" or not repo.name.startswith("models--"):
        return False
    try:
        target = link.resolve(strict=True)
    except OSError:
        return False
    return target.parent == (repo / "blobs").resolve() and target.is_file()


def _scan(src: Path) -> list[str]:
    """Relative posix paths of every file under ``src``, refusing anything unsafe before a byte is copied."""
    if not src.is_dir():
        raise RegistryError(f"{src}: not a directory")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            p = base / name
            rel = p.relative_to(src).as_posix()
            if not SAFE_FILE.match(name):
                raise UnsafeModel(f"{src}: refusing file name {rel!r} (only letters, digits, '._+-', no leading dot)")
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                if name in dirnames or not _hub_blob(src, p):
                    raise UnsafeModel(f"{src}: refusing symlink {rel!r} (a model folder must hold its own files)")
                st = os.stat(p)
            if name in dirnames:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeModel(f"{src}: refusing {rel!r}: not a regular file")
            low = name.lower()
            if low.endswith(PICKLE_SUFFIXES):
                raise UnsafeModel(
                    f"{src}: refusing {rel!r}: pickle-based formats run code when loaded; "
                    "save the weights as safetensors (save_pretrained(..., safe_serialization=True))"
                )
            if low.endswith(CODE_SUFFIXES):
                raise UnsafeModel(f"{src}: refusing {rel!r}: model folders must not carry code (trust_remote_code)")
            out.append(rel)
    out.sort()
    if not any(r.endswith(WEIGHTS_SUFFIX) for r in out):
        raise RegistryError(f"{src}: no *{WEIGHTS_SUFFIX} weights found")
    return out


def _check_safetensors(path: Path, rel: str) -> None:
    """The file is a well-formed safetensors file: header length, JSON header, offsets inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UnsafeModel(f"{rel}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise UnsafeModel(f"{rel}: not a safetensors file (header length {n} for a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise UnsafeModel(f"{rel}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise UnsafeModel(f"{rel}: not a safetensors file (header is not an object)")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise UnsafeModel(f"{rel}: not a safetensors file (tensor {name!r} has no valid data_offsets)")
        end = max(end, offs[1])
    if 8 + n + end != size:
        raise UnsafeModel(f"{rel}: truncated or padded safetensors file ({size} bytes, header says {8 + n + end})")


def _check_config(path: Path, rel: str) -> None:
    """A config that maps classes to the repo's own code (``auto_map``) needs trust_remote_code: refused."""
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{rel}: not valid JSON") from None
    if isinstance(data, dict) and "auto_map" in data:
        raise UnsafeModel(
            f"{rel}: has `auto_map`, which needs trust_remote_code; only architectures the transformers "
            "library ships are accepted"
        )


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (fsynced); the sha256 and size of the bytes written, not of a second read.

    The registry's copy of a model file, and the whole-state backup's (pr1d/backup.py) of every file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(CHUNK):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest(), size


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(files: dict[str, dict], weights_only: bool) -> str:
    """sha256 of the ``sha256sum``-style manifest of the (weights) files, sorted by path."""
    lines = "".join(
        f"{files[rel]['sha256']}  {rel}\n" for rel in sorted(files)
        if not weights_only or rel.endswith(WEIGHTS_SUFFIX)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def manifest(folder: Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "size"}}`` of every file under ``folder``."""
    out: dict[str, dict] = {}
    for rel in _scan(folder):
        p = folder / rel
        out[rel] = {"sha256": file_sha256(p), "size": p.stat().st_size}
    return out


def _make_read_only(folder: Path) -> None:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(Path(dirpath) / name, 0o444)
        os.chmod(dirpath, 0o555)


def remove_tree(folder: Path) -> None:
    """Remove a (possibly read-only) folder we created."""
    if not folder.exists():
        return
    for dirpath, _dirs, _files in os.walk(folder):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- verification -----------------------------------------------------------------------------------


def verify_folder(folder: Path, files: dict[str, dict]) -> list[str]:
    """Differences between ``folder`` and the recorded manifest (empty list: identical, byte for byte)."""
    if not folder.is_dir():
        return [f"{folder}: missing"]
    problems = []
    try:
        actual = manifest(folder)
    except RegistryError as e:
        return [str(e)]
    for rel in sorted(set(files) | set(actual)):
        if rel not in actual:
            problems.append(f"{rel}: missing")
        elif rel not in files:
            problems.append(f"{rel}: not part of the version")
        elif actual[rel]["sha256"] != files[rel]["sha256"]:
            problems.append(f"{rel}: sha256 {actual[rel]['sha256'][:12]} != recorded {files[rel]['sha256'][:12]}")
    return problems


def verify_version(ledger: Ledger, models_root: Path, agent_id: str, version_id: str) -> dict:
    """The version row if ``<models>/<agent>/<version>`` matches its recorded hashes; else RegistryError."""
    row = ledger.model_version(version_id)
    files = (row.get("meta") or {}).get("files")
    if not files:
        raise RegistryError(f"version {version_id}: no file manifest recorded; cannot verify it")
    problems = verify_folder(version_dir(models_root, agent_id, version_id), files)
    if problems:
        raise RegistryError(
            f"version {version_id} for agent {agent_id} does not match its recorded hashes: " + "; ".join(problems[:5])
        )
    return row


# -- registration -----------------------------------------------------------------------------------


def register_version(
    ledger: Ledger,
    models_root: Path,
    agent_id: str,
    src_dir: Path,
    *,
    run_id: int | None = None,
    parent_id: str | None = None,
    dataset_version: str | None = None,
    config_hash: str | None = None,
    policy: dict | None = None,
    profile: str | None = None,
    served_as: str | None = None,
) -> dict:
    """Copy ``src_dir`` into the registry as an immutable version of ``agent_id``; returns the version row.

    Lineage (``run_id``, ``parent_id``, ``dataset_version``, ``config_hash``) is recorded on first
    registration. ``policy`` is the ParallelExecutionPolicy pushed with the version (branch count,
    temperature, limits); ``profile`` the profile name pushed (default: ``[registry] profile_name``);
    ``served_as`` the name the agent platform knows the version by, for a model that came from the
    platform (the base model an agent started with), so that rolling back to it pushes that name.

    The copy is hashed as it is written, checked (safetensors headers, no ``auto_map``), made
    read-only and renamed into place, so a half-copied version never appears under its id.
    """
    check_name("agent id", agent_id)
    if parent_id is not None:
        check_name("parent version id", parent_id)
    src = Path(src_dir)
    rels = _scan(src)  # refuse before copying anything
    adir = agent_dir(models_root, agent_id)
    adir.mkdir(parents=True, exist_ok=True)
    tmp = adir / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        files: dict[str, dict] = {}
        for rel in rels:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            sha, size = copy_hashed(src / rel, tmp / rel)
            files[rel] = {"sha256": sha, "size": size}
        # Check the copy, not the source: what we checked is what we keep.
        for rel in rels:
            if rel.endswith(WEIGHTS_SUFFIX):
                _check_safetensors(tmp / rel, rel)
            elif rel.endswith(".json") and "config" in rel.rsplit("/", 1)[-1]:
                _check_config(tmp / rel, rel)
        digest = manifest_digest(files, weights_only=True)
        tree = manifest_digest(files, weights_only=False)
        vid = "v-" + digest[:16]
        dest = adir / vid
        _make_read_only(tmp)
        created_dir = False
        if not dest.exists():
            try:
                os.rename(tmp, dest)
                _fsync_dir(adir)
                created_dir = True
            except OSError:
                if not dest.is_dir():
                    raise
                # A concurrent registration of the same weights renamed its copy first: compare below.
        if not created_dir:
            problems = verify_folder(dest, files)
            if problems:
                raise Conflict(
                    f"version {vid} already exists for agent {agent_id} with other content: "
                    + "; ".join(problems[:5])
                )
            remove_tree(tmp)
    except BaseException:
        remove_tree(tmp)
        raise

    meta = {"files": files, "tree_sha256": tree, "policy": checked_policy(policy), "profile": profile,
            "served_as": served_as, "source": str(src)}
    try:
        with ledger.write() as tx:
            prior = tx.one("SELECT meta FROM model_versions WHERE id = ?", (vid,))
            if prior is not None:
                prior_meta = json.loads(prior[0]) if prior[0] else {}
                if prior_meta.get("tree_sha256") != tree:
                    raise Conflict(
                        f"version {vid}: these weights are already registered with different companion files "
                        "(configs, tokenizer); a version is immutable, so this is refused"
                    )
            else:
                now = time.time()
                tx.execute(
                    "INSERT INTO model_versions (id, agent_id, run_id, parent_id, dataset_version, config_hash, "
                    "path, sha256, created_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (vid, agent_id, run_id, parent_id, dataset_version, config_hash, str(dest), digest, now,
                     json.dumps(meta)),
                )
                tx.audit("daemon", "register", "model_version", vid, ts=now,
                         details={"agent": agent_id, "run": run_id, "parent": parent_id,
                                  "dataset_version": dataset_version, "config_hash": config_hash, "sha256": digest})
            if run_id is not None:
                # Which run produced which version is an artifact of the run: a second run that trains
                # identical weights links to the existing version without rewriting its lineage.
                tx.execute(
                    "INSERT INTO artifacts (run_id, stage_id, name, kind, path, sha256, size, meta, created_at) "
                    "VALUES (?, NULL, 'model_version', 'model_version', ?, ?, ?, ?, ?)",
                    (run_id, str(dest), digest, sum(f["size"] for f in files.values()),
                     json.dumps({"version_id": vid, "agent_id": agent_id}), time.time()),
                )
    except BaseException:
        if created_dir:
            remove_tree(dest)  # the ledger refused it: leave no orphan folder behind
        raise
    return ledger.model_version(vid)


def json_cell(raw: Any) -> Any:
    """A JSON cell of a ledger row, decoded (None when it does not parse)."""
    if raw is None or isinstance(raw, dict | list):
        return raw
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None  # a broken JSON cell must not stop a deployment (rollback is the emergency path)


def version_for_run(ledger: Ledger, run_id: int) -> dict:
    """The model version a run produced (its newest registration); NotFound if it registered none."""
    with ledger.engine.connect() as conn:
        row = conn.execute(
            text("SELECT meta FROM artifacts WHERE run_id = :r AND kind = 'model_version' ORDER BY id DESC LIMIT 1"),
            {"r": run_id},
        ).first()
    vid = (json.loads(row[0]) or {}).get("version_id") if row and row[0] else None
    if vid is None:
        raise NotFound(f"run {run_id} has no registered model version")
    return ledger.model_version(vid)
