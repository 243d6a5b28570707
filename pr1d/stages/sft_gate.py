"""The `sft_gate` stage: score base and SFT candidate on the same held-out GSM-lite problems (and on the held-out
set of every served task family that has one), then gate.

Params: the fields of :class:`pr1d.params.SFTGateParams` (``base``, ``candidate`` (default: the run's
``NN-sft/candidate``), ``n_per_tier``, ``threshold``, ``uplift_mode`` (``absolute`` | ``relative``), ``tiers``,
``max_new_tokens``, ``threads``, ``families``, ``max_regression``) over ``[training.sft_gate]``; ``base`` defaults to the run's ``model``
param, else the agent's model in service. Returns ``{"sft_gate": evidence}`` when
the candidate clears the bar, else that plus ``{"stop_run": {"state": "rejected", "reason":
"sft_uplift_below_threshold"}, "gate": evidence}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..params import SFTGateParams
from .base import Worker, run_stage


def find_candidate(run_dir: Path) -> Path | None:
    found = sorted(p for p in run_dir.glob("*-sft/candidate") if p.is_dir())
    return found[-1] if found else None


def heldout_families(w: Worker, p: SFTGateParams, models: dict[str, Any]) -> dict[str, dict]:
    """Base and candidate scored on the held-out set of every served family that has one (with KB context where
    the family takes it), by the family's grader. ``{family: {"base", "candidate", "n_per_tier", "with_context"}}``."""
    return score_families(w, models, n_per_tier=p.n_per_tier, max_new_tokens=p.max_new_tokens, split="eval",
                          metric="gate")


def score_families(w: Worker, models: dict[str, Any], *, n_per_tier: int | None, max_new_tokens: int,
                   split: str = "eval", metric: str = "gate") -> dict[str, dict]:
    """Each model of ``models`` (``{side: folder}``, or ``{side: (model, tokenizer)}`` already loaded) scored on every served family's ``heldout`` set
    (``split="eval"``, what the gates score) or ``select`` set (``split="select"``, what RL chooses on), with KB
    context where the family takes it, by the family's grader. ``{family: {side: report, "n_per_tier",
    "with_context"}}``; families without that set are left out. Metrics ``<metric>.<family>.<side>.<tier>``."""
    from pr1d.inference.generate import load_model
    from pr1d.tasks.families import load_heldout
    from pr1d.train.sft import evaluate_family

    from .backtest import task_families
    from .dataset import kb_contexts

    cfg = w.spec.tasks
    attr = "heldout" if split == "eval" else "select"
    if not any(getattr(spec, attr) for spec in cfg.families.values()):
        return {}
    families, critic = task_families(w)
    try:
        sets = {name: load_heldout(getattr(spec, attr), n_per_tier, split=split) for name, spec in cfg.families.items()
                if getattr(spec, attr) and name in families.by_name}
        if not sets:
            return {}
        wanted = sorted({t["question"] for name, ts in sets.items() if cfg.kb_context(name) for t in ts})
        kb_stats: dict = {}
        ctx = kb_contexts(w.spec.kb, w.spec.registry.state_dir, wanted, kb_stats,
                          warn=lambda m: w.log(m, level="warning")) if wanted else {}
        if wanted and not ctx:
            w.log(f"{metric}: no KB context for the held-out family tasks ({kb_stats.get('status')})", level="warning")
        rows: dict[str, dict] = {name: {"n_per_tier": {}, "with_context": 0} for name in sets}
        for side, path in models.items():
            if w.stop_requested.is_set():
                w.interrupt()
            model, tok = path if isinstance(path, tuple) else load_model(path)
            for name, tasks in sets.items():
                tasks = [{**t, "context": ctx.get(t["question"], "") if cfg.kb_context(name) else ""} for t in tasks]
                r = evaluate_family(model, tok, tasks, families.family(name), max_new_tokens=max_new_tokens)
                rows[name].update({side: r, "n_per_tier": r["n_per_tier"], "with_context": r["with_context"]})
                for tier, acc in r["accuracy"].items():
                    w.metric(f"{metric}.{name}.{side}.{tier}", acc)
        return rows
    finally:
        if critic is not None:
            critic.close()


def main(w: Worker) -> dict:
    import torch

    from pr1d.evaluate.gsm_lite import TIERS
    from pr1d.evaluate.sft_gate import family_gate, sft_gate
    from pr1d.inference.generate import load_model
    from pr1d.train.sft import evaluate_model

    p = w.stage_params(SFTGateParams)
    base = p.base or w.params.get("model") or w.spec.registry.model_in_service
    if not base:
        raise ValueError("the sft_gate stage needs params.base (the base model folder) or a model in service")
    base = w.spec.registry.model_path(str(base))  # a Hub id becomes its cached folder
    cand_path = Path(p.candidate) if p.candidate else find_candidate(w.run_dir)
    if cand_path is None:
        raise ValueError("no candidate: set params.candidate or run an sft stage before this one")
    n = p.n_per_tier
    tiers = tuple(p.tiers or TIERS)
    torch.set_num_threads(p.threads)
    reports = {}
    for i, (name, path) in enumerate((("base", base), ("candidate", cand_path))):
        if w.stop_requested.is_set():
            w.interrupt()  # nothing worth checkpointing: evaluation restarts from scratch
        w.progress(i, 2, message=f"evaluating {name}")
        model, tok = load_model(path)
        reports[name] = evaluate_model(model, tok, n, tiers=tiers, max_new_tokens=p.max_new_tokens)
        for tier, acc in reports[name]["accuracy"].items():
            w.metric(f"gate.{name}.{tier}", acc)
        w.metric(f"gate.{name}.parallel_adherence", reports[name]["parallel_adherence"])
    family_rows = heldout_families(w, p, {"base": base, "candidate": cand_path}) if p.families else {}
    w.progress(2, 2)
    decision = sft_gate(
        reports["base"]["accuracy"],
        reports["candidate"]["accuracy"],
        n,
        threshold=p.threshold,
        mode=p.uplift_mode,
    )
    if family_rows:
        decision = family_gate(decision, {f: (r["base"]["accuracy"], r["candidate"]["accuracy"], r["n_per_tier"])
                                          for f, r in family_rows.items()},
                               threshold=p.threshold, max_regression=p.max_regression)
        for f, row in decision.evidence["families"].items():
            w.log(f"sft gate: {f} {row['base_overall']:.3f} -> {row['candidate_overall']:.3f} "
                  f"({family_rows[f]['with_context']} of {sum(row['n_per_tier'].values())} prompts with KB context)")
    evidence = {
        **decision.evidence,
        "format": {
            k: {"parallel_adherence": r["parallel_adherence"], **r["format"]} for k, r in reports.items()
        },
        "candidate_path": str(cand_path),
    }
    w.log(f"sft gate: {decision.reason} (uplift {decision.evidence['uplift_abs']:+.3f} abs)")
    if decision.proceed:
        # Kept in the stage's result (the ledger), so `pr1ctl show` and the demo can say what SFT bought.
        return {"sft_gate": evidence}
    return {"stop_run": {"state": "rejected", "reason": decision.reason}, "gate": evidence, "sft_gate": evidence}


if __name__ == "__main__":
    run_stage(main)
