"""Knowledge base: vector stores, cache and service discovery.

One `VectorStore` protocol (`protocol.py`) with three implementations side by side (`sqlite_store`,
`pgvector_store`, `weaviate_store`); `discovery` finds PostgreSQL, Weaviate and Redis; `cache` keeps
heavy reads; `embed`, `chunking`, `ingest` and `retrieve` are the stage-worker side. Nothing is
imported here, so `import pr1d.kb.config` stays as cheap as pydantic. See docs/knowledge-base.md.
"""
