"""`WeaviateVectorStore`: chunks in a Weaviate collection (weaviate-client v4, async API), plus its mapping code.

The collection stores vectors we provide (no server-side vectorizer) in an HNSW index with the cosine
distance. Each chunk is one object:

- uuid: uuid5 of the chunk id (`weaviate_uuid`), so upserting the same chunk replaces the same object
  (Weaviate's batch import overwrites an existing uuid);
- properties: `chunk_id`, `source` (both exact-match, filterable), `text`, `meta_json` (the meta dict as
  JSON: Weaviate properties need a fixed schema and chunk meta is free-form).

Weaviate reports the cosine *distance* `1 - cos`; `distance_to_score` turns it back into the similarity
the protocol promises. The mapping functions are pure and unit-tested without a server
(tests/kb/test_kb_weaviate.py); the integration test runs when `WEAVIATE_URL` is set.
weaviate-client is imported only when a store initialises.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .protocol import DEFAULT_DIM, Chunk, Hit, KBError, StoreBase, apply_min_score

# Fixed namespace for uuid5(chunk id): never change it, or every stored object gets a new identity.
CHUNK_UUID_NAMESPACE = uuid.UUID("6f1c9a52-3f0e-5b7d-9a41-2c8e5d0b7a13")
PROPERTIES = ("chunk_id", "source", "text", "meta_json")
# Weaviate's default QUERY_MAXIMUM_RESULTS caps offset + limit of a filtered fetch.
_FETCH_PAGE = 1000
_DELETE_BATCH = 500


# -- mapping (pure) ---------------------------------------------------------------------------------
def weaviate_uuid(chunk_id: str) -> str:
    """The Weaviate object uuid of a chunk: stable across runs and machines."""
    return str(uuid.uuid5(CHUNK_UUID_NAMESPACE, chunk_id))


def chunk_to_object(chunk: Chunk) -> tuple[str, dict[str, Any], list[float]]:
    """(uuid, properties, vector) for one chunk."""
    props = {
        "chunk_id": chunk.id,
        "source": chunk.source,
        "text": chunk.text,
        "meta_json": json.dumps(chunk.meta, sort_keys=True),
    }
    return weaviate_uuid(chunk.id), props, [float(x) for x in chunk.vector]


def distance_to_score(distance: float | None) -> float:
    """Weaviate's cosine distance (0..2) to cosine similarity (1..-1)."""
    if distance is None:
        # Only a query without return_metadata(distance=True) lacks it: a programming error here.
        raise KBError("Weaviate returned no distance for a near_vector hit")
    return 1.0 - float(distance)


def object_to_hit(properties: Mapping[str, Any], distance: float | None) -> Hit:
    """A query result object (its properties and metadata.distance) as a Hit."""
    raw = properties.get("meta_json") or "{}"
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    return Hit(
        id=str(properties["chunk_id"]),
        text=str(properties.get("text") or ""),
        score=distance_to_score(distance),
        meta=meta,
    )


def parse_weaviate_url(url: str) -> tuple[str, int, bool]:
    """(host, http port, secure) of `http(s)://host[:port]`; the port defaults to 80/443."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise KBError(f"Weaviate URL {url!r} must look like http://host:8080")
    secure = u.scheme == "https"
    return u.hostname, u.port or (443 if secure else 80), secure


# -- the store --------------------------------------------------------------------------------------
class WeaviateVectorStore(StoreBase):
    """Chunks in a Weaviate collection with self-provided vectors and a cosine HNSW index."""

    def __init__(
        self,
        url: str,
        *,
        grpc_port: int = 50051,
        collection: str = "Pr1KbChunk",
        dim: int = DEFAULT_DIM,
        api_key: str | None = None,
        ef: int = 128,
    ):
        self.url = url
        self.host, self.http_port, self.secure = parse_weaviate_url(url)
        self.grpc_port = grpc_port
        self.collection_name = collection
        self.dim = dim
        self.ef = ef
        self._api_key = api_key
        self.name = f"weaviate:{self.host}:{self.http_port}/{collection}"
        self._client: Any = None
        self._coll: Any = None

    def __repr__(self) -> str:
        return f"WeaviateVectorStore({self.name!r})"

    async def initialize(self) -> None:
        if self._client is not None:
            return
        try:
            import weaviate
            from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
        except ImportError:  # pragma: no cover - depends on the install
            raise KBError("the Weaviate store needs weaviate-client (pip install 'pr1[kb]')") from None
        auth = weaviate.auth.AuthApiKey(self._api_key) if self._api_key else None
        client = weaviate.use_async_with_custom(
            http_host=self.host,
            http_port=self.http_port,
            http_secure=self.secure,
            grpc_host=self.host,
            grpc_port=self.grpc_port,
            grpc_secure=self.secure,
            auth_credentials=auth,
        )
        try:
            await client.connect()
            if not await client.collections.exists(self.collection_name):
                await client.collections.create(
                    self.collection_name,
                    properties=[
                        Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                                 index_searchable=False),
                        Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                                 index_searchable=False),
                        Property(name="text", data_type=DataType.TEXT, index_filterable=False),
                        Property(name="meta_json", data_type=DataType.TEXT, index_filterable=False,
                                 index_searchable=False),
                    ],
                    vector_config=Configure.Vectors.self_provided(
                        vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE, ef=self.ef)
                    ),
                )
            self._coll = client.collections.use(self.collection_name)
        except Exception as e:
            await client.close()
            raise KBError(f"{self.name}: cannot use Weaviate: {e}") from e
        self._client = client

    def _collection(self) -> Any:
        if self._coll is None:
            raise KBError(f"{self.name}: store used before initialize() or after close()")
        return self._coll

    async def upsert(self, chunks: Sequence[Chunk]) -> int:
        self._check_chunks(chunks)
        if not chunks:
            return 0
        from weaviate.classes.data import DataObject

        latest = {c.id: c for c in chunks}  # last one wins within a batch, as in the other stores
        objs = []
        for c in latest.values():
            oid, props, vec = chunk_to_object(c)
            objs.append(DataObject(properties=props, uuid=oid, vector=vec))
        res = await self._collection().data.insert_many(objs)
        if res.has_errors:
            first = next(iter(res.errors.values()))
            raise KBError(f"{self.name}: {len(res.errors)} of {len(objs)} chunks failed to upsert: {first.message}")
        return len(chunks)

    async def query(self, vector: Sequence[float], limit: int = 5, min_score: float | None = None) -> list[Hit]:
        self._check_vector(vector, "query")
        self._check_limit(limit)
        from weaviate.classes.query import MetadataQuery

        res = await self._collection().query.near_vector(
            near_vector=[float(x) for x in vector],
            limit=limit,
            return_metadata=MetadataQuery(distance=True),
            return_properties=list(PROPERTIES),
        )
        hits = [object_to_hit(o.properties, o.metadata.distance) for o in res.objects]
        hits.sort(key=lambda h: (-h.score, h.id))
        return apply_min_score(hits, min_score)

    async def count(self) -> int:
        res = await self._collection().aggregate.over_all(total_count=True)
        return int(res.total_count or 0)

    async def delete(self, ids: Iterable[str]) -> int:
        from weaviate.classes.query import Filter

        uuids = [weaviate_uuid(i) for i in dict.fromkeys(ids)]
        n = 0
        for i in range(0, len(uuids), _DELETE_BATCH):
            res = await self._collection().data.delete_many(where=Filter.by_id().contains_any(uuids[i : i + _DELETE_BATCH]))
            n += int(res.successful)
        return n

    async def ids_for_source(self, source: str) -> set[str]:
        from weaviate.classes.query import Filter

        out: set[str] = set()
        offset = 0
        while True:
            res = await self._collection().query.fetch_objects(
                filters=Filter.by_property("source").equal(source),
                limit=_FETCH_PAGE,
                offset=offset,
                return_properties=["chunk_id"],
            )
            out.update(str(o.properties["chunk_id"]) for o in res.objects)
            if len(res.objects) < _FETCH_PAGE:
                return out
            offset += _FETCH_PAGE

    async def drop(self) -> None:
        """Delete the whole collection (tests clean up with it)."""
        if self._client is not None:
            await self._client.collections.delete(self.collection_name)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._coll = self._client, None, None
            await client.close()
