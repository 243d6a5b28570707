"""Dataset build throughput with KB retrieval on, and how much a warm cache speeds up a rebuild.

Starts `pr1d sim`, pulls its gradebook, ingests the shipped KB corpus into sqlite-vec, then builds the
parallel dataset twice with retrieval for every question: once with an empty cache, once warm (the
same cache: Redis when --redis-url is given, else the in-process LRU). Target: the cached rebuild is
at least 3x faster. Reports records/s for both.

    .venv/bin/python benchmarks/build_dataset.py [--ticks 300] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pr1d
from pr1d.data.builder import build_dataset
from pr1d.data.gradebook import fetch_gradebook
from pr1d.kb.cache import make_cache
from pr1d.kb.config import KBConfig
from pr1d.kb.embed import Embedder
from pr1d.kb.ingest import ingest_path
from pr1d.kb.retrieve import format_context, retrieve_contexts
from pr1d.kb.sqlite_store import SQLiteVectorStore

BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--redis-url", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port_file = tmp / "port"
        sim = subprocess.Popen([str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file),
                                "--scenario", "mixed-fleet", "--time-scale", "0"], stdout=subprocess.DEVNULL,
                               env=dict(os.environ, PR1_NO_SYSTEM_CONFIG="1"))
        try:
            while not port_file.exists():
                time.sleep(0.05)
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            import httpx

            httpx.post(f"{url}/_sim/tick", json={"n": a.ticks}, timeout=60).raise_for_status()
            entries, _ = fetch_gradebook(url, None, min_score=0.9)
        finally:
            sim.terminate()
            sim.wait(30)
        cfg = KBConfig()
        cache = make_cache(a.redis_url or None, ttl_s=3600, lru_size=100_000)
        embedder = Embedder(cfg.embedding_model, cache=cache)
        store = SQLiteVectorStore(tmp / "kb.sqlite", dim=embedder.dim)

        async def setup() -> None:
            await store.initialize()
            await ingest_path(Path(pr1d.__file__).parent / "kb" / "corpus", store, embedder, cfg, cache=cache)

        asyncio.run(setup())
        embedder.embed(["warm up the model"])  # model load is not part of a build
        questions = sorted({e["question"] for e in entries})

        def build() -> tuple[float, int]:
            t = time.monotonic()
            hits = asyncio.run(retrieve_contexts(store, embedder, cache, questions, top_k=cfg.top_k,
                                                 min_score=cfg.min_score, token_budget=cfg.context_token_budget))
            ctx = dict(zip(questions, (format_context(h) for h in hits), strict=True))
            records, _stats = build_dataset(entries, branches=2, kb=lambda q: ctx.get(q, ""))
            return time.monotonic() - t, len(records)

        before = cache.stats.to_dict()
        cold_s, n = build()
        warm_s, n2 = build()
        after = cache.stats.to_dict()
        asyncio.run(store.close())
    assert n == n2
    print(f"{len(entries)} gradebook entries, {len(questions)} distinct questions, {n} records "
          f"(cache: {'redis' if a.redis_url else 'in-process LRU'})")
    print(f"cold build: {cold_s:.2f} s ({n / cold_s:.0f} records/s)")
    print(f"warm build: {warm_s:.2f} s ({n / warm_s:.0f} records/s)")
    print(f"cache hits {after['hits'] - before['hits']}, misses {after['misses'] - before['misses']}")
    ratio = cold_s / warm_s
    print(f"rebuild speed-up {ratio:.1f}x (target >= 3x: {'met' if ratio >= 3 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
