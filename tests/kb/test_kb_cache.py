"""Caches: the LRU, Redis (a real redis-server), counters, and Redis killed mid-build degrading with one warning."""

from __future__ import annotations

import logging
import socket

from pr1d.kb.cache import LRUCache, RedisCache, ResilientCache, content_key, make_cache
from pr1d.kb.retrieve import retrieve_context
from pr1d.kb.sqlite_store import SQLiteVectorStore


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_content_key_is_a_hash_of_the_parts():
    k = content_key("emb", "model", "text")
    assert k.startswith("emb:") and len(k) == 4 + 64
    assert k == content_key("emb", "model", "text")
    # Parts are kept apart: ("ab", "c") and ("a", "bc") are different keys.
    assert content_key("q", "ab", "c") != content_key("q", "a", "bc")


def test_lru_evicts_least_recently_used():
    c = LRUCache(max_items=2)
    c.set("a", b"1")
    c.set("b", b"2")
    assert c.get("a") == b"1"  # a is now the most recent
    c.set("c", b"3")
    assert (c.get("a"), c.get("b"), c.get("c")) == (b"1", None, b"3")
    assert len(c) == 2


def test_lru_ttl_and_size_zero():
    clock = Clock()
    c = LRUCache(max_items=10, ttl_s=5, clock=clock)
    c.set("a", b"1")
    c.set("forever", b"2", ttl_s=0)
    clock.t += 4.9
    assert c.get("a") == b"1"
    clock.t += 0.2
    assert c.get("a") is None
    assert c.get("forever") == b"2"
    off = LRUCache(max_items=0)
    off.set("a", b"1")
    assert off.get("a") is None


def test_resilient_cache_counts_hits_and_misses():
    c = make_cache(None, ttl_s=60, lru_size=10)
    assert c.get("k") is None
    c.set("k", b"v")
    assert c.get("k") == b"v"
    assert c.get("k", count=False) == b"v"
    s = c.stats.to_dict()
    assert (s["backend"], s["hits"], s["misses"], s["sets"], s["errors"], s["degraded"]) == ("lru", 1, 1, 1, 0, False)
    assert s["hit_rate"] == 0.5


def test_redis_cache_round_trip_with_ttl_and_prefix(redis_server):
    r = RedisCache(redis_server.url, ttl_s=120)
    try:
        assert r.ping()
        r.set("emb:1", b"\x00\x01")
        assert r.get("emb:1") == b"\x00\x01"
        assert r.get("missing") is None
        raw = r._r
        assert raw.get("pr1:kb:emb:1") == b"\x00\x01"  # namespaced in a shared Redis
        assert 0 < raw.ttl("pr1:kb:emb:1") <= 120
        r.set("gen", b"3", ttl_s=0)
        assert raw.ttl("pr1:kb:gen") == -1  # no expiry
    finally:
        r.close()


def test_redis_killed_degrades_to_lru_with_one_warning(redis_server, caplog):
    cache = make_cache(redis_server.url, ttl_s=60, lru_size=100, timeout_s=0.5)
    cache.set("a", b"1")
    assert cache.get("a") == b"1"
    assert cache.backend == "redis"
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="pr1d.kb.cache"):
        assert cache.get("a") is None  # Redis's contents are gone with it; a miss, not an error
        cache.set("b", b"2")
        assert cache.get("b") == b"2"  # now served by the LRU
        cache.set("c", b"3")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"127.0.0.1:{redis_server.port}" in warnings[0].getMessage()
    assert "in-process LRU" in warnings[0].getMessage()
    assert cache.stats.degraded and cache.stats.errors == 1
    assert cache.backend == "lru (degraded)"


def test_unreachable_redis_at_start_degrades_at_once(caplog):
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="pr1d.kb.cache"):
        cache = make_cache(f"redis://127.0.0.1:{port}/0", ttl_s=60, lru_size=10, timeout_s=0.2)
    assert cache.stats.degraded
    assert "failed on connect" in caplog.text
    cache.set("k", b"v")
    assert cache.get("k") == b"v"


def test_degrading_without_a_fallback_means_no_cache(caplog):
    class Broken:
        backend = "redis"

        def get(self, key):
            raise ConnectionError("gone")

        def set(self, key, value, ttl_s=None):
            raise ConnectionError("gone")

        def close(self):
            pass

    cache = ResilientCache(Broken())
    with caplog.at_level(logging.WARNING):
        cache.set("k", b"v")
        assert cache.get("k") is None
    assert "no cache" in caplog.text
    assert cache.stats.errors == 1 and cache.backend == "none (degraded)"


QUESTIONS = [
    "Tom has 83 marbles and gives away 47. How many are left?",
    "How many buses are needed for 130 children if each bus holds 40?",
    "What is 15% of 60?",
    "How should the last line of my answer look?",
    "What is 23 times 14?",
    "How long is it from 9:45 to 11:20?",
    "Share 24 sweets among 4 children.",
    "What is 3/4 of 20?",
    "What is 3 + 4 x 5?",
    "How do I check a division with a remainder?",
    "What change do I get from 10.00 for 6.35?",
    "When should I use parallel thinking paths?",
]


async def test_redis_killed_mid_batch_of_queries_still_finishes(redis_server, corpus_store, embedder, kb_config, caplog):
    """Acceptance: Redis dies halfway through a batch of cached queries; every query still gets its answer."""
    path, _ = corpus_store
    args = dict(top_k=kb_config.top_k, min_score=kb_config.min_score, token_budget=kb_config.context_token_budget)
    async with SQLiteVectorStore(path) as store:
        # Reference answers, no cache at all.
        expected = [[h.id for h in await retrieve_context(store, embedder, None, q, **args)] for q in QUESTIONS]
        assert all(expected)

        cache = make_cache(redis_server.url, ttl_s=600, lru_size=1000, timeout_s=0.5)
        embedder_cache, embedder.cache = embedder.cache, cache
        try:
            # First pass fills Redis; second pass is served from it.
            for q in QUESTIONS:
                await retrieve_context(store, embedder, cache, q, **args)
            misses = cache.stats.misses
            got = []
            with caplog.at_level(logging.WARNING, logger="pr1d.kb.cache"):
                for i, q in enumerate(QUESTIONS):
                    if i == len(QUESTIONS) // 2:
                        redis_server.kill()
                    got.append([h.id for h in await retrieve_context(store, embedder, cache, q, **args)])
        finally:
            embedder.cache = embedder_cache
            cache.close()
    assert got == expected
    assert cache.stats.hits >= len(QUESTIONS) // 2  # the first half came from Redis
    assert cache.stats.misses > misses  # the second half was recomputed after the kill
    assert cache.stats.degraded and cache.stats.errors == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_embeddings_are_cached_by_content(redis_server, embedder):
    from pr1d.kb.embed import Embedder

    cache = make_cache(redis_server.url, ttl_s=600, lru_size=0)
    e = Embedder(cache=cache)
    e._model, e._dim = embedder._model, embedder._dim  # share the loaded model: loading twice costs seconds
    first = e.embed(["regroup the ones", "count up", "regroup the ones"])
    assert e.encoded == 2  # a text repeated within a batch is encoded once
    second = e.embed(["count up", "regroup the ones"])
    assert e.encoded == 2  # both came from Redis
    assert (second[0] == first[1]).all() and (second[1] == first[0]).all()
    # A second process (a fresh embedder on the same Redis) reuses them too.
    e2 = Embedder(cache=make_cache(redis_server.url, ttl_s=600, lru_size=0))
    e2._model, e2._dim = embedder._model, embedder._dim
    e2.embed(["count up"])
    assert e2.encoded == 0
