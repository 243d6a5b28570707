"""Building the configured store and cache from a `KBConfig`: `open_store`, `open_cache`, `sqlite_path`.

The dataset builder stage and the ingest CLI both start here, so "which store, where" is decided in
one place: discovery finds the endpoints, this module turns them into objects. Implementations are
imported only for the store that is selected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .cache import ResilientCache, make_cache
from .config import KBConfig
from .discovery import ServiceEndpoints, create_service_discovery
from .protocol import DEFAULT_DIM, VectorStore


def sqlite_path(cfg: KBConfig, state_dir: str | Path) -> Path:
    """kb.sqlite_path, or <state_dir>/kb.sqlite when it is empty."""
    if cfg.sqlite_path:
        return Path(cfg.sqlite_path).expanduser()
    return Path(state_dir).expanduser() / "kb.sqlite"


def open_store(
    cfg: KBConfig,
    *,
    state_dir: str | Path,
    endpoints: ServiceEndpoints | None = None,
    environ: Mapping[str, str] | None = None,
    dim: int = DEFAULT_DIM,
) -> VectorStore:
    """The store `kb.store` names (not yet initialised: `await store.initialize()` or `async with store`)."""
    env = os.environ if environ is None else environ
    if cfg.store == "sqlite":
        from .sqlite_store import SQLiteVectorStore

        return SQLiteVectorStore(sqlite_path(cfg, state_dir), dim=dim)
    endpoints = endpoints or create_service_discovery(cfg, env)
    if cfg.store == "pgvector":
        from .pgvector_store import PostgreSQLVectorStore

        assert endpoints.postgres is not None  # discovery raised otherwise
        return PostgreSQLVectorStore(
            endpoints.postgres.dsn,
            table=cfg.postgres_table,
            dim=dim,
            hnsw_m=cfg.hnsw_m,
            hnsw_ef_construction=cfg.hnsw_ef_construction,
            ef_search=cfg.hnsw_ef_search,
        )
    from .weaviate_store import WeaviateVectorStore

    assert endpoints.weaviate is not None
    return WeaviateVectorStore(
        endpoints.weaviate.url,
        grpc_port=endpoints.weaviate.grpc_port or cfg.weaviate_grpc_port,
        collection=cfg.weaviate_collection,
        dim=dim,
        api_key=env.get(cfg.weaviate_api_key_env) or None,
    )


def open_cache(cfg: KBConfig, endpoints: ServiceEndpoints | None = None) -> ResilientCache:
    """Redis when discovery found one (falling back to the LRU if it fails), else the in-process LRU."""
    url = endpoints.redis.url if endpoints is not None and endpoints.redis is not None else ""
    return make_cache(url, ttl_s=cfg.cache_ttl_s, lru_size=cfg.lru_size, timeout_s=cfg.redis_timeout_s)
