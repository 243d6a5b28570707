"""Loading documents into the knowledge base: `ingest_path()` and the `python -m pr1d.kb.ingest PATH` CLI.

Accepted files: markdown (`.md`, `.markdown`), text (`.txt`) and JSONL (`.jsonl`, one
`{"text": ..., "id"?: ..., "meta"?: {...}}` per line). A directory is walked recursively (hidden
entries skipped, files in sorted order). Each file is chunked (`chunking.chunk_document`); every chunk's
`meta` carries `source` (the path relative to the ingested root), `chunk_index` and `heading`, plus
`doc_id` and the line's own `meta` for JSONL.

Re-ingestion is idempotent. A chunk's id is sha256(source, index, text), so for each file:

- ids already in the store are *unchanged*: not embedded again, not written again;
- new ids are embedded (in batches, through the embedding cache) and upserted;
- ids the store holds for that source but the file no longer produces are *stale* and deleted.

When anything changed, the KB generation is bumped in the cache so cached query results are not reused.

The CLI prints one JSON report on stdout (exit 0), or an error on stderr (exit 1; 2 for usage). The
`pr1ctl kb ingest` command and the `kb.ingest` stage wrap it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache import ResilientCache
from .chunking import chunk_document, chunk_id
from .config import KBConfig
from .protocol import Chunk, KBError, TextEmbedder, VectorStore
from .retrieve import bump_generation

SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".jsonl": "jsonl"}
# Chunks embedded and upserted together: big enough to keep the model busy, small enough to bound memory.
BATCH = 256


@dataclass
class IngestReport:
    """What an ingestion did. `skipped_unchanged` chunks were already stored with the same content."""

    files: int = 0
    chunks: int = 0
    upserted: int = 0
    skipped_unchanged: int = 0
    deleted_stale: int = 0
    embedded: int = 0
    seconds: float = 0.0
    store: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Pending:
    id: str
    text: str
    meta: dict[str, Any]


def iter_files(path: Path) -> Iterator[tuple[Path, str]]:
    """(file, source name) for every supported file under `path`; source is relative to the root."""
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise KBError(f"{path}: unsupported file type (use {', '.join(sorted(SUFFIXES))})")
        yield path, path.name
        return
    if not path.is_dir():
        raise KBError(f"{path}: no such file or directory")
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            yield p, rel.as_posix()


def file_chunks(file: Path, source: str, cfg: KBConfig) -> list[_Pending]:
    """The chunks one file yields, with their ids and meta (no vectors yet)."""
    kind = SUFFIXES[file.suffix.lower()]
    text = file.read_text(encoding="utf-8")
    out: dict[str, _Pending] = {}

    def add(doc_text: str, *, markdown: bool, doc_key: str, extra: dict[str, Any]) -> None:
        for tc in chunk_document(doc_text, chunk_tokens=cfg.chunk_tokens, overlap=cfg.chunk_overlap, markdown=markdown):
            # Indexed within its document: editing one JSONL record leaves the other records' ids alone.
            cid = chunk_id(source, tc.index, f"{doc_key}\x1f{tc.text}" if doc_key else tc.text)
            meta = {**extra, "source": source, "chunk_index": tc.index, "heading": tc.heading}
            out.setdefault(cid, _Pending(cid, tc.text, meta))

    if kind == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise KBError(f"{file}:{n}: not JSON: {e}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
                raise KBError(f"{file}:{n}: each line needs a non-empty \"text\" string")
            meta = rec.get("meta") or {}
            if not isinstance(meta, dict):
                raise KBError(f"{file}:{n}: \"meta\" must be an object")
            doc_id = str(rec["id"]) if rec.get("id") is not None else f"line-{n}"
            add(rec["text"], markdown=False, doc_key=doc_id, extra={**meta, "doc_id": doc_id})
    else:
        add(text, markdown=kind == "markdown", doc_key="", extra={})
    return list(out.values())


async def ingest_path(
    path: str | Path,
    store: VectorStore,
    embedder: TextEmbedder,
    cfg: KBConfig,
    *,
    cache: ResilientCache | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> IngestReport:
    """Load the documents under `path` into `store` (initialised), idempotently; see the module docstring."""
    t0 = time.monotonic()
    root = Path(path).expanduser()
    files = list(iter_files(root))
    report = IngestReport(store=store.name)
    pending: list[_Pending] = []

    async def flush() -> None:
        if not pending:
            return
        vectors = await asyncio.to_thread(embedder.embed, [p.text for p in pending])
        report.embedded += len(pending)
        report.upserted += await store.upsert(
            [Chunk(p.id, p.text, v, p.meta) for p, v in zip(pending, vectors, strict=True)]
        )
        pending.clear()

    for n, (file, source) in enumerate(files, 1):
        chunks = file_chunks(file, source, cfg)
        existing = await store.ids_for_source(source)
        wanted = {c.id for c in chunks}
        report.files += 1
        report.chunks += len(chunks)
        report.skipped_unchanged += len(wanted & existing)
        for c in chunks:
            if c.id not in existing:
                pending.append(c)
                if len(pending) >= BATCH:
                    await flush()
        stale = existing - wanted
        if stale:
            report.deleted_stale += await store.delete(stale)
        if progress:
            progress(n, len(files), source)
    await flush()
    if report.upserted or report.deleted_stale:
        bump_generation(cache, store.name)
    report.seconds = round(time.monotonic() - t0, 3)
    return report


# -- CLI --------------------------------------------------------------------------------------------
def _load_kb_config(config_path: str | None) -> tuple[KBConfig, Path]:
    """The `[kb]` section and state dir from pr1d's layered config (defaults when `[kb]` is not mounted)."""
    from ..config import ConfigError, load_config

    try:
        full = load_config([Path(config_path)] if config_path else None)
    except ConfigError as e:
        raise KBError(str(e)) from None
    kb = getattr(full, "kb", None)
    return (kb if isinstance(kb, KBConfig) else KBConfig()), full.state_path()


async def _run_cli(args: argparse.Namespace) -> IngestReport:
    from .discovery import create_service_discovery
    from .embed import Embedder
    from .factory import open_cache, open_store

    cfg, state_dir = _load_kb_config(args.config)
    over: dict[str, Any] = {}
    if args.store:
        over["store"] = args.store
    if args.sqlite_path:
        over["sqlite_path"] = args.sqlite_path
    if over:
        cfg = KBConfig.model_validate(cfg.model_dump() | over)
    if args.state_dir:
        state_dir = Path(args.state_dir)
    endpoints = create_service_discovery(cfg)
    cache = open_cache(cfg, endpoints)
    embedder = Embedder(cfg.embedding_model, cache=cache, device=cfg.embedding_device,
                        batch_size=cfg.embedding_batch_size, ttl_s=cfg.cache_ttl_s)
    store = open_store(cfg, state_dir=state_dir, endpoints=endpoints, dim=embedder.dim)
    try:
        async with store:
            report = await ingest_path(args.path, store, embedder, cfg, cache=cache)
            total = await store.count()
    finally:
        cache.close()
    out = report.to_dict() | {"total_chunks": total, "cache": cache.stats.to_dict()}
    print(json.dumps(out, sort_keys=True))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pr1d.kb.ingest", description="Load documents into the knowledge base.")
    ap.add_argument("path", help="a file or directory of .md, .txt and .jsonl documents")
    ap.add_argument("--config", help="pr1d config file (default: the usual layers)")
    ap.add_argument("--store", choices=["sqlite", "pgvector", "weaviate"], help="override kb.store")
    ap.add_argument("--sqlite-path", help="override kb.sqlite_path")
    ap.add_argument("--state-dir", help="override daemon.state_dir (where kb.sqlite lives by default)")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(_run_cli(args))
    except (KBError, OSError, ValueError) as e:
        # DiscoveryError, KBSchemaError and config errors all read as one line for the operator.
        print(f"pr1d.kb.ingest: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a driver or server error: still one line and exit 1, as the CLI contract says
        print(f"pr1d.kb.ingest: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
