"""`SQLiteVectorStore`: the embedded default, one SQLite file with a sqlite-vec `vec0` table.

Layout (schema version 1):

- `kb_meta(key, value)`: `schema_version`, `dim`, `metric`; a file made with another version or
  dimension is refused rather than half-read.
- `kb_chunks(rowid, id UNIQUE, source, text, meta)`: the chunk rows; `source` is indexed for re-ingestion.
- `kb_vec`: `vec0(embedding float[dim] distance_metric=cosine)`, keyed by the same rowid.

sqlite-vec's `vec0` search is exact (brute force over every vector), so recall is 1.0 and the score is
`1 - cosine distance`, exactly the cosine similarity. It suits the embedded sizes this store is for
(tens of thousands of chunks, see benchmarks/kb_query.py for 100,000).

The stdlib `sqlite3` of this Python is built without extension loading; `pysqlite3` (the
`pysqlite3-binary` wheel, with a current SQLite) can load sqlite-vec. All calls run on one dedicated
thread so the connection is only ever touched from the thread that opened it and the event loop
never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .protocol import DEFAULT_DIM, Chunk, Hit, KBError, KBSchemaError, StoreBase, apply_min_score, f32_bytes

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kb_chunks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_chunks_source ON kb_chunks(source);
"""


def connect_sqlite(path: str | Path):
    """A pysqlite3 connection with sqlite-vec loaded (raises KBError saying what to install)."""
    try:
        from pysqlite3 import dbapi2 as sqlite3
    except ImportError:  # pragma: no cover - depends on the install
        raise KBError("the sqlite vector store needs pysqlite3-binary (pip install 'pr1[kb]')") from None
    try:
        import sqlite_vec
    except ImportError:  # pragma: no cover
        raise KBError("the sqlite vector store needs sqlite-vec (pip install 'pr1[kb]')") from None
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    # Loading stays possible only for the moment it is needed.
    conn.enable_load_extension(False)
    return conn


class SQLiteVectorStore(StoreBase):
    """Chunks and vectors in one SQLite file (sqlite-vec, exact cosine search)."""

    def __init__(self, path: str | Path, *, dim: int = DEFAULT_DIM):
        self.path = Path(path).expanduser()
        self.dim = dim
        self.name = f"sqlite:{self.path.resolve()}"
        # One thread owns the connection; calls queue behind each other, which is also SQLite's own model.
        self._pool: ThreadPoolExecutor | None = None
        self._conn: Any = None

    # -- plumbing -------------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None or self._conn is None:
            raise KBError(f"{self.name}: store used before initialize() or after close()")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- protocol -------------------------------------------------------------------------------------
    async def initialize(self) -> None:
        if self._conn is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-sqlite")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._pool, self._open)
        except BaseException:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_sqlite(self.path)
        try:
            # WAL lets a reader query while an ingestion writes; NORMAL is enough because the KB can
            # always be re-ingested from its documents.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("BEGIN IMMEDIATE")
            # Statement by statement: executescript() would commit the transaction opened above.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM kb_meta").fetchall())
            if not meta:
                conn.executemany(
                    "INSERT INTO kb_meta(key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("dim", str(self.dim)), ("metric", "cosine")],
                )
                conn.execute(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS kb_vec USING vec0("
                    f"embedding float[{int(self.dim)}] distance_metric=cosine)"
                )
            else:
                self._check_meta(meta)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        try:
            os.chmod(self.path, 0o640)  # the KB may quote internal documents: not world-readable
        except OSError:
            pass
        return conn

    def _check_meta(self, meta: dict[str, str]) -> None:
        version = int(meta.get("schema_version", "0"))
        if version != SCHEMA_VERSION:
            raise KBSchemaError(
                f"{self.path}: knowledge-base schema version {version}, this pr1 reads version {SCHEMA_VERSION}; "
                "re-ingest into a new kb.sqlite_path"
            )
        if int(meta.get("dim", "0")) != self.dim:
            raise KBSchemaError(
                f"{self.path}: made for {meta.get('dim')}-dimensional vectors, the embedding model gives {self.dim}; "
                "re-ingest into a new kb.sqlite_path (or delete this file)"
            )

    async def upsert(self, chunks: Sequence[Chunk]) -> int:
        self._check_chunks(chunks)
        if not chunks:
            return 0
        rows = [(c.id, c.source, c.text, json.dumps(c.meta, sort_keys=True), f32_bytes(c.vector)) for c in chunks]
        return await self._call(self._upsert, rows)

    def _upsert(self, rows: list[tuple[str, str, str, str, bytes]]) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for cid, source, text, meta, blob in rows:
                (rowid,) = conn.execute(
                    "INSERT INTO kb_chunks(id, source, text, meta) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET source=excluded.source, text=excluded.text, meta=excluded.meta "
                    "RETURNING rowid",
                    (cid, source, text, meta),
                ).fetchone()
                # vec0 has no UPSERT: replace the vector row explicitly.
                conn.execute("DELETE FROM kb_vec WHERE rowid = ?", (rowid,))
                conn.execute("INSERT INTO kb_vec(rowid, embedding) VALUES (?, ?)", (rowid, blob))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    async def query(self, vector: Sequence[float], limit: int = 5, min_score: float | None = None) -> list[Hit]:
        self._check_vector(vector, "query")
        self._check_limit(limit)
        rows = await self._call(self._query, f32_bytes(vector), limit)
        hits = [Hit(id=cid, text=text, score=1.0 - float(dist), meta=json.loads(meta)) for cid, text, meta, dist in rows]
        return apply_min_score(hits, min_score)

    def _query(self, blob: bytes, limit: int) -> list[tuple[str, str, str, float]]:
        return self._conn.execute(
            "WITH knn AS (SELECT rowid, distance FROM kb_vec WHERE embedding MATCH ? AND k = ?) "
            "SELECT c.id, c.text, c.meta, knn.distance FROM knn JOIN kb_chunks c ON c.rowid = knn.rowid "
            "ORDER BY knn.distance, c.id",
            (blob, limit),
        ).fetchall()

    async def count(self) -> int:
        return await self._call(lambda: self._conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0])

    async def delete(self, ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        return await self._call(self._delete, ids)

    def _delete(self, ids: list[str]) -> int:
        conn = self._conn
        n = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            # SQLite caps bound parameters per statement; 500 stays well inside every build's limit.
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                rowids = [r for (r,) in conn.execute(f"SELECT rowid FROM kb_chunks WHERE id IN ({marks})", part)]
                if rowids:
                    rmarks = ",".join("?" * len(rowids))
                    conn.execute(f"DELETE FROM kb_vec WHERE rowid IN ({rmarks})", rowids)
                    conn.execute(f"DELETE FROM kb_chunks WHERE rowid IN ({rmarks})", rowids)
                    n += len(rowids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return n

    async def ids_for_source(self, source: str) -> set[str]:
        rows = await self._call(lambda: self._conn.execute("SELECT id FROM kb_chunks WHERE source = ?", (source,)).fetchall())
        return {r[0] for r in rows}

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)
        self._pool = None
