"""The dataset builder with KB context from each vector store: sqlite-vec and pgvector always, Weaviate with WEAVIATE_URL.

Each store gets the shipped corpus ingested, then the dataset stage's own retrieval (`kb_contexts`: config →
discovery → store → cached, token-budgeted retrieval) feeds `build_dataset`. The records must carry the
context in front of the question, within the token budget, and be the records an exact search over
sqlite-vec gives: the store is an implementation detail, the dataset is not.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import build_dataset
from pr1d.data.gradebook import fetch_gradebook
from pr1d.evaluate import gsm_lite
from pr1d.kb.config import KBConfig
from pr1d.stages.dataset import kb_contexts
from tests.kb.conftest import CORPUS, embedder, make_store, pg_dsn, store_kind  # noqa: F401  (fixtures)
from tests.monitor.test_monitor_e2e import Sim

# Small enough that it binds: several questions' top-4 hits are longer than this together.
BUDGET = 80
TOP_K = 4
DSN_ENV = "PR1_TEST_KB_DSN"


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    sim = Sim(tmp_path_factory.mktemp("sim"), "steady")
    try:
        sim.tick(60)
        got, _ = fetch_gradebook(sim.url, None, min_score=0.9)
    finally:
        sim.close()
    by_question = {}
    for e in got:
        by_question.setdefault(e["question"], e)
    picked = list(by_question.values())[:30]
    assert len(picked) == 30
    return picked


async def _ingest(store, embedder, cfg):  # noqa: F811
    from pr1d.kb.ingest import ingest_path

    async with store:
        return await ingest_path(CORPUS, store, embedder, cfg)


async def _reference_hits(path, embedder, questions, budget):  # noqa: F811
    """Exact search over sqlite-vec with the same retrieval rules, no cache."""
    from pr1d.kb.retrieve import retrieve_contexts
    from pr1d.kb.sqlite_store import SQLiteVectorStore

    async with SQLiteVectorStore(path, dim=embedder.dim) as store:
        return await retrieve_contexts(store, embedder, None, questions, top_k=TOP_K, min_score=0.3,
                                       token_budget=budget)


async def test_builder_records_carry_kb_context_from_each_store(store_kind, make_store, embedder, entries,  # noqa: F811
                                                                 tmp_path, request):
    from pr1d.kb.chunking import approx_tokens
    from pr1d.kb.retrieve import format_context

    base = {"top_k": TOP_K, "min_score": 0.3, "context_token_budget": BUDGET}
    store = make_store(dim=embedder.dim)
    environ: dict[str, str] = {}
    if store_kind == "sqlite":
        cfg = KBConfig(store="sqlite", sqlite_path=str(tmp_path / "kb.sqlite"), **base)
    elif store_kind == "pgvector":
        environ[DSN_ENV] = request.getfixturevalue("pg_dsn")
        cfg = KBConfig(store="pgvector", postgres_dsn_env=DSN_ENV, postgres_table=store.table, **base)
    else:
        cfg = KBConfig(store="weaviate", weaviate_url=os.environ["WEAVIATE_URL"],
                       weaviate_collection=store.collection_name,
                       weaviate_grpc_port=int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")), **base)
    report = await _ingest(store, embedder, cfg)
    assert report.chunks > 50 and report.upserted == report.chunks

    questions = sorted({e["question"] for e in entries})
    out: dict = {}
    # The stage's own retrieval path, run off the event loop as the stage runs it (asyncio.run inside).
    contexts = await asyncio.to_thread(kb_contexts, cfg.model_dump(), tmp_path, questions, out, environ=environ)
    assert out["status"] == "ok" and out["store"] == store_kind, out
    records, stats = build_dataset(entries, branches=2, seed=5, kb=lambda q: contexts.get(q, ""))
    assert len(records) == len(entries) and stats["dropped"] == 0

    # The same corpus in sqlite-vec, searched exactly, is the reference for every store.
    ref_path = tmp_path / "reference.sqlite"
    if store_kind != "sqlite":
        from pr1d.kb.sqlite_store import SQLiteVectorStore

        await _ingest(SQLiteVectorStore(ref_path, dim=embedder.dim), embedder, cfg)
    else:
        ref_path = tmp_path / "kb.sqlite"
    ref = dict(zip(questions, await _reference_hits(ref_path, embedder, questions, BUDGET), strict=True))
    unbounded = dict(zip(questions, await _reference_hits(ref_path, embedder, questions, 10_000), strict=True))

    with_context = 0
    for rec in records:
        question = next(e["question"] for e in entries if e["task_id"] == rec["task_id"])
        hits = ref[question]
        assert sum(approx_tokens(h.text) for h in hits) <= BUDGET  # the budget holds
        if hits:
            with_context += 1
            # Context first, then the question; none of it in the (trained-on) completion.
            assert rec["prompt"] == format_context(hits) + "\n\n" + gsm_lite.format_prompt(question)
        else:
            assert rec["prompt"] == gsm_lite.format_prompt(question)
        assert pf.check(rec["completion"]) is None and "[1]" not in rec["completion"]
    assert with_context == out["with_context"] >= len(records) // 2
    # The budget actually bound: without it some question would have carried more.
    assert any(sum(approx_tokens(h.text) for h in unbounded[q]) > BUDGET for q in questions)
