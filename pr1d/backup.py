"""Whole-state backup and restore: ledger, job store, models, run records, gradebook and KB, listed with sha256.

A backup is a folder (``pr1ctl backup DIR``, written by the daemon while it runs)::

    DIR/MANIFEST.json         written last: a folder without it is an incomplete backup
    DIR/ledger.sqlite         SQLite backup API (a consistent snapshot)
    DIR/jobs.sqlite           the APScheduler job store, same way
    DIR/kb.sqlite             the knowledge base, when it is a local sqlite-vec store
    DIR/models/<agent>/<version>/...   every registry version in the ledger snapshot, checked against its hashes
    DIR/base-models/<model>/...        the agents' original models (runs of an agent without a version start there)
    DIR/runs/<run>/...        run records: specs, logs, events, reports, datasets; no checkpoints, no big files
    DIR/gradebook/...         the local gradebook copy

Why this is consistent while the daemon runs: the ledger is copied first, on the ledger thread (its only
writer), and everything else is chosen from that snapshot or is immutable: a version folder is renamed into
place before its ledger row exists and never changes after, so each version the snapshot names is complete.
Run folders are copied as they are at that moment; a stage still running keeps writing its log.

``pr1d restore DIR --state-dir STATE`` checks every hash before it writes anything, refuses a non-empty
target, lays the files out where a daemon on STATE (and the same config) looks for them, and rewrites the
absolute paths the ledger recorded under the old state directory. The ``current`` pointers are not copied:
the daemon rebuilds them from the ledger's deployments when it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .registry.versions import copy_hashed

FORMAT = "pr1-backup"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20
DEFAULT_MAX_RUN_FILE_MB = 64
# Top-level names a backup may hold. Single files are SQLite snapshots; folders are copied file by file.
SQLITE_AREAS = ("ledger.sqlite", "jobs.sqlite", "kb.sqlite")
TREE_AREAS = ("models", "base-models", "runs", "gradebook")
# Resumable training state: large, rewritten every few steps, and worthless without the exact worker that
# wrote it. A restored run whose stage was cut short restarts that stage instead.
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_REASON = "checkpoint (resumable training state; a restored run restarts the stage)"
# Ledger columns that hold absolute paths under the state directory; restore moves them with the files.
PATH_COLUMNS = (("artifacts", "path"), ("stages", "log_path"), ("stages", "checkpoint"), ("model_versions", "path"))


class BackupError(Exception):
    """A backup or restore problem worded for the operator; several problems are one per line."""


# -- where things live --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each part of the state lives for one state directory and config."""

    state_dir: Path
    models_root: Path
    base_models_dir: Path
    kb_sqlite: Path | None  # None: the knowledge base is not a local sqlite store

    @classmethod
    def from_config(cls, cfg: Any, state_dir: Path | None = None) -> Layout:
        from .kb.factory import sqlite_path
        from .registry.deploy import models_root

        sd = Path(state_dir) if state_dir is not None else cfg.state_path()
        base = Path(os.path.expanduser(cfg.registry.base_models_dir))
        return cls(state_dir=sd, models_root=models_root(cfg.registry, sd),
                   base_models_dir=base if base.is_absolute() else sd / base,
                   kb_sqlite=sqlite_path(cfg.kb, sd) if cfg.kb.store == "sqlite" else None)

    def to_dict(self) -> dict[str, str | None]:
        return {"state_dir": str(self.state_dir), "models_root": str(self.models_root),
                "base_models_dir": str(self.base_models_dir),
                "kb_sqlite": str(self.kb_sqlite) if self.kb_sqlite else None}

    def target(self, rel: str) -> Path:
        """Where a backup file (its path in the manifest) goes in this layout."""
        area, _, rest = rel.partition("/")
        if area == "models":
            return self.models_root / rest
        if area == "base-models":
            return self.base_models_dir / rest
        if area == "kb.sqlite":
            return self.kb_sqlite or self.state_dir / "kb.sqlite"
        return self.state_dir / rel

    def roots(self) -> list[Path]:
        """Every location restore writes into (for the non-empty check)."""
        out = [self.state_dir, self.models_root, self.base_models_dir]
        if self.kb_sqlite is not None:
            out.append(self.kb_sqlite)
        return out


# -- pure decisions (tested with tables) --------------------------------------------------------------


def run_file_skip_reason(rel: str, size: int, max_bytes: int) -> str | None:
    """Why a file under a run folder stays out of the backup (None: it goes in)."""
    if CHECKPOINT_DIR in PurePosixPath(rel).parts[:-1]:
        return CHECKPOINT_REASON
    if size > max_bytes:
        return f"larger than the {max_bytes // (1 << 20)} MiB limit for run files (--max-run-file-mb)"
    return None


def manifest_path_problem(rel: Any) -> str | None:
    """What is wrong with a path listed in a manifest (None: it is a safe path inside a known area)."""
    if not isinstance(rel, str) or not rel:
        return "not a path"
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        return "not a plain relative path"
    if p.parts[0] in SQLITE_AREAS:
        return None if len(p.parts) == 1 else "unknown area"
    if p.parts[0] in TREE_AREAS and len(p.parts) >= 2:
        return None
    return "unknown area (expected one of: " + ", ".join(SQLITE_AREAS + TREE_AREAS) + ")"


def moved_path(path: str | None, moves: Iterable[tuple[str, str]]) -> str | None:
    """``path`` with the first matching old prefix replaced by its new one (whole path components only)."""
    if not path:
        return path
    for old, new in moves:
        if old == new:
            continue
        if path == old:
            return new
        if path.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + path[len(old.rstrip("/")):]
    return path


def path_moves(source: dict[str, Any], layout: Layout) -> list[tuple[str, str]]:
    """Old -> new prefixes for the ledger's recorded paths, most specific first (models may sit in the state dir)."""
    pairs = [(source.get("models_root"), str(layout.models_root)),
             (source.get("base_models_dir"), str(layout.base_models_dir)),
             (source.get("state_dir"), str(layout.state_dir))]
    return sorted(((o, n) for o, n in pairs if o), key=lambda m: len(m[0]), reverse=True)


def nested(a: Path, b: Path) -> bool:
    """Whether one of the two paths is the other or lies inside it."""
    a, b = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return a == b or a in b.parents or b in a.parents


# -- copying ------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def snapshot_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database through the backup API, in one step.

    One step holds a single read transaction for the whole copy: in WAL mode writers keep going, and the
    copy is the database as of one instant (a stepped backup restarts whenever another connection writes).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    s = sqlite3.connect(src, timeout=30)
    d = sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        d.close()
        s.close()
    at_rest(dst)


def at_rest(db: Path) -> None:
    """Switch a copied database out of WAL mode: a backup is one self-contained file, and opening a WAL
    database, even read-only, leaves -wal/-shm files beside it (the daemon turns WAL back on when it opens it)."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()


def _walk_files(root: Path) -> Iterable[tuple[str, Path, os.stat_result | None]]:
    """(posix path relative to root, path, lstat) of everything under root; dirs named ``checkpoints`` are
    yielded once, with stat None, instead of being descended into."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for d in sorted(dirnames):
            if d == CHECKPOINT_DIR:
                yield (base / d).relative_to(root).as_posix(), base / d, None
        dirnames[:] = sorted(d for d in dirnames if d != CHECKPOINT_DIR)
        for name in sorted(filenames):
            p = base / name
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue  # removed while we walked (a stage's temp file)
            yield p.relative_to(root).as_posix(), p, st


def prepare_destination(dest: Path, layout: Layout) -> bool:
    """Make ``dest`` ready for a backup; True when it was created here. Refuses a non-empty folder and a
    folder inside what is being backed up (it would copy itself)."""
    if not dest.is_absolute():
        raise BackupError(f"{dest}: the backup folder must be an absolute path (the daemon writes it)")
    for area in (layout.models_root, layout.base_models_dir, layout.state_dir / "runs", layout.state_dir / "gradebook"):
        if nested(dest, area):
            raise BackupError(f"{dest}: the backup folder may not be inside, or contain, {area} (it is backed up)")
    if dest.exists():
        if not dest.is_dir():
            raise BackupError(f"{dest}: exists and is not a folder")
        if any(dest.iterdir()):
            raise BackupError(f"{dest}: not empty; back up into a new or empty folder")
        return False
    dest.mkdir(parents=True, mode=0o700)
    return True


def discard(dest: Path, created: bool) -> None:
    """Remove a backup that failed half-way (the folder was empty or new when it started)."""
    from .registry.versions import remove_tree

    if created:
        remove_tree(dest)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()


class _Writer:
    """Collects the manifest while files land in the backup folder."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.files: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def add_copy(self, rel: str, src: Path) -> tuple[str, int]:
        sha, size = copy_hashed(src, self.dest / rel)
        self.files.append({"path": rel, "sha256": sha, "size": size})
        return sha, size

    def add_existing(self, rel: str) -> None:
        sha, size = file_sha256(self.dest / rel)
        self.files.append({"path": rel, "sha256": sha, "size": size})

    def skip(self, rel: str, reason: str, size: int | None = None) -> None:
        self.skipped.append({"path": rel, "reason": reason, **({"size": size} if size is not None else {})})


def _versions_in(ledger_copy: Path) -> list[tuple[str, str, dict]]:
    con = sqlite3.connect(ledger_copy.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        rows = con.execute("SELECT id, agent_id, meta FROM model_versions ORDER BY id").fetchall()
    finally:
        con.close()
    return [(vid, agent, json.loads(meta) if meta else {}) for vid, agent, meta in rows]


def _schema_of(ledger_file: Path) -> int:
    con = sqlite3.connect(ledger_file.absolute().as_uri() + "?mode=ro&immutable=1", uri=True)
    try:
        row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def _copy_tree(w: _Writer, root: Path, area: str) -> None:
    if not root.is_dir():
        return
    for rel, p, st in _walk_files(root):
        if st is None or not stat.S_ISREG(st.st_mode):
            w.skip(f"{area}/{rel}", "not a regular file (symlink, socket or fifo)")
        else:
            w.add_copy(f"{area}/{rel}", p)


def complete_backup(dest: Path, layout: Layout, *, version: str, actor: str,
                    max_run_file_bytes: int = DEFAULT_MAX_RUN_FILE_MB << 20) -> dict:
    """Everything after the ledger snapshot (``dest/ledger.sqlite``, written by the caller on the ledger
    thread): job store, KB, models, base models, run records, gradebook, then MANIFEST.json. Returns a summary."""
    from .registry.versions import version_dir

    t0 = time.time()
    w = _Writer(dest)
    at_rest(dest / "ledger.sqlite")
    w.add_existing("ledger.sqlite")
    jobs = layout.state_dir / "jobs.sqlite"
    if jobs.exists():
        snapshot_sqlite(jobs, dest / "jobs.sqlite")
        w.add_existing("jobs.sqlite")
    if layout.kb_sqlite is not None and layout.kb_sqlite.exists():
        snapshot_sqlite(layout.kb_sqlite, dest / "kb.sqlite")
        w.add_existing("kb.sqlite")
    # Registry versions named by the ledger snapshot, each file checked against the hash the registry recorded.
    for vid, agent, meta in _versions_in(dest / "ledger.sqlite"):
        folder = version_dir(layout.models_root, agent, vid)
        recorded = meta.get("files") or {}
        rels = sorted(recorded) or [rel for rel, _p, st in _walk_files(folder) if st is not None]
        for rel in rels:
            try:
                sha, _ = w.add_copy(f"models/{agent}/{vid}/{rel}", folder / rel)
            except FileNotFoundError:
                raise BackupError(f"model version {vid} of agent {agent}: {folder / rel} is missing; "
                                  "the registry copy is damaged (see docs/runbooks/operations.md)") from None
            if rel in recorded and sha != recorded[rel]["sha256"]:
                raise BackupError(f"model version {vid} of agent {agent}: {folder / rel} does not match its recorded "
                                  f"sha256 ({sha[:12]} != {recorded[rel]['sha256'][:12]}); the registry copy is damaged")
    _copy_tree(w, layout.base_models_dir, "base-models")
    runs = layout.state_dir / "runs"
    if runs.is_dir():
        for rel, p, st in _walk_files(runs):
            name = f"runs/{rel}"
            if st is None:
                w.skip(name, CHECKPOINT_REASON)
            elif not stat.S_ISREG(st.st_mode):
                w.skip(name, "not a regular file (symlink, socket or fifo)")
            elif reason := run_file_skip_reason(rel, st.st_size, max_run_file_bytes):
                w.skip(name, reason, st.st_size)
            else:
                w.add_copy(name, p)
    book = layout.state_dir / "gradebook"
    if book.is_dir():
        # The cursor before the entries: the sync appends entries, then moves the cursor, so a copy taken
        # this way never has a cursor past its entries (a few extra entries are deduplicated on next sync).
        order = sorted(book.iterdir(), key=lambda p: (p.name != "state.json", p.name))
        for p in order:
            if p.is_file() and not p.is_symlink():
                w.add_copy(f"gradebook/{p.name}", p)
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "daemon_version": version,
        "created_at": t0, "created_by": actor, "ledger_schema": _schema_of(dest / "ledger.sqlite"),
        "source": layout.to_dict(), "files": w.files, "skipped": w.skipped,
    }
    tmp = dest / f".{MANIFEST}.partial"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest / MANIFEST)
    return {"path": str(dest), "files": len(w.files), "bytes": sum(x["size"] for x in w.files),
            "skipped": len(w.skipped), "manifest": str(dest / MANIFEST), "duration_s": round(time.time() - t0, 3)}


# -- restore ------------------------------------------------------------------------------------------


def read_manifest(backup_dir: Path) -> dict:
    """MANIFEST.json, checked for shape (not yet against the files)."""
    path = backup_dir / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{path}: missing; {backup_dir} is not a pr1 backup, or an incomplete one "
                          "(the manifest is written last)") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{path}: unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path}: not a pr1 backup manifest (format {FORMAT!r} expected)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{path}: backup format version {doc.get('format_version')!r}; this pr1d reads "
                          f"version {FORMAT_VERSION}")
    files = doc.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("size"), int) for f in files):
        raise BackupError(f"{path}: `files` must be a list of {{path, sha256, size}}")
    if not isinstance(doc.get("source"), dict):
        raise BackupError(f"{path}: `source` (the backed-up locations) is missing")
    return doc


def verify_backup(backup_dir: Path) -> tuple[dict, list[str]]:
    """The manifest and every problem with the folder against it: a file missing, changed, unlisted or unsafe."""
    doc = read_manifest(backup_dir)
    problems: list[str] = []
    listed: set[str] = set()
    for f in doc["files"]:
        rel = f.get("path")
        bad = manifest_path_problem(rel)
        if bad:
            problems.append(f"{MANIFEST}: {rel!r}: {bad}")
            continue
        if rel in listed:
            problems.append(f"{MANIFEST}: {rel}: listed twice")
            continue
        listed.add(rel)
        p = backup_dir / rel
        if p.is_symlink() or not p.is_file():
            problems.append(f"{rel}: missing (or not a regular file)")
            continue
        sha, size = file_sha256(p)
        if size != f["size"] or sha != f["sha256"]:
            problems.append(f"{rel}: corrupt: sha256 {sha[:12]}... ({size} bytes) but the manifest says "
                            f"{f['sha256'][:12]}... ({f['size']} bytes)")
    for rel, _p, _st in _walk_files(backup_dir):
        if rel not in listed and rel != MANIFEST:
            problems.append(f"{rel}: not listed in {MANIFEST}")
    if "ledger.sqlite" not in listed:
        problems.append(f"ledger.sqlite: not in the backup; {MANIFEST} must list it")
    elif not problems:
        from .ledger.models import SCHEMA_VERSION

        try:
            schema = _schema_of(backup_dir / "ledger.sqlite")
        except sqlite3.Error as e:
            problems.append(f"ledger.sqlite: not a readable pr1 ledger: {e}")
        else:
            if schema > SCHEMA_VERSION:
                problems.append(f"ledger.sqlite: schema version {schema} is newer than this pr1d understands "
                                f"({SCHEMA_VERSION}); restore with pr1d {doc.get('daemon_version')} or newer")
    return doc, problems


def _target_problems(backup_dir: Path, layout: Layout) -> list[str]:
    out = []
    for root in layout.roots():
        if nested(root, backup_dir):
            out.append(f"{root}: overlaps the backup folder {backup_dir}; restore somewhere else")
        elif root == layout.kb_sqlite:
            if root.exists():
                out.append(f"{root}: already exists (the KB file, kb.sqlite_path); move it away first")
        elif root.exists() and not root.is_dir():
            out.append(f"{root}: exists and is not a folder")
        elif root.is_dir() and any(root.iterdir()):
            out.append(f"{root}: not empty; restore into a new or empty state directory")
    return out


def _fix_ledger(ledger_path: Path, doc: dict, layout: Layout, actor: str, backup_dir: Path) -> dict:
    """Move the ledger's recorded paths to the new layout; forget checkpoints that were not restored."""
    from sqlalchemy import text

    from .ledger.store import Ledger

    moves = path_moves(doc["source"], layout)
    led = Ledger(ledger_path)  # migrates an older schema, exactly as the daemon would on start
    moved = cleared = 0
    try:
        with led.engine.begin() as conn:
            for table, column in PATH_COLUMNS:
                rows = conn.execute(text(f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL")).all()
                for rowid, old in rows:
                    new = moved_path(old, moves)
                    if new != old:
                        conn.execute(text(f"UPDATE {table} SET {column} = :v WHERE rowid = :r"), {"v": new, "r": rowid})
                        moved += 1
            # Checkpoints are not in backups: a stage resumed from a missing one would fail, so it restarts.
            for rowid, ckpt in conn.execute(text("SELECT rowid, checkpoint FROM stages WHERE checkpoint IS NOT NULL")).all():
                if not Path(ckpt).exists():
                    conn.execute(text("UPDATE stages SET checkpoint = NULL WHERE rowid = :r"), {"r": rowid})
                    cleared += 1
        led.audit(actor, "restore", "state", str(layout.state_dir), reason=f"restored from {backup_dir}",
                  details={"backup_created_at": doc.get("created_at"), "backup_daemon_version": doc.get("daemon_version"),
                           "source": doc["source"], "paths_moved": moved, "checkpoints_cleared": cleared})
    finally:
        led.close()
    return {"paths_moved": moved, "checkpoints_cleared": cleared}


def restore(backup_dir: Path, layout: Layout, *, actor: str) -> dict:
    """Verify ``backup_dir`` completely, then lay it out in ``layout``; BackupError (nothing written) on any
    problem found before the first copy, and everything written removed again on a failure after it."""
    from .registry.versions import _make_read_only, remove_tree

    backup_dir = Path(os.path.abspath(backup_dir))
    doc, problems = verify_backup(backup_dir)
    if problems:
        raise BackupError("\n".join(problems))
    problems = _target_problems(backup_dir, layout)
    if problems:
        raise BackupError("\n".join(problems))
    # What to undo on failure: roots that did not exist go entirely; roots that existed were empty folders.
    made = [r for r in layout.roots() if not r.exists()]
    emptied = [r for r in layout.roots() if r.is_dir()]
    try:
        layout.state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        for f in doc["files"]:
            sha, _size = copy_hashed(backup_dir / f["path"], layout.target(f["path"]))
            if sha != f["sha256"]:  # changed between verification and copy: trust nothing written
                raise BackupError(f"{f['path']}: changed while it was being restored; run the restore again")
        fixed = _fix_ledger(layout.state_dir / "ledger.sqlite", doc, layout, actor, backup_dir)
        # Registry versions are read-only once registered: keep them so.
        if layout.models_root.is_dir():
            for adir in layout.models_root.iterdir():
                for vdir in adir.iterdir() if adir.is_dir() else ():
                    _make_read_only(vdir)
    except BaseException:
        for root in made:
            if root.is_dir():
                remove_tree(root)
            elif root.exists():
                root.unlink()
        for root in emptied:
            if root.is_dir():
                discard(root, created=False)
        raise
    out = {"state_dir": str(layout.state_dir), "files": len(doc["files"]),
           "bytes": sum(f["size"] for f in doc["files"]), "skipped_in_backup": len(doc.get("skipped") or []),
           "backup_created_at": doc.get("created_at"), "backup_daemon_version": doc.get("daemon_version"),
           "source_state_dir": doc["source"].get("state_dir"), **fixed}
    return out
