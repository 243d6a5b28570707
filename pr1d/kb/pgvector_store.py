"""`PostgreSQLVectorStore`: chunks in PostgreSQL with pgvector, searched through an HNSW cosine index (asyncpg).

Schema (version 1), per configured table `T`:

- `pr1_kb_meta(table_name PRIMARY KEY, schema_version, dim, metric)`: one row per KB table; a table made
  with another version or dimension is refused.
- `T(id text PRIMARY KEY, source text, text text, meta jsonb, embedding vector(dim))`, an index on
  `source` and `T_hnsw`: `USING hnsw (embedding vector_cosine_ops) WITH (m, ef_construction)`.

Queries order by `embedding <=> $1` (cosine distance) so that PostgreSQL uses the HNSW index, and return
`1 - distance` as the score. `hnsw.ef_search` (kb.hnsw_ef_search, default 100) is a startup parameter of
every pooled connection, and is raised per query when a caller asks for more rows than it, since HNSW can
never return more than ef_search rows.

Vectors travel in pgvector's binary format (a codec registered on each connection), so neither the
`pgvector` Python package nor numpy is required. asyncpg is imported only when a store initialises.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .config import _PG_IDENT
from .protocol import DEFAULT_DIM, Chunk, Hit, KBError, KBSchemaError, StoreBase, apply_min_score

SCHEMA_VERSION = 1


def _encode_vector(v: Sequence[float]) -> bytes:
    # pgvector binary format: uint16 dimension, uint16 unused, then float4 values, all big-endian.
    if hasattr(v, "astype"):
        body = v.astype(">f4", copy=False).tobytes()  # type: ignore[union-attr]
        return struct.pack(">HH", len(v), 0) + body
    from array import array

    a = array("f", v)
    if sys.byteorder == "little":
        a.byteswap()
    return struct.pack(">HH", len(a), 0) + a.tobytes()


def _decode_vector(data: bytes) -> list[float]:
    from array import array

    (dim, _unused) = struct.unpack_from(">HH", data)
    a = array("f")
    a.frombytes(data[4 : 4 + 4 * dim])
    if sys.byteorder == "little":
        a.byteswap()
    return a.tolist()


def _encode_jsonb(v: Any) -> bytes:
    return b"\x01" + json.dumps(v, sort_keys=True).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


def dsn_label(dsn: str) -> str:
    """host:port/database of a DSN, without user or password (for names, logs and errors)."""
    try:
        u = urlsplit(dsn)
    except ValueError:
        return "postgresql"
    host = u.hostname or "local-socket"
    if not u.hostname and "host=" in (u.query or ""):
        host = "socket"
    port = f":{u.port}" if u.port else ""
    return f"{host}{port}{u.path or '/'}"


class PostgreSQLVectorStore(StoreBase):
    """Chunks in a PostgreSQL table with a pgvector HNSW index (cosine)."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "kb_chunks",
        dim: int = DEFAULT_DIM,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        ef_search: int = 100,
        pool_min: int = 1,
        pool_max: int = 4,
        create_index: bool = True,
    ):
        if not _PG_IDENT.match(table):
            raise ValueError(f"table name {table!r} must be a lower-case SQL identifier")
        self.dsn = dsn
        self.table = table
        self.dim = dim
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self.pool_min, self.pool_max = pool_min, pool_max
        # Bulk loads are faster with the index built once after the rows (pgvector's own advice):
        # create_index=False defers it to build_index().
        self.create_index = create_index
        self.name = f"pgvector:{dsn_label(dsn)}/{table}"
        self._pool: Any = None
        self._vector_schema = "public"

    def __repr__(self) -> str:  # never show the DSN: it may carry the password
        return f"PostgreSQLVectorStore({self.name!r})"

    async def _init_connection(self, conn: Any) -> None:
        await conn.set_type_codec(
            "vector", schema=self._vector_schema, encoder=_encode_vector, decoder=_decode_vector, format="binary"
        )
        # Binary jsonb (a version byte, then the JSON text): COPY, used by upsert, only speaks binary.
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
        )

    async def initialize(self) -> None:
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError:  # pragma: no cover - depends on the install
            raise KBError("the pgvector store needs asyncpg (pip install 'pr1[kb]')") from None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10)
        except (OSError, asyncpg.PostgresError) as e:
            raise KBError(f"{self.name}: cannot connect to PostgreSQL: {e}") from None
        try:
            await self._create_schema(conn, asyncpg)
        finally:
            await conn.close()
        # ef_search goes in as a startup parameter, not a SET in `init`: the pool runs RESET ALL on
        # every release, which would silently put a SET value back to pgvector's default of 40.
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_min, max_size=self.pool_max, init=self._init_connection, timeout=10,
            server_settings={"hnsw.ef_search": str(int(self.ef_search))},
        )

    async def _create_schema(self, conn: Any, asyncpg: Any) -> None:
        t = self.table
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.PostgresError as e:
            raise KBError(
                f"{self.name}: the pgvector extension is not available ({e}); install pgvector on the server "
                "or have a superuser run CREATE EXTENSION vector in this database"
            ) from None
        # The extension may live in another schema than public; the codec must name the right one.
        self._vector_schema = await conn.fetchval(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        # Several workers may initialise at once: serialise schema creation on an advisory lock.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pr1_kb_schema'))")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS pr1_kb_meta (table_name text PRIMARY KEY, schema_version int NOT NULL, "
                "dim int NOT NULL, metric text NOT NULL)"
            )
            row = await conn.fetchrow("SELECT schema_version, dim FROM pr1_kb_meta WHERE table_name = $1", t)
            if row is None:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY, source text NOT NULL, text text NOT NULL, "
                    f"meta jsonb NOT NULL, embedding vector({int(self.dim)}) NOT NULL)"
                )
                await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_source ON {t} (source)")
                await conn.execute(
                    "INSERT INTO pr1_kb_meta(table_name, schema_version, dim, metric) VALUES ($1, $2, $3, 'cosine')",
                    t,
                    SCHEMA_VERSION,
                    self.dim,
                )
            elif row["schema_version"] != SCHEMA_VERSION:
                raise KBSchemaError(
                    f"{self.name}: knowledge-base schema version {row['schema_version']}, this pr1 reads version "
                    f"{SCHEMA_VERSION}; re-ingest into a new kb.postgres_table"
                )
            elif row["dim"] != self.dim:
                raise KBSchemaError(
                    f"{self.name}: made for {row['dim']}-dimensional vectors, the embedding model gives {self.dim}; "
                    "re-ingest into a new kb.postgres_table"
                )
        if self.create_index:
            await self._create_hnsw(conn)

    async def _create_hnsw(self, conn: Any, maintenance_work_mem: str | None = None) -> None:
        t = self.table
        if maintenance_work_mem:
            # The HNSW graph builds far faster when it fits in maintenance_work_mem.
            await conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = {int(self.hnsw_m)}, ef_construction = {int(self.hnsw_ef_construction)})"
        )

    async def build_index(self, maintenance_work_mem: str = "512MB") -> None:
        """Create the HNSW index if it is missing (after a bulk load made with create_index=False)."""
        async with self._acquire() as conn:
            await self._create_hnsw(conn, maintenance_work_mem)
            await conn.execute("RESET maintenance_work_mem")
            await conn.execute(f"ANALYZE {self.table}")

    def _acquire(self):
        if self._pool is None:
            raise KBError(f"{self.name}: store used before initialize() or after close()")
        return self._pool.acquire()

    async def upsert(self, chunks: Sequence[Chunk]) -> int:
        self._check_chunks(chunks)
        if not chunks:
            return 0
        # One row per id, the last one winning, as if the chunks had been upserted one by one.
        rows = list({c.id: (c.id, c.source, c.text, c.meta, c.vector) for c in chunks}.values())
        async with self._acquire() as conn, conn.transaction():
            # COPY into a temporary table, then one INSERT .. ON CONFLICT: one round trip for the
            # rows instead of one per row, and still an upsert.
            await conn.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS _kb_stage (LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table("_kb_stage", records=rows, columns=["id", "source", "text", "meta", "embedding"])
            await conn.execute(
                f"INSERT INTO {self.table} (id, source, text, meta, embedding) "
                "SELECT id, source, text, meta, embedding FROM _kb_stage "
                "ON CONFLICT (id) DO UPDATE SET source = excluded.source, text = excluded.text, "
                "meta = excluded.meta, embedding = excluded.embedding"
            )
        return len(rows)

    async def current_ef_search(self) -> int:
        """The hnsw.ef_search a query on this store's connections runs with (tests check it sticks)."""
        async with self._acquire() as conn:
            return int(await conn.fetchval("SHOW hnsw.ef_search"))

    async def query(self, vector: Sequence[float], limit: int = 5, min_score: float | None = None) -> list[Hit]:
        self._check_vector(vector, "query")
        self._check_limit(limit)
        sql = (
            f"SELECT id, text, meta, 1 - (embedding <=> $1) AS score FROM {self.table} "
            "ORDER BY embedding <=> $1 LIMIT $2"
        )
        async with self._acquire() as conn:
            if limit > self.ef_search:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {int(min(limit, 1000))}")
                    rows = await conn.fetch(sql, vector, limit)
            else:
                rows = await conn.fetch(sql, vector, limit)
        hits = [Hit(id=r["id"], text=r["text"], score=float(r["score"]), meta=r["meta"]) for r in rows]
        return apply_min_score(hits, min_score)

    async def count(self) -> int:
        async with self._acquire() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self.table}"))

    async def delete(self, ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        async with self._acquire() as conn:
            status = await conn.execute(f"DELETE FROM {self.table} WHERE id = ANY($1::text[])", ids)
        return int(status.split()[-1])  # "DELETE n"

    async def ids_for_source(self, source: str) -> set[str]:
        async with self._acquire() as conn:
            rows = await conn.fetch(f"SELECT id FROM {self.table} WHERE source = $1", source)
        return {r["id"] for r in rows}

    async def drop(self) -> None:
        """Drop the table and its meta row (tests and benchmarks clean up with it)."""
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(f"DROP TABLE IF EXISTS {self.table}")
            await conn.execute("DELETE FROM pr1_kb_meta WHERE table_name = $1", self.table)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
