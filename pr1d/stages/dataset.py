"""`dataset` stage: the fleet's best graded work (or, targeted, the agent's failing tasks) → a verified SFT dataset.

Params: the fields of :class:`pr1d.params.DatasetParams` (each documented in docs/dataset.md;
:func:`dataset_settings` resolves them): branches (2), mode ("parallel" | "sequential"), min_score
([dataset] min_score), max_records, mix (tier=share,... or a table: the form the sft stage reads too),
seed (0), since (gradebook cursor), kb (true), targeted (false; implied by the run kind ``targeted-sft``),
guardrails (false; implied by targeted), guardrail_share ([dataset] guardrail_share), max_failing_tasks
(256), critic_min_confidence (0.9).

Spec (:class:`pr1d.pipeline.spec.StageSpec`, written by the daemon; no secret in it): ``scoring`` (the URL,
where the bearer token is, field_map, compliance_keys), ``agent_id``, ``run_kind``, ``dataset`` (the
[dataset] config section), ``kb``, ``registry.state_dir``.

Writes <stage_dir>/dataset/{records.jsonl,manifest.json}; returns
{"dataset_version": content_hash, "records": n, "drops": {...}}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pr1d.data.builder import build_dataset, record_stats, write_dataset
from pr1d.data.gradebook import fetch_gradebook

from ..kb.config import KBConfig
from ..params import DatasetParams, stage_view
from ..pipeline.spec import StageSpec
from .base import Worker, run_stage


def dataset_settings(spec: StageSpec) -> dict[str, Any]:
    """The build's settings from a stage spec: run params over the [dataset] config section over defaults.

    Pure, so the rules are table-tested: a ``targeted-sft`` run (or ``targeted = true``) builds the
    targeted dataset; targeted implies guardrails; ``guardrails = true`` (what the monitor sets when
    compliance fired, whatever job won) adds exemplars to an ordinary dataset. Where the exemplars and the
    teacher live is config only: a run parameter must not point a worker at other files or hosts.
    """
    p = stage_view(DatasetParams, spec.params, "dataset params")
    ds = spec.dataset
    targeted = spec.run_kind == "targeted-sft" or p.targeted
    guardrails = targeted or p.guardrails
    if guardrails and p.mode != "parallel":
        raise ValueError("guardrail exemplars are Parallel traces: a targeted or guardrail dataset needs mode=parallel")
    return {
        "branches": p.branches,
        "mode": p.mode,
        "min_score": p.min_score if p.min_score is not None else ds.min_score,
        "max_records": p.max_records,
        "mix": p.mix,
        "seed": p.seed,
        "since": p.since,
        "kb": p.kb,
        "targeted": targeted,
        "guardrails": guardrails,
        "guardrail_share": p.guardrail_share if p.guardrail_share is not None else ds.guardrail_share,
        "guardrails_dir": ds.guardrails_dir,
        "max_failing_tasks": p.max_failing_tasks,
        "critic_min_confidence": p.critic_min_confidence,
        "teacher_url": ds.teacher_url,
        "teacher_model": ds.teacher_model,
        "self_sample_url": ds.self_sample_url,
        "self_sample_model": ds.self_sample_model,
        "self_samples": ds.self_samples,
    }


def kb_contexts(
    kb_cfg: KBConfig | Mapping[str, Any] | None,
    state_dir: str | Path | None,
    questions: list[str],
    out: dict[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """KB snippets per question (into the prompt, never trained on), from whichever store ``kb_cfg`` names.

    No KB, or a KB that fails, means no context: the build goes on with a warning, it does not fail.
    ``out`` receives what happened (``status``, ``store``, ``with_context``, cache counters).
    """
    if not kb_cfg or not state_dir:
        out["status"] = "no kb configured"
        return {}
    cfg = kb_cfg if isinstance(kb_cfg, KBConfig) else KBConfig.model_validate(dict(kb_cfg))
    if cfg.store == "sqlite":
        from ..kb.factory import sqlite_path

        if not sqlite_path(cfg, state_dir).exists():
            out["status"] = "kb empty (pr1ctl kb ingest PATH fills it)"
            return {}
    try:
        import asyncio
        import os

        from ..kb.discovery import create_service_discovery
        from ..kb.embed import Embedder
        from ..kb.factory import open_cache, open_store
        from ..kb.retrieve import format_context, retrieve_contexts

        env = os.environ if environ is None else environ
        endpoints = create_service_discovery(cfg, env)
        cache = open_cache(cfg, endpoints)
        embedder = Embedder(cfg.embedding_model, cache=cache, device=cfg.embedding_device,
                            batch_size=cfg.embedding_batch_size, ttl_s=cfg.cache_ttl_s)
        store = open_store(cfg, state_dir=state_dir, endpoints=endpoints, environ=env, dim=embedder.dim)

        async def go() -> list:
            async with store:
                return await retrieve_contexts(store, embedder, cache, questions, top_k=cfg.top_k,
                                               min_score=cfg.min_score, token_budget=cfg.context_token_budget)

        hits = asyncio.run(go())
        out.update(status="ok", store=cfg.store, with_context=sum(1 for h in hits if h), cache=cache.stats.to_dict())
        return {q: format_context(h) for q, h in zip(questions, hits, strict=True) if h}
    except Exception as e:  # a KB outage degrades the dataset, it does not stop the run
        out["status"] = f"kb unavailable: {type(e).__name__}: {e}"
        if warn is not None:
            warn(f"building without KB context: {out['status']}")
        return {}


def _generator(s: Mapping[str, Any]) -> Any:
    """The trace writer: a teacher model when [dataset] teacher_url is set, else self-sampling from the agent's
    model when self_sample_url is set, else none (GSM-lite's strategies; other families then have no source)."""
    if s["teacher_url"]:
        if not s["teacher_model"]:
            raise ValueError("[dataset] teacher_url is set but teacher_model is empty")
        from pr1d.data.teacher import TeacherGenerator

        return TeacherGenerator(s["teacher_url"], s["teacher_model"])
    if s["self_sample_url"]:
        if not s["self_sample_model"]:
            raise ValueError("[dataset] self_sample_url is set but self_sample_model is empty")
        from pr1d.data.self_sample import SelfSampler

        return SelfSampler(s["self_sample_url"], s["self_sample_model"], samples=s["self_samples"])
    return None


def _families(w: Worker) -> tuple[Any, Any]:
    """The task families of the spec's [tasks], and the critic client a critic-graded family needs (or None)."""
    critic = None
    if w.spec.tasks.needs_critic():
        from pr1d.train.critic import CriticClient

        if not w.spec.scoring.url:
            raise ValueError("[tasks] has a critic-graded family but [scoring] base_url is empty")
        critic = CriticClient(w.spec.scoring.url, token=w.spec.scoring.token(), timeout=w.spec.scoring.timeout_s)
    return w.spec.tasks.build(critic=critic), critic


def _fleet_entries(w: Worker, s: dict[str, Any], url: str, token: str | None, fetch_stats: dict,
                  families: Any = None) -> tuple[list, Any, Any]:
    """The fleet's entries at or above min_score (a family's own ``min_score`` for its entries): the daemon's
    nightly copy, then the delta pulled now."""
    # Deliberately NOT filtered by agent_id: the dataset is the whole fleet's best work across tiers
    # (spec.agent_id names the agent being trained, not the source of its examples).
    floors = {name: spec.min_score for name, spec in w.spec.tasks.families.items() if spec.min_score is not None}

    def keep(e: Mapping[str, Any]) -> bool:
        name = families.name_of(e) if families is not None else None
        try:
            return float(e.get("score", 0)) >= floors.get(name, s["min_score"])
        except (TypeError, ValueError):
            return False

    lowest = min([s["min_score"], *floors.values()])
    since = s["since"]
    local: list = []
    if since is None and w.spec.registry.state_dir:
        from ..data.gradebook import LocalGradebook

        book = LocalGradebook(Path(w.spec.registry.state_dir) / "gradebook")
        local = [e for e in book.load() if keep(e)]
        since = book.cursor()
    entries, cursor = fetch_gradebook(url, token, since=since, min_score=lowest, stats=fetch_stats)
    entries = [e for e in entries if keep(e)]
    if local:
        from ..data.gradebook import content_hash

        held = {(str(e.get("task_id")), content_hash(e)) for e in local}
        entries = local + [e for e in entries if (str(e.get("task_id")), content_hash(e)) not in held]
        fetch_stats["from_local_copy"] = len(local)
    return entries, since, cursor


def family_topup(tasks_cfg: Any, entries: list[dict], families: Any, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Entries drawn from a family's ``train_tasks`` bank (seeded, questions not already in ``entries``) to bring
    its entries up to ``min_records``; returns them and how many per family."""
    import random

    from pr1d.tasks.families import load_train_tasks

    have = {str(e.get("question", "")).strip() for e in entries}
    extra: list[dict] = []
    counts: dict[str, int] = {}
    for name, spec in tasks_cfg.families.items():
        if not spec.train_tasks or not spec.min_records or name not in families.by_name:
            continue
        # Distinct questions: a gradebook asks the same task again and again, and a repeat builds no record.
        need = spec.min_records - len({str(e.get("question", "")).strip() for e in entries
                                       if families.name_of(e) == name})
        if need <= 0:
            counts[name] = 0
            continue
        bank = [t for t in load_train_tasks(spec.train_tasks) if t["question"].strip() not in have]
        random.Random(f"pr1-topup/{seed}/{name}").shuffle(bank)
        for t in bank[:need]:
            extra.append({"task_id": t["id"], "family": name, "question": t["question"], "final_answer": t["answer"],
                          "transcript": "", "tier": t["tier"], "score": 1.0, "source": "train_tasks"})
        counts[name] = min(need, len(bank))
    return extra, counts


def _targeted(w: Worker, s: dict, url: str, token: str | None, fleet: list, exemplars: list,
              generator: Any, source: dict) -> tuple[list, dict]:
    """Failing evaluations → failing tasks → verified tasks → records mixed with guardrail exemplars."""
    import httpx

    from pr1d.data.targeted import (
        DEFAULT_COMPLIANCE_KEYS,
        apply_verdicts,
        build_targeted_dataset,
        critic_verify,
        fetch_evaluations,
        resolve_tasks,
        select_failing,
    )

    agent = w.spec.agent_id
    if not agent:
        raise ValueError("a targeted dataset needs the spec's 'agent_id'")
    ev_stats: dict = {}
    evals, ev_cursor = fetch_evaluations(url, token, agent, field_map=w.spec.scoring.field_map, stats=ev_stats)
    keys = tuple(w.spec.scoring.compliance_keys or DEFAULT_COMPLIANCE_KEYS)
    failing = select_failing(evals, keys, s["max_failing_tasks"])
    w.log(f"targeted: {len(failing)} failing tasks in {len(evals)} evaluations of {agent}")
    own, _ = fetch_gradebook(url, token, agent_id=agent, min_score=0.0)
    tasks, drops = resolve_tasks(failing, own, fleet)
    recovered = [t for t in tasks if t["source"] == "recovered"]
    verdicts: dict[str, tuple[bool, float]] = {}
    critic_status = "not needed"
    if recovered:
        try:
            got = critic_verify(url, token, [(t["question"], t["answer"]) for t in recovered])
            verdicts = {str(t["id"]): v for t, v in zip(recovered, got, strict=True)}
            critic_status = "ok"
        except (httpx.HTTPError, ValueError) as e:  # unconfirmed answers are dropped, the build goes on
            critic_status = f"unavailable: {type(e).__name__}: {e}"
            w.log(f"critic {critic_status}: {len(recovered)} recovered answers stay unconfirmed", level="warning")
    tasks, unverified = apply_verdicts(tasks, verdicts, s["critic_min_confidence"])
    drops["unverified"] += unverified
    kb_stats: dict = {}
    contexts = (kb_contexts(w.spec.kb, w.spec.registry.state_dir, sorted({t["question"] for t in tasks}),
                            kb_stats, warn=lambda m: w.log(m, level="warning")) if s["kb"] else {})
    records, stats = build_targeted_dataset(
        tasks, exemplars, share=s["guardrail_share"], branches=s["branches"], seed=s["seed"],
        kb=(lambda q: contexts.get(q, "")) if contexts else None, generator=generator, drops=drops)
    stats["kb"] = kb_stats
    stats["failing"] = {
        "evaluations": len(evals), "fetch": ev_stats, "tasks": len(failing),
        "reasons": dict(sorted(Counter(r for f in failing for r in f["reasons"]).items())),
        "compliance_keys": list(keys), "critic": critic_status,
        "confirmed_by_critic": sum(1 for t in tasks if "critic" in t),
    }
    source.update(agent_id=agent, evaluations_until=ev_cursor)
    return records, stats


def main(w: Worker) -> dict:
    s = dataset_settings(w.spec)
    url = w.spec.scoring.url
    if not url:
        raise ValueError("spec has no scoring url (the daemon's [scoring] base_url)")
    token = w.spec.scoring.token()
    exemplars: list = []
    if s["guardrails"]:  # before any network: a bad exemplar file is a config error, found first
        from pr1d.data.guardrails import load_guardrails, resolve_guardrails_dir

        exemplars = load_guardrails(resolve_guardrails_dir(s["guardrails_dir"]))
    generator = _generator(s)
    families, critic = _families(w)
    kind = "targeted" if s["targeted"] else s["mode"]

    w.progress(0, 3, message="fetching gradebook")
    fetch_stats: dict = {}
    entries, since, cursor = _fleet_entries(w, s, url, token, fetch_stats, families)
    w.log(f"gradebook: {len(entries)} entries in {fetch_stats.get('pages')} pages (cursor {cursor})")
    if w.stop_requested.is_set():
        w.interrupt()

    w.progress(1, 3, message=f"building {kind} records from {len(entries)} entries")
    source = {"since": since, "until": cursor, "min_score": s["min_score"], "agent_id": None,
              "scoring_url": url, "for_agent": w.spec.agent_id or None}
    try:
        if s["targeted"]:
            records, stats = _targeted(w, s, url, token, entries, exemplars, generator, source)
        else:
            extra, topped = family_topup(w.spec.tasks, entries, families, s["seed"])
            if extra:
                w.log("topped up from the families' train_tasks: "
                      + ", ".join(f"{n} {name}" for name, n in topped.items()))
                entries = entries + extra
            kb_stats: dict = {}
            wanted = sorted({e["question"] for e in entries if w.spec.tasks.kb_context(families.name_of(e))})
            contexts = (kb_contexts(w.spec.kb, w.spec.registry.state_dir, wanted, kb_stats,
                                    warn=lambda m: w.log(m, level="warning")) if s["kb"] and wanted else {})
            records, stats = build_dataset(
                entries, branches=s["branches"], mode=s["mode"], mix=s["mix"], seed=s["seed"],
                max_records=s["max_records"], kb=(lambda q: contexts.get(q, "")) if contexts else None,
                generator=generator, families=families)
            stats["kb"] = kb_stats
            stats["family_topup"] = topped
            for name, n in stats["unknown_families"].items():
                w.log(f"{n} entries of task family {name!r} dropped: no [tasks.families.{name}] says how to grade "
                      "them (docs/dataset.md, 'Adding a task family')", level="warning")
            if s["guardrails"]:
                from pr1d.data.targeted import mix_guardrails

                records, n_ex = mix_guardrails(records, exemplars, s["guardrail_share"], s["seed"])
                stats.update(record_stats(records))
                stats["guardrails"] = {"share": s["guardrail_share"], "records": n_ex, "exemplars": len(exemplars),
                                       "rules": dict(sorted(Counter(r["rule"] for r in records if "rule" in r).items()))}
    finally:
        if generator is not None:
            generator.close()
        if critic is not None:
            critic.close()
    if generator is not None:
        stats["generator"] = {"name": generator.name, "requests": generator.requests, "errors": generator.errors}
    if not s["targeted"]:
        # Repeats the fleet fetch removed were seeds too: they count as duplicates. (In a targeted build
        # the fleet's entries are only looked up, never seeds, so their repeats are not drops.)
        stats["drops"]["duplicate"] += int(fetch_stats.get("duplicates", 0))
        stats["dropped"] += int(fetch_stats.get("duplicates", 0))
    stats["fetch"] = fetch_stats
    if w.stop_requested.is_set():
        w.interrupt()

    w.progress(2, 3, message=f"writing {len(records)} records")
    out_dir = w.stage_dir / "dataset"
    manifest = write_dataset(records, stats, out_dir, source)
    w.metric("dataset.records", len(records))
    w.metric("dataset.dropped", stats["dropped"])
    w.artifact("dataset", out_dir, kind="dataset", meta={
        "content_hash": manifest["content_hash"], "records": manifest["records"], "mode": s["mode"],
        "branches": stats["branches"], "drops": manifest["drops"], "source": source,
        "tiers": stats["tiers"], "targeted": s["targeted"],
        "guardrail_records": (stats.get("guardrails") or {}).get("records", 0),
        "families": {k: v["records"] for k, v in (stats.get("families") or {}).items()},
        "unknown_families": stats.get("unknown_families") or {},
    })
    w.progress(3, 3, message="done")
    drops = {k: v for k, v in manifest["drops"].items() if v}
    w.log(f"dataset {manifest['content_hash'][:12]}: {len(records)} records ({kind}), drops {drops}")
    return {"dataset_version": manifest["content_hash"], "records": len(records), "drops": manifest["drops"],
            "unknown_families": stats.get("unknown_families") or {}}


if __name__ == "__main__":
    run_stage(main)
