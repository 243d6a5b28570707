"""Chunking, idempotent ingestion (sqlite-vec and pgvector), the ingest CLI, and retrieval over the shipped corpus."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pr1d.kb.cache import make_cache
from pr1d.kb.chunking import approx_tokens, chunk_document, chunk_id, markdown_sections
from pr1d.kb.config import KBConfig
from pr1d.kb.ingest import file_chunks, ingest_path
from pr1d.kb.protocol import KBError
from pr1d.kb.retrieve import (
    apply_token_budget,
    format_context,
    kb_generation,
    retrieve_context,
    retrieve_contexts,
)
from pr1d.kb.sqlite_store import SQLiteVectorStore

CORPUS = Path(__file__).resolve().parents[2] / "pr1d" / "kb" / "corpus"


# -- chunking ---------------------------------------------------------------------------------------
def test_markdown_sections_follow_the_heading_trail_and_ignore_code():
    doc = "# Top\n\nintro\n\n## Sub\n\nbody\n\n```\n# not a heading\n```\n\n### Deeper\n\nx\n\n## Sibling\n\ny\n"
    assert markdown_sections(doc) == [
        ("Top", "intro"),
        ("Top > Sub", "body\n\n```\n# not a heading\n```"),
        ("Top > Sub > Deeper", "x"),
        ("Top > Sibling", "y"),
    ]


def test_chunks_respect_the_size_and_overlap():
    paras = [" ".join(f"p{i}w{j}" for j in range(40)) for i in range(6)]
    doc = "# Long\n\n" + "\n\n".join(paras) + "\n\n" + " ".join(f"huge{j}" for j in range(300))
    chunks = chunk_document(doc, chunk_tokens=100, overlap=20)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.text.startswith("Long\n\n") and c.heading == "Long" for c in chunks)
    assert all(approx_tokens(c.text) <= 100 + 2 for c in chunks)  # +2: rounding of the 1.3 factor
    words = [c.text.split()[1:] for c in chunks]
    for prev, nxt in zip(words, words[1:], strict=False):
        assert set(prev[-10:]) & set(nxt[:20]), "consecutive chunks share their boundary words"
    # Every word of the document is in some chunk.
    assert set(doc.split()) - {"#"} <= {w for c in chunks for w in c.text.split()}


def test_chunk_ids_are_content_addressed():
    assert chunk_id("a.md", 0, "t") == chunk_id("a.md", 0, "t")
    assert len({chunk_id("a.md", 0, "t"), chunk_id("b.md", 0, "t"), chunk_id("a.md", 1, "t"),
                chunk_id("a.md", 0, "u")}) == 4


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(ValueError, match="overlap"):
        chunk_document("x", chunk_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="chunk_overlap"):
        KBConfig(chunk_tokens=50, chunk_overlap=50)


def test_jsonl_lines_keep_their_id_and_meta(tmp_path):
    f = tmp_path / "notes.jsonl"
    f.write_text('{"id": "n1", "text": "Regroup ten ones as one ten.", "meta": {"topic": "add"}}\n\n'
                 '{"text": "Count up to subtract."}\n')
    chunks = file_chunks(f, "notes.jsonl", KBConfig())
    assert [(c.meta["doc_id"], c.meta.get("topic"), c.meta["source"]) for c in chunks] == [
        ("n1", "add", "notes.jsonl"), ("line-3", None, "notes.jsonl")]


@pytest.mark.parametrize(
    ("line", "message"),
    [("not json", "notes.jsonl:1: not JSON"), ('{"id": 1}', 'needs a non-empty "text"'),
     ('{"text": "x", "meta": [1]}', '"meta" must be an object')],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    f = tmp_path / "notes.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(KBError, match=message):
        file_chunks(f, "notes.jsonl", KBConfig())


# -- ingestion --------------------------------------------------------------------------------------
def test_corpus_ingests_every_file(corpus_store):
    _, report = corpus_store
    files = [p for p in CORPUS.rglob("*") if p.suffix in (".md", ".jsonl")]
    assert 20 <= report.files == len(files)
    assert report.chunks == report.upserted == report.embedded > report.files
    assert (report.skipped_unchanged, report.deleted_stale) == (0, 0)


async def test_reingest_is_idempotent_and_edits_replace_stale_chunks(tmp_path, embedder, kb_config):
    docs = tmp_path / "docs"
    shutil.copytree(CORPUS / "arithmetic", docs)
    cache = make_cache(None, ttl_s=60, lru_size=100)
    async with SQLiteVectorStore(tmp_path / "kb.sqlite") as store:
        first = await ingest_path(docs, store, embedder, kb_config, cache=cache)
        total = await store.count()
        assert total == first.chunks == first.upserted
        assert kb_generation(cache, store.name) == 1

        again = await ingest_path(docs, store, embedder, kb_config, cache=cache)
        assert (again.upserted, again.embedded, again.deleted_stale) == (0, 0, 0)
        assert again.skipped_unchanged == first.chunks
        assert await store.count() == total
        assert kb_generation(cache, store.name) == 1  # nothing changed: cached answers stay valid

        f = docs / "counting-up-subtraction.md"
        old_ids = await store.ids_for_source("counting-up-subtraction.md")
        f.write_text(f.read_text().replace("## When it works best", "## When it is fastest\n\nNew advice here.\n\n##"))
        edited = await ingest_path(docs, store, embedder, kb_config, cache=cache)
        assert edited.upserted > 0 and edited.deleted_stale > 0
        new_ids = await store.ids_for_source("counting-up-subtraction.md")
        assert new_ids != old_ids and len(new_ids) == len(file_chunks(f, f.name, kb_config))
        assert await store.count() == edited.chunks  # no orphans left behind
        assert kb_generation(cache, store.name) == 2


async def test_ingest_into_pgvector(pg_dsn, tmp_path, embedder, kb_config):
    from pr1d.kb.pgvector_store import PostgreSQLVectorStore

    store = PostgreSQLVectorStore(pg_dsn, table="t_ingest_corpus", dim=embedder.dim)
    async with store:
        try:
            first = await ingest_path(CORPUS / "guardrails", store, embedder, kb_config)
            again = await ingest_path(CORPUS / "guardrails", store, embedder, kb_config)
            assert await store.count() == first.upserted == again.skipped_unchanged
            hits = await retrieve_context(store, embedder, None, "What must the last line of my answer say?",
                                          top_k=3, min_score=0.2)
            assert hits[0].meta["source"] == "final-answer-format.md"
        finally:
            await store.drop()


def test_missing_and_unsupported_paths(tmp_path):
    import asyncio

    (tmp_path / "x.pdf").write_text("%PDF")
    for p, msg in ((tmp_path / "nope", "no such file"), (tmp_path / "x.pdf", "unsupported file type")):
        with pytest.raises(KBError, match=msg):
            asyncio.run(ingest_path(p, None, None, KBConfig()))  # fails before touching store or model


def test_cli_prints_a_json_report_and_is_idempotent(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(CORPUS / "guardrails" / "final-answer-format.md", docs)
    shutil.copy(CORPUS / "faq.jsonl", docs)
    (docs / ".hidden.md").write_text("# skipped\n\nhidden files are not ingested")
    cmd = [sys.executable, "-m", "pr1d.kb.ingest", str(docs), "--sqlite-path", str(tmp_path / "kb.sqlite")]
    env = {"PR1_NO_SYSTEM_CONFIG": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout)
    assert r1["files"] == 2 and r1["upserted"] == r1["chunks"] == r1["total_chunks"] > 2
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    r2 = json.loads(second.stdout)
    assert (r2["upserted"], r2["skipped_unchanged"], r2["total_chunks"]) == (0, r1["chunks"], r1["total_chunks"])
    bad = subprocess.run([*cmd[:3], str(tmp_path / "missing")], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and "no such file or directory" in bad.stderr and bad.stdout == ""
    wrong = subprocess.run([*cmd, "--store", "pgvector"], capture_output=True, text=True, timeout=60, env=env)
    assert wrong.returncode == 1 and "no PostgreSQL endpoint" in wrong.stderr


# -- retrieval --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "source"),
    [
        ("What is 15% of 60?", "arithmetic/percentages.md"),
        ("How many buses does a school need for 130 children when a bus holds 40?",
         {"arithmetic/remainders.md", "guardrails/ambiguity-and-assumptions.md"}),
        ("Work out 23 x 14 using partial products", "arithmetic/partial-products.md"),
        ("How do I check that 84 divided by 7 is 12?", "arithmetic/inverse-operation-check.md"),
        ("How long is it from 9:45 to 11:20?", "arithmetic/time-and-units.md"),
    ],
)
async def test_retrieval_finds_the_relevant_note(corpus_store, embedder, question, source):
    async with SQLiteVectorStore(corpus_store[0]) as store:
        hits = await retrieve_context(store, embedder, None, question, top_k=3, min_score=0.2)
    wanted = {source} if isinstance(source, str) else source
    assert hits and hits[0].meta["source"] in wanted, [(h.meta["source"], round(h.score, 3)) for h in hits]


async def test_budget_min_score_and_batch_retrieval(corpus_store, embedder):
    cache = make_cache(None, ttl_s=60, lru_size=100)
    async with SQLiteVectorStore(corpus_store[0]) as store:
        wide = await retrieve_context(store, embedder, None, "regrouping", top_k=8, min_score=-1.0, token_budget=10_000)
        assert len(wide) == 8
        tight = await retrieve_context(store, embedder, None, "regrouping", top_k=8, min_score=-1.0, token_budget=150)
        assert sum(approx_tokens(h.text) for h in tight) <= 150 and 0 < len(tight) < 8
        assert tight == apply_token_budget(wide, 150)
        assert await retrieve_context(store, embedder, None, "regrouping", min_score=0.99) == []
        assert await retrieve_context(store, embedder, None, "regrouping", token_budget=0) == []
        qs = ["regrouping", "percentages", "regrouping"]
        batch = await retrieve_contexts(store, embedder, cache, qs, top_k=2, min_score=0.0)
        assert batch[0] == batch[2] and batch[0] != batch[1]
        again = await retrieve_contexts(store, embedder, cache, qs, top_k=2, min_score=0.0)
        assert again == batch and cache.stats.hits >= 3


def test_format_context_numbers_hits_with_their_source():
    from pr1d.kb.protocol import Hit

    hits = [Hit("a", "Regroup.\n", 0.9, {"source": "a.md"}), Hit("b", "Count up.", 0.8, {})]
    assert format_context(hits) == "[1] a.md\nRegroup.\n\n[2]\nCount up."
    assert format_context([]) == ""
