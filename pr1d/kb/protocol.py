"""The one `VectorStore` contract (and the `TextEmbedder` one) that every knowledge-base backend implements.

Implementations live side by side: `sqlite_store.SQLiteVectorStore` (embedded default),
`pgvector_store.PostgreSQLVectorStore` and `weaviate_store.WeaviateVectorStore`. They share these semantics:

- `score` is the cosine similarity of the query and the chunk vector, in [-1, 1], higher is better.
- `query(v, limit, min_score)` returns at most `limit` hits best first; hits scoring below `min_score`
  are dropped *after* the top `limit` were chosen (so the filter never widens the search).
- `upsert` replaces a chunk with the same id (text, vector and meta); ids are content hashes made by
  `chunking.chunk_id`, so upserting the same document twice stores it once.
- `meta["source"]` (the document a chunk came from) is indexed: `ids_for_source` lists a document's
  chunks so that ingestion can delete the stale ones when the document changes.

This module is imported by the daemon's side of the code, so it imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Dimension of all-MiniLM-L6-v2, the default embedding model.
DEFAULT_DIM = 384


class KBError(Exception):
    """A knowledge-base problem worded for the operator who has to fix it."""


class KBSchemaError(KBError):
    """A store was created with a different schema version or vector dimension than this code expects."""


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """One piece of a document with its embedding. `vector` is any float sequence (list, array, numpy row)."""

    id: str
    text: str
    vector: Sequence[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved chunk. `score` is cosine similarity in [-1, 1]."""

    id: str
    text: str
    score: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": self.score, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        return cls(id=d["id"], text=d["text"], score=float(d["score"]), meta=dict(d.get("meta") or {}))


@runtime_checkable
class VectorStore(Protocol):
    """An async store of chunks searchable by cosine similarity."""

    #: Stable identity of the store's contents ("sqlite:/path", "pgvector:host/db/table"), used in cache keys.
    name: str
    #: Vector dimension the store was created for; vectors of another length are refused.
    dim: int

    async def initialize(self) -> None:
        """Connect and create the schema if missing; refuse a store made with another dimension or schema."""

    async def upsert(self, chunks: Sequence[Chunk]) -> int:
        """Insert or replace chunks by id; return how many were written."""

    async def query(self, vector: Sequence[float], limit: int = 5, min_score: float | None = None) -> list[Hit]:
        """The `limit` nearest chunks by cosine similarity, best first, minus those under `min_score`."""

    async def count(self) -> int:
        """How many chunks the store holds."""

    async def delete(self, ids: Iterable[str]) -> int:
        """Delete chunks by id (unknown ids are ignored); return how many were deleted."""

    async def ids_for_source(self, source: str) -> set[str]:
        """Ids of the chunks whose `meta["source"]` is `source`."""

    async def close(self) -> None:
        """Release connections; the store may not be used afterwards."""


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns texts into unit-length vectors (`embed.Embedder` is the real one; tests may bring their own)."""

    #: Identifies the model in cache keys: two models never share cached vectors.
    model_id: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """One vector per text, in order."""


class StoreBase:
    """Shared checks and `async with` support for the implementations (not part of the protocol)."""

    name: str
    dim: int

    async def initialize(self) -> None:  # pragma: no cover - every implementation overrides it
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover
        raise NotImplementedError

    async def __aenter__(self):
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_vector(self, vector: Sequence[float], what: str) -> None:
        if len(vector) != self.dim:
            raise ValueError(f"{what}: vector has {len(vector)} dimensions, store {self.name} expects {self.dim}")
        # A zero vector has no direction, so its cosine similarity is undefined (NaN in every backend).
        if hasattr(vector, "astype"):  # numpy row: vectorised, bulk loads check 100,000 of these
            norm2 = float((vector.astype("f8") ** 2).sum())  # type: ignore[union-attr]
        else:
            norm2 = math.fsum(float(x) * float(x) for x in vector)
        if not math.isfinite(norm2) or norm2 == 0.0:
            raise ValueError(f"{what}: vector must be finite and non-zero for cosine similarity")

    def _check_chunks(self, chunks: Sequence[Chunk]) -> None:
        for c in chunks:
            if not c.id:
                raise ValueError("chunk with an empty id")
            self._check_vector(c.vector, f"chunk {c.id}")

    @staticmethod
    def _check_limit(limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")


def apply_min_score(hits: list[Hit], min_score: float | None) -> list[Hit]:
    """Drop hits under `min_score` (after the top `limit` were chosen: the documented semantics)."""
    if min_score is None:
        return hits
    return [h for h in hits if h.score >= min_score]


def f32_bytes(vector: Sequence[float]) -> bytes:
    """Little-endian float32 bytes of a vector (sqlite-vec's blob format).

    numpy is used when the vector already is an array (fast path for bulk loads); plain sequences go
    through the stdlib `array` so that the daemon-side code never needs numpy.
    """
    if hasattr(vector, "astype"):
        return vector.astype("<f4", copy=False).tobytes()  # type: ignore[union-attr]
    import sys
    from array import array

    a = array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - no big-endian host in sight, but be correct
        a.byteswap()
    return a.tobytes()
