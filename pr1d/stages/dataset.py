"""`dataset` stage: the fleet's best graded work → a verified Parallel (or sequential) SFT dataset.

Params: branches (paths per block, default 2), mode ("parallel" | "sequential"), min_score (0.9),
max_records (cap, default none), mix ({tier: weight}, optional), seed (0), since (gradebook cursor).
Spec: "scoring_url", "agent_id", "token_env" (name of the env var holding the bearer token, default
PR1_SCORING_TOKEN). Writes <stage_dir>/dataset/{records.jsonl,manifest.json}; returns
{"dataset_version": content_hash, "records": n, "drops": {...}}.
"""

from __future__ import annotations

import os
from pathlib import Path

from pr1d.data.builder import build_dataset, write_dataset
from pr1d.data.gradebook import fetch_gradebook

from .base import Worker, run_stage


def _kb_contexts(w: Worker, questions: list[str], out: dict) -> dict[str, str]:
    """KB snippets per question (into the prompt, never trained on). No KB, or a KB that fails, means no
    context: the build goes on with a warning, it does not fail."""
    kb_cfg = w.spec.get("kb")
    state_dir = w.spec.get("state_dir")
    if not kb_cfg or not state_dir:
        out["status"] = "no kb configured"
        return {}
    from ..kb.config import KBConfig

    cfg = KBConfig.model_validate(kb_cfg)
    if cfg.store == "sqlite":
        from ..kb.factory import sqlite_path

        if not sqlite_path(cfg, state_dir).exists():
            out["status"] = "kb empty (pr1ctl kb ingest PATH fills it)"
            return {}
    try:
        import asyncio

        from ..kb.discovery import create_service_discovery
        from ..kb.embed import Embedder
        from ..kb.factory import open_cache, open_store
        from ..kb.retrieve import format_context, retrieve_contexts

        endpoints = create_service_discovery(cfg)
        cache = open_cache(cfg, endpoints)
        embedder = Embedder(cfg.embedding_model, cache=cache, device=cfg.embedding_device,
                            batch_size=cfg.embedding_batch_size, ttl_s=cfg.cache_ttl_s)
        store = open_store(cfg, state_dir=state_dir, endpoints=endpoints, dim=embedder.dim)

        async def go() -> list:
            async with store:
                return await retrieve_contexts(store, embedder, cache, questions, top_k=cfg.top_k,
                                               min_score=cfg.min_score, token_budget=cfg.context_token_budget)

        hits = asyncio.run(go())
        out.update(status="ok", store=cfg.store, with_context=sum(1 for h in hits if h), cache=cache.stats.to_dict())
        return {q: format_context(h) for q, h in zip(questions, hits, strict=True) if h}
    except Exception as e:  # a KB outage degrades the dataset, it does not stop the run
        out["status"] = f"kb unavailable: {type(e).__name__}: {e}"
        w.log(f"building without KB context: {out['status']}", level="warning")
        return {}


def main(w: Worker) -> dict:
    p = w.params
    branches = int(p.get("branches", 2))
    mode = str(p.get("mode", "parallel"))
    min_score = float(p.get("min_score", 0.9))
    max_records = p.get("max_records")
    url = w.spec.get("scoring_url")
    if not url:
        raise ValueError("spec has no 'scoring_url'")
    token = os.environ.get(str(w.spec.get("token_env") or "PR1_SCORING_TOKEN")) or None
    since = p.get("since")

    w.progress(0, 3, message="fetching gradebook")
    fetch_stats: dict = {}
    # Deliberately NOT filtered by agent_id: the dataset is the whole fleet's best work across tiers
    # (spec["agent_id"] names the agent being trained, not the source of its examples).
    # The daemon's nightly copy first, then the delta since its cursor, pulled now.
    local: list = []
    if since is None and w.spec.get("state_dir"):
        from ..data.gradebook import LocalGradebook, content_hash

        book = LocalGradebook(Path(w.spec["state_dir"]) / "gradebook")
        local = [e for e in book.load() if float(e.get("score", 0)) >= min_score]
        since = book.cursor()
    entries, cursor = fetch_gradebook(url, token, since=since, min_score=min_score, stats=fetch_stats)
    if local:
        held = {(str(e.get("task_id")), content_hash(e)) for e in local}
        entries = local + [e for e in entries if (str(e.get("task_id")), content_hash(e)) not in held]
        fetch_stats["from_local_copy"] = len(local)
    w.log(f"gradebook: {len(entries)} entries in {fetch_stats.get('pages')} pages (cursor {cursor})")
    if w.stop_requested.is_set():
        w.interrupt()

    w.progress(1, 3, message=f"building {mode} records from {len(entries)} entries")
    kb_stats: dict = {}
    contexts = _kb_contexts(w, sorted({e["question"] for e in entries}), kb_stats) if p.get("kb", True) else {}
    records, stats = build_dataset(
        entries, branches=branches, mode=mode, mix=p.get("mix"), seed=int(p.get("seed", 0)),
        max_records=int(max_records) if max_records is not None else None,
        kb=(lambda q: contexts.get(q, "")) if contexts else None,
    )
    stats["kb"] = kb_stats
    # Repeats the fetch removed count as duplicates too.
    stats["drops"]["duplicate"] += int(fetch_stats.get("duplicates", 0))
    stats["dropped"] += int(fetch_stats.get("duplicates", 0))
    stats["fetch"] = fetch_stats
    if w.stop_requested.is_set():
        w.interrupt()

    w.progress(2, 3, message=f"writing {len(records)} records")
    out_dir = w.stage_dir / "dataset"
    source = {"since": since, "until": cursor, "min_score": min_score, "agent_id": None,
              "scoring_url": url, "for_agent": w.spec.get("agent_id")}
    manifest = write_dataset(records, stats, out_dir, source)
    w.metric("dataset.records", len(records))
    w.metric("dataset.dropped", stats["dropped"])
    w.artifact("dataset", out_dir, kind="dataset", meta={
        "content_hash": manifest["content_hash"], "records": manifest["records"], "mode": mode,
        "branches": stats["branches"], "drops": manifest["drops"], "source": source,
        "tiers": stats["tiers"],
    })
    w.progress(3, 3, message="done")
    drops = {k: v for k, v in manifest["drops"].items() if v}
    w.log(f"dataset {manifest['content_hash'][:12]}: {len(records)} records, drops {drops}")
    return {"dataset_version": manifest["content_hash"], "records": len(records), "drops": manifest["drops"]}


if __name__ == "__main__":
    run_stage(main)
