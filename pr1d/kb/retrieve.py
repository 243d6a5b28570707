"""Retrieval for the dataset builder: `retrieve_context(s)` (cached, token-budgeted) and `format_context`.

A question's hits are cached under sha256(store name, KB generation, question, top_k, min_score, budget).
The *generation* is a counter kept in the same cache and bumped by every ingestion that changed the
store (`bump_generation`), so cached results of an older KB are simply never looked up again; the
TTL then clears them out. Embeddings are cached separately by the embedder (by text).

The token budget is applied to the hits in score order: each hit whose text fits in what is left is
kept, one that does not fit is skipped (a shorter, lower-scored one may still fit). Tokens are
approximated as in chunking (`approx_tokens`: 1.3 per word).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from .cache import ResilientCache, content_key
from .chunking import approx_tokens
from .protocol import Hit, TextEmbedder, VectorStore


def _generation_key(store_name: str) -> str:
    return content_key("gen", store_name)


def kb_generation(cache: ResilientCache | None, store_name: str) -> int:
    """The store's generation as this cache knows it (0 when never bumped)."""
    if cache is None:
        return 0
    raw = cache.get(_generation_key(store_name), count=False)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def bump_generation(cache: ResilientCache | None, store_name: str) -> int:
    """Mark the store's contents as changed: cached query results of older generations stop matching."""
    if cache is None:
        return 0
    gen = kb_generation(cache, store_name) + 1
    # No TTL: the generation must outlive the results it guards.
    cache.set(_generation_key(store_name), str(gen).encode(), ttl_s=0)
    return gen


def apply_token_budget(hits: Sequence[Hit], budget: int) -> list[Hit]:
    """Hits in the given (score) order whose texts fit in `budget` approximate tokens altogether."""
    out, used = [], 0
    for h in hits:
        t = approx_tokens(h.text)
        if used + t <= budget:
            out.append(h)
            used += t
    return out


async def retrieve_contexts(
    store: VectorStore,
    embedder: TextEmbedder,
    cache: ResilientCache | None,
    questions: Sequence[str],
    *,
    top_k: int = 4,
    min_score: float | None = 0.3,
    token_budget: int = 512,
) -> list[list[Hit]]:
    """Context hits for each question (same order). Cached questions skip both the model and the store."""
    if token_budget <= 0 or not questions:
        return [[] for _ in questions]
    gen = kb_generation(cache, store.name)
    keys = [
        content_key("q", store.name, str(gen), q, str(top_k), repr(min_score), str(token_budget)) for q in questions
    ]
    results: list[list[Hit] | None] = [None] * len(questions)
    if cache is not None:
        for i, k in enumerate(keys):
            blob = cache.get(k)
            if blob is not None:
                results[i] = [Hit.from_dict(d) for d in json.loads(blob)]
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        # One model call for all the misses; off the event loop since it is CPU-bound.
        vectors = await asyncio.to_thread(embedder.embed, [questions[i] for i in todo])
        for i, vec in zip(todo, vectors, strict=True):
            hits = await store.query(vec, limit=top_k, min_score=min_score)
            hits = apply_token_budget(hits, token_budget)
            results[i] = hits
            if cache is not None:
                cache.set(keys[i], json.dumps([h.to_dict() for h in hits]).encode())
    return [r or [] for r in results]


async def retrieve_context(
    store: VectorStore,
    embedder: TextEmbedder,
    cache: ResilientCache | None,
    question: str,
    top_k: int = 4,
    min_score: float | None = 0.3,
    token_budget: int = 512,
) -> list[Hit]:
    """Context hits for one question: at most `top_k`, none under `min_score`, within `token_budget`."""
    (hits,) = await retrieve_contexts(
        store, embedder, cache, [question], top_k=top_k, min_score=min_score, token_budget=token_budget
    )
    return hits


def format_context(hits: Sequence[Hit]) -> str:
    """Hits as a prompt block: one numbered entry per hit, with its source, best first; "" for none."""
    parts = []
    for n, h in enumerate(hits, 1):
        src = h.meta.get("source", "")
        head = f"[{n}] {src}" if src else f"[{n}]"
        parts.append(f"{head}\n{h.text.strip()}")
    return "\n\n".join(parts)
