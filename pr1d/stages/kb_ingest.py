"""`kb_ingest` stage: load documents into the configured knowledge base (embedding happens here, not in pr1d).

Spec params: path (file or folder of .md/.txt/.jsonl). Spec sections: kb (the [kb] config), registry.state_dir.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .base import Worker, run_stage


def main(w: Worker) -> dict:
    from ..kb.discovery import create_service_discovery
    from ..kb.embed import Embedder
    from ..kb.factory import open_cache, open_store
    from ..kb.ingest import ingest_path
    from ..kb.protocol import KBError

    if w.spec.kb is None or not w.spec.registry.state_dir:
        raise ValueError("the kb_ingest spec needs the kb section and registry.state_dir")
    cfg = w.spec.kb
    state_dir = Path(w.spec.registry.state_dir)
    path = Path(w.params["path"])
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")

    async def go() -> dict:
        endpoints = create_service_discovery(cfg)
        cache = open_cache(cfg, endpoints)
        embedder = Embedder(cfg.embedding_model, cache=cache, device=cfg.embedding_device,
                            batch_size=cfg.embedding_batch_size, ttl_s=cfg.cache_ttl_s)
        store = open_store(cfg, state_dir=state_dir, endpoints=endpoints, dim=embedder.dim)

        def progress(done: int, total: int, name: str) -> None:
            w.progress(done, total, message=name)

        try:
            async with store:
                report = await ingest_path(path, store, embedder, cfg, cache=cache, progress=progress)
                total = await store.count()
        except Exception as e:
            if cfg.store == "sqlite" or isinstance(e, KBError):
                raise
            # A store server gone mid-ingest surfaces as a bare socket error ("No such file or directory"):
            # name the store and where it was, so the operator knows what to bring back.
            ep = endpoints.postgres if cfg.store == "pgvector" else endpoints.weaviate
            where = ep.safe_url if ep is not None else "?"
            raise KBError(f"{cfg.store} store at {where} failed during ingest: {type(e).__name__}: {e}") from e
        finally:
            cache.close()
        return report.to_dict() | {"total_chunks": total, "store": cfg.store, "cache": cache.stats.to_dict()}

    out = asyncio.run(go())
    w.log(f"ingested {out['files']} files: {out['upserted']} chunks upserted, {out['skipped_unchanged']} unchanged")
    return out


if __name__ == "__main__":
    run_stage(main)
