"""The Weaviate mapping code without a server: objects <-> Chunk/Hit, distance -> cosine score, URLs.

The server round trip is the shared store suite (test_kb_stores.py), which runs against Weaviate when
WEAVIATE_URL is set and reports a skip otherwise.
"""

from __future__ import annotations

import json
import uuid

import pytest

from pr1d.kb.protocol import Chunk, KBError
from pr1d.kb.weaviate_store import (
    PROPERTIES,
    WeaviateVectorStore,
    chunk_to_object,
    distance_to_score,
    object_to_hit,
    parse_weaviate_url,
    weaviate_uuid,
)


def test_uuid_is_a_stable_uuid5_of_the_chunk_id():
    u = weaviate_uuid("abc")
    # Pinned: changing the namespace would give every stored object a new identity (duplicates on re-ingest).
    assert u == "f4c1325e-b920-59d0-a5a1-59a7aa730422"
    assert uuid.UUID(u).version == 5
    assert weaviate_uuid("abc") == u
    assert weaviate_uuid("abd") != u


def test_chunk_to_object_keeps_id_source_text_and_meta():
    c = Chunk("cid", "Regroup the ones.", [0.5, 0.25, 0.0], {"source": "a/b.md", "heading": "H", "n": 1})
    oid, props, vec = chunk_to_object(c)
    assert oid == weaviate_uuid("cid")
    assert set(props) == set(PROPERTIES)
    assert props["chunk_id"] == "cid"
    assert props["source"] == "a/b.md"
    assert props["text"] == "Regroup the ones."
    assert json.loads(props["meta_json"]) == c.meta
    assert vec == [0.5, 0.25, 0.0] and all(type(x) is float for x in vec)


def test_chunk_to_object_accepts_numpy_rows():
    np = pytest.importorskip("numpy")
    _, _, vec = chunk_to_object(Chunk("n", "t", np.array([1, 2], dtype=np.float32), {}))
    assert vec == [1.0, 2.0] and all(type(x) is float for x in vec)


@pytest.mark.parametrize(
    ("distance", "score"),
    [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (1.5, -0.5), (2.0, -1.0)],
)
def test_cosine_distance_becomes_similarity(distance, score):
    assert distance_to_score(distance) == pytest.approx(score)


def test_missing_distance_is_an_error():
    with pytest.raises(KBError, match="no distance"):
        distance_to_score(None)


def test_object_to_hit_round_trips_a_chunk():
    c = Chunk("cid", "Count up from 47 to 83.", [1.0, 0.0], {"source": "s.md", "chunk_index": 2})
    _, props, _ = chunk_to_object(c)
    hit = object_to_hit(props, 0.1)
    assert (hit.id, hit.text, hit.meta) == (c.id, c.text, c.meta)
    assert hit.score == pytest.approx(0.9)


@pytest.mark.parametrize("meta_json", [None, "", "not json", "[1, 2]", "42"])
def test_object_to_hit_tolerates_bad_meta(meta_json):
    hit = object_to_hit({"chunk_id": "x", "text": None, "meta_json": meta_json}, 0.5)
    assert hit.meta == {} and hit.text == "" and hit.id == "x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:8080", ("localhost", 8080, False)),
        ("http://weaviate:8080/", ("weaviate", 8080, False)),
        ("https://kb.example.org", ("kb.example.org", 443, True)),
        ("http://10.0.0.5", ("10.0.0.5", 80, False)),
    ],
)
def test_parse_url(url, expected):
    assert parse_weaviate_url(url) == expected


@pytest.mark.parametrize("url", ["weaviate:8080", "ftp://x", "http://"])
def test_parse_url_refuses_non_http(url):
    with pytest.raises(KBError, match="http://host:8080"):
        parse_weaviate_url(url)


async def test_store_names_itself_without_secrets_and_needs_initialize():
    s = WeaviateVectorStore("http://weaviate:8080", collection="Pr1KbChunk", api_key="s3cret")
    assert s.name == "weaviate:weaviate:8080/Pr1KbChunk"
    assert "s3cret" not in repr(s)
    with pytest.raises(KBError, match="before initialize"):
        await s.count()
