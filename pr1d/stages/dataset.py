"""`dataset` stage: the fleet's best graded work → a verified Parallel (or sequential) SFT dataset.

Params: branches (paths per block, default 2), mode ("parallel" | "sequential"), min_score (0.9),
max_records (cap, default none), mix ({tier: weight}, optional), seed (0), since (gradebook cursor).
Spec: "scoring_url", "agent_id", "token_env" (name of the env var holding the bearer token, default
PR1_SCORING_TOKEN). Writes <stage_dir>/dataset/{records.jsonl,manifest.json}; returns
{"dataset_version": content_hash, "records": n, "drops": {...}}.
"""

from __future__ import annotations

import os

from pr1d.data.builder import build_dataset, write_dataset
from pr1d.data.gradebook import fetch_gradebook

from .base import Worker, run_stage


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
    entries, cursor = fetch_gradebook(url, token, since=since, min_score=min_score, stats=fetch_stats)
    w.log(f"gradebook: {len(entries)} entries in {fetch_stats.get('pages')} pages (cursor {cursor})")
    if w.stop_requested.is_set():
        w.interrupt()

    w.progress(1, 3, message=f"building {mode} records from {len(entries)} entries")
    records, stats = build_dataset(
        entries, branches=branches, mode=mode, mix=p.get("mix"), seed=int(p.get("seed", 0)),
        max_records=int(max_records) if max_records is not None else None,
    )
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
