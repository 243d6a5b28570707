"""One contract test suite, run against every VectorStore: sqlite-vec and pgvector always, Weaviate with WEAVIATE_URL."""

from __future__ import annotations

import math
import random

import pytest

from pr1d.kb.protocol import Chunk, KBSchemaError, VectorStore


def unit(*xs: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in xs))
    return [x / n for x in xs]


def cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


E = [[1.0 if i == j else 0.0 for i in range(8)] for j in range(8)]  # the basis vectors of R^8


def chunk(cid: str, vec, source: str = "doc.md", **meta) -> Chunk:
    return Chunk(cid, f"text of {cid}", vec, {"source": source, **meta})


async def test_store_satisfies_protocol(make_store):
    store = make_store()
    assert isinstance(store, VectorStore)
    async with store:
        assert await store.count() == 0
        assert await store.query(E[0], limit=3) == []


async def test_query_returns_nearest_by_cosine_best_first(make_store):
    vecs = {"a": E[0], "b": unit(1, 1, 0, 0, 0, 0, 0, 0), "c": E[1], "d": [-1.0, 0, 0, 0, 0, 0, 0, 0]}
    async with make_store() as store:
        assert await store.upsert([chunk(k, v) for k, v in vecs.items()]) == 4
        assert await store.count() == 4
        q = unit(3, 1, 0, 0, 0, 0, 0, 0)
        hits = await store.query(q, limit=3)
        assert [h.id for h in hits] == ["a", "b", "c"]
        for h in hits:
            assert h.score == pytest.approx(cos(q, vecs[h.id]), abs=1e-5)
            assert h.text == f"text of {h.id}"
            assert h.meta["source"] == "doc.md"
        # The exact opposite vector scores -1: scores span the whole cosine range.
        every = await store.query(q, limit=10)
        assert [h.id for h in every] == ["a", "b", "c", "d"]
        assert every[-1].score == pytest.approx(cos(q, vecs["d"]), abs=1e-5)


async def test_min_score_drops_hits_after_the_limit(make_store):
    async with make_store() as store:
        await store.upsert([chunk("a", E[0]), chunk("b", unit(1, 1, 0, 0, 0, 0, 0, 0)), chunk("c", E[1])])
        hits = await store.query(E[0], limit=2, min_score=0.8)
        assert [h.id for h in hits] == ["a"]  # b scores 0.707
        hits = await store.query(E[0], limit=1, min_score=0.5)
        assert [h.id for h in hits] == ["a"]
        assert await store.query(E[1], limit=5, min_score=1.01) == []


async def test_upsert_replaces_by_id_and_is_idempotent(make_store):
    async with make_store() as store:
        await store.upsert([chunk("a", E[0], v=1), chunk("b", E[1])])
        await store.upsert([chunk("a", E[0], v=1), chunk("b", E[1])])
        assert await store.count() == 2
        # Same id, new text, vector and meta: the old row is replaced, not duplicated.
        await store.upsert([Chunk("a", "new text", E[2], {"source": "other.md", "v": 2})])
        assert await store.count() == 2
        (hit,) = await store.query(E[2], limit=1)
        assert (hit.id, hit.text, hit.meta) == ("a", "new text", {"source": "other.md", "v": 2})
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        # Within one batch the last chunk with an id wins.
        await store.upsert([Chunk("c", "first", E[3], {}), Chunk("c", "second", E[3], {})])
        (hit,) = await store.query(E[3], limit=1)
        assert (hit.id, hit.text) == ("c", "second")
        assert await store.count() == 3


async def test_delete_and_ids_for_source(make_store):
    async with make_store() as store:
        await store.upsert([chunk("a1", E[0], "a.md"), chunk("a2", E[1], "a.md"), chunk("b1", E[2], "b.md")])
        assert await store.ids_for_source("a.md") == {"a1", "a2"}
        assert await store.ids_for_source("b.md") == {"b1"}
        assert await store.ids_for_source("missing.md") == set()
        assert await store.delete(["a1", "not-there"]) == 1
        assert await store.delete([]) == 0
        assert await store.count() == 2
        assert await store.ids_for_source("a.md") == {"a2"}
        assert {h.id for h in await store.query(E[0], limit=5)} == {"a2", "b1"}


async def test_meta_round_trips_as_json(make_store):
    meta = {"source": "x.jsonl", "doc_id": "faq-1", "tags": ["a", "b"], "n": 3, "nested": {"ok": True, "f": 0.5}}
    async with make_store() as store:
        await store.upsert([Chunk("m", "t", E[4], meta)])
        (hit,) = await store.query(E[4], limit=1)
        assert hit.meta == meta


async def test_bad_vectors_and_limits_are_refused(make_store):
    async with make_store() as store:
        with pytest.raises(ValueError, match="dimensions"):
            await store.upsert([Chunk("x", "t", [1.0, 0.0], {})])
        with pytest.raises(ValueError, match="non-zero"):
            await store.upsert([Chunk("x", "t", [0.0] * 8, {})])
        with pytest.raises(ValueError, match="dimensions"):
            await store.query([1.0] * 9)
        with pytest.raises(ValueError, match="limit"):
            await store.query(E[0], limit=0)
        assert await store.count() == 0


async def test_contents_survive_reopen_and_other_dims_are_refused(make_store, store_kind):
    async with make_store() as store:
        await store.upsert([chunk("a", E[0]), chunk("b", E[1])])
    async with make_store() as again:
        assert await again.count() == 2
        assert [h.id for h in await again.query(E[1], limit=1)] == ["b"]
    if store_kind == "weaviate":
        return  # Weaviate collections carry no declared dimension to check against
    with pytest.raises(KBSchemaError, match="8-dimensional"):
        await make_store(dim=16).initialize()


async def test_top5_matches_exact_search_on_random_vectors(make_store):
    rng = random.Random(7)
    dim, n = 32, 600
    vecs = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(n)]
    async with make_store(dim=dim) as store:
        await store.upsert([Chunk(f"c{i}", "", v, {"source": "r"}) for i, v in enumerate(vecs)])
        assert await store.count() == n
        found = 0
        for _ in range(20):
            q = [rng.gauss(0, 1) for _ in range(dim)]
            exact = sorted(range(n), key=lambda i: -cos(q, vecs[i]))[:5]
            hits = await store.query(q, limit=5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            found += len({f"c{i}" for i in exact} & {h.id for h in hits})
        # sqlite-vec is exact; HNSW at this size with ef_search=100 finds the same neighbours.
        assert found / (20 * 5) >= 0.95


async def test_pgvector_ef_search_survives_pool_resets(pg_dsn):
    """asyncpg runs RESET ALL when a connection goes back to the pool: ef_search must not fall back to 40."""
    from pr1d.kb.pgvector_store import PostgreSQLVectorStore

    store = PostgreSQLVectorStore(pg_dsn, table="t_ef_search", dim=8, ef_search=123, pool_max=1)
    async with store:
        try:
            await store.upsert([chunk("a", E[0])])
            for _ in range(3):
                await store.query(E[0], limit=1)
                assert await store.current_ef_search() == 123
            # A query for more rows than ef_search raises it for that query only.
            await store.query(E[0], limit=200)
            assert await store.current_ef_search() == 123
        finally:
            await store.drop()
