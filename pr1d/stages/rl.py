"""The `rl` stage: GRPO with the curriculum (ParallelRLTrainer) from the run's SFT candidate; writes ``candidate/``.

Hyperparameters are :class:`pr1d.params.RLParams` fields, layered (later wins; unknown keys fail
the stage with the list of known ones):

1. the config's ``[training.rl]`` defaults (spec ``training``);
2. the config's ``[rewards]`` section (spec ``rewards``) as the base of ``rewards``;
3. in a run of kind ``rl`` only: the run's flat params that are RLParams fields. A ``full`` run's
   flat params are the sft stage's too (its ``lr`` of 1e-3 would wreck RL), so there they are not read,
   except ``report_to``, which means the same to both stages (one ``--param report_to=tensorboard``
   tracks the whole run);
4. ``params.rl``: a mapping of RLParams fields, for any run kind.

The starting model: the run's newest ``NN-sft/candidate``, else ``params.model``, else the agent's model in
service (spec ``registry.model_in_service``). ``params.cpu`` trains on CPU even when CUDA is available. The
spec's ``scoring`` section (the URL, and where the bearer token is) reaches the platform's critic when
``critic`` is true. ``report_to``: experiment trackers, as in the sft stage (TensorBoard into the stage's
``tensorboard/`` folder, an artifact; run name ``pr1-run<id>-rl``).

Problems: ``tasks = "gsm_lite"`` (default) generates GSM-lite problems; ``tasks = "dataset"`` takes the run's
dataset stage's records, of any task family (:func:`dataset_tasks`), graded by the spec's ``[tasks]`` families.

The held-out GSM-lite accuracy per tier is measured before training (kept in ``eval_before.json`` so a
resumed stage does not measure it twice) and on the saved RL model after, both on the *selection split*
(:func:`pr1d.evaluate.selection.selection_split`), never on the fixed split the backtest and the gates score;
both go into the result with their difference.

Keep the better one (``keep_better``, on by default): the RL model becomes the run's ``candidate/`` only
when :func:`choose_candidate` finds it no worse than its starting model on that check, and on the selection set
(``[tasks.families.X] select``) of every served task family that has one. Otherwise it is
moved to ``rl_model_not_kept/``, the result's ``kept`` says why, and the backtest finds the run's SFT
candidate instead; a run without one (kind ``rl``, started from the model in service or ``params.model``)
stops as rejected, since nothing better than its start came out of it. The result also carries ``curriculum.transitions`` (every tier change: from, to, step,
reason, rolling accuracy) and ``stop`` (why training ended), which the daemon stores in the ledger.

SIGTERM: the trainer saves a checkpoint (model, optimizer, scheduler, RNG and curriculum state) at the
current step and the stage exits 75; with ``"resume": true`` or a checkpoint already in the stage's
checkpoint folder, training continues from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..evaluate.sft_gate import overall
from ..params import RLParams, params_from
from ..pipeline.files import writing
from ..pipeline.spec import Scoring, StageSpec
from .base import Worker, run_stage
from .sft import record_curves, tracking
from .sft_gate import find_candidate, score_families

# Flat run params the rl stage reads in every run kind: they mean the same to the sft stage.
SHARED_FLAT = ("report_to",)


def stage_config(spec: StageSpec) -> RLParams:
    """The :class:`RLParams` of a stage spec (see the module docstring for the layers)."""
    defaults = params_from(RLParams, spec.training, "[training.rl]").model_dump(exclude_unset=True)
    params = spec.params
    flat = {k: v for k, v in params.items()
            if k in RLParams.model_fields and (spec.run_kind == "rl" or k in SHARED_FLAT)}
    nested = dict(params.get("rl") or {})
    merged = {**defaults, **flat, **nested}
    merged["rewards"] = {**spec.rewards.model_dump(mode="json"), **defaults.get("rewards", {}),
                         **flat.get("rewards", {}), **nested.get("rewards", {})}
    return params_from(RLParams, merged, "rl")


def start_model(w: Worker) -> tuple[Path, str]:
    """``(folder, source)``: the run's newest SFT candidate, else ``params.model``, else the model in service."""
    cand = find_candidate(w.run_dir)
    if cand is not None:
        return cand, "sft candidate"
    if w.params.get("model"):
        return w.spec.registry.model_path(w.params["model"]), "params.model"
    if w.spec.registry.model_in_service:
        return w.spec.registry.model_path(), "model in service"
    raise ValueError(
        "the rl stage needs a model: run an sft stage before it, set params.model, or give the agent a model "
        "in service"
    )


def family_overall(report: dict) -> float:
    """A family report's overall accuracy: its tiers weighted by their task counts (the SFT gate's ``overall``)."""
    return overall(report["accuracy"], report["n_per_tier"])


def _worse(b: float, a: float, before: dict[str, float | None], after: dict[str, float | None], max_tier_drop: float,
           *, tier_label: str, where: str, tier_where: str) -> str | None:
    """Why the RL model (overall ``a``, tiers ``after``) is worse than its start (``b``, ``before``), or None: its
    overall is lower, or one tier fell by more than ``max_tier_drop``. The two rules, for GSM-lite and every family."""
    if a < b:
        return f"RL model {a:.1%} < its start {b:.1%} {where} ({(a - b) * 100:+.1f} points)"
    drops = [(before[t] - acc, t) for t, acc in after.items() if acc is not None and before.get(t) is not None]
    drop, tier = max(drops) if drops else (0.0, "")
    if drop > max_tier_drop + 1e-9:
        return (f"RL model's {tier_label}{tier} tier fell {drop * 100:.1f} points (more than keep_max_tier_drop "
                f"{max_tier_drop * 100:.1f}) {tier_where}")
    return None


def choose_candidate(before: dict | None, after: dict | None, max_tier_drop: float,
                     families: dict[str, dict] | None = None) -> tuple[bool, str]:
    """``(keep_rl, why)`` from the held-out reports of the starting model and the RL model.

    The RL model is kept unless its overall accuracy is lower, or one tier fell by more than
    ``max_tier_drop``. A tie keeps it. Without both reports nothing can be compared and it is kept.
    ``families`` (``{family: {"before": report, "after": report}}``, the selection sets of the served task
    families) are held to the same two rules: RL that trades a family away for arithmetic is not kept.
    """
    if not before or not after:
        return True, "no held-out check ran (eval_per_tier = 0): the RL model is handed on unchecked"
    for name, pair in sorted((families or {}).items()):
        fb, fa = pair.get("before"), pair.get("after")
        if not fb or not fa:
            continue
        why = _worse(family_overall(fb), family_overall(fa), fb["accuracy"], fa["accuracy"], max_tier_drop,
                     tier_label=f"{name} ", where=f"on the {name} family's selection set",
                     tier_where="on the family's selection set")
        if why:
            return False, why
    n = after.get("n_per_tier")
    b, a = before["overall"], after["overall"]
    why = _worse(b, a, before["accuracy"], after["accuracy"], max_tier_drop, tier_label="",
                 where=f"overall on {n} held-out problems per tier",
                 tier_where=f"on {n} held-out problems per tier, though overall {(a - b) * 100:+.1f} points")
    if why:
        return False, why
    fams = f" (and on {', '.join(sorted(families))})" if families else ""
    return True, (f"RL model {a:.1%} >= its start {b:.1%} overall{fams}, no tier down more than "
                  f"{max_tier_drop * 100:.1f} points")


def make_critic(scoring: Scoring, cfg: RLParams):
    """The critic client at the platform's scoring URL, with the token read the one way (:meth:`Scoring.token`)."""
    from pr1d.train.rewards import make_critic as build

    if not scoring.url:
        raise ValueError("critic is on but the spec has no scoring url (the daemon's [scoring] base_url)")
    return build(cfg.reward_params(), scoring.url, scoring.token())


def find_dataset(run_dir: Path) -> Path | None:
    """The run's newest dataset stage's ``records.jsonl`` (None without one)."""
    found = sorted(p for p in run_dir.glob("*-dataset/dataset/records.jsonl") if p.is_file())
    return found[-1] if found else None


def dataset_tasks(w: Worker, cfg: RLParams, critic: Any) -> dict[str, Any]:
    """``tasks = "dataset"``: the run's dataset records as RL problems, the families grading them and, for
    families whose tasks carry no tier, a tier from the agent's pass rate on the family (its own gradebook)."""
    from pr1d.tasks.families import family_pass_rates, tier_from_pass_rate

    path = find_dataset(w.run_dir)
    if path is None:
        raise ValueError("tasks = dataset but this run has no dataset stage output (NN-dataset/dataset/records.jsonl)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    families_critic = critic
    if families_critic is None and w.spec.tasks.needs_critic():
        families_critic = make_critic(w.spec.scoring, cfg)
    families = w.spec.tasks.build(critic=families_critic)
    tiers = cfg.curriculum_params().tiers
    family_tiers: dict[str, str] = {}
    untiered = sorted({str(r.get("family") or "gsm_lite") for r in records if r.get("tier") not in tiers})
    if untiered and w.spec.scoring.url and w.spec.agent_id:
        from pr1d.data.gradebook import fetch_gradebook

        own, _ = fetch_gradebook(w.spec.scoring.url, w.spec.scoring.token(), agent_id=w.spec.agent_id, min_score=0.0)
        rates = family_pass_rates(own, families.default)
        family_tiers = {f: tier_from_pass_rate(rates[f], tiers) for f in untiered if f in rates}
        w.log(f"tiers from pass rates: {', '.join(f'{f} {rates[f]:.0%} -> {t}' for f, t in family_tiers.items())}")
    w.log(f"RL problems: {len(records)} dataset tasks from {path.parent.parent.name} "
          f"({', '.join(sorted({str(r.get('family') or 'gsm_lite') for r in records}))})")
    # A critic made here only for the families is the caller's to close (``_own_critic``).
    return {"task_records": records, "families": families, "family_tiers": family_tiers,
            "_own_critic": families_critic if families_critic is not critic else None}


def main(w: Worker) -> dict:
    import torch

    from pr1d.inference.generate import load_model
    from pr1d.train.grpo import copy_policy, train_grpo
    from pr1d.train.sft import (
        PARALLEL_EVAL_TOKENS,
        check_reporters,
        evaluate_model,
        last_checkpoint,
        save_candidate,
    )

    cfg = stage_config(w.spec)
    check_reporters(cfg.report_to)  # a missing tracker package stops the stage now, not after the evaluation
    start, source = start_model(w)
    w.log(f"starting from {start} ({source})")
    torch.set_num_threads(cfg.threads)
    critic = make_critic(w.spec.scoring, cfg) if cfg.critic else None
    tasks = dataset_tasks(w, cfg, critic) if cfg.tasks == "dataset" else {}
    own_critic = tasks.pop("_own_critic", None)

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress":
            w.progress(fields["step"], fields["total"], fields["eta_s"], fields.get("message", ""))
        elif kind == "metric":
            w.metric(fields["name"], fields["value"], fields["step"])
        elif kind == "checkpoint":
            w.checkpoint(fields["path"], fields["step"])
        elif kind == "log":
            w.log(fields["message"])

    # -- before: the starting model on held-out problems --------------------------------------------
    before = None
    before_path = w.stage_dir / "eval_before.json"
    if cfg.eval_per_tier and w.is_main:
        if before_path.is_file():
            before = json.loads(before_path.read_text())
        loaded: Any = start  # the start's folder, or the model and tokenizer once loaded (one load for both checks)
        if not before or before.get("split") != "select" or before.get("n_per_tier") != cfg.eval_per_tier:
            loaded = load_model(start)
            before = evaluate_model(*loaded, cfg.eval_per_tier, split="select")
        if "families" not in before:
            rows = score_families(w, {"before": loaded}, n_per_tier=cfg.eval_per_tier,
                                  max_new_tokens=PARALLEL_EVAL_TOKENS, split="select", metric="rl.eval")
            before["families"] = {name: row["before"] for name, row in rows.items()}
            with writing(before_path):
                before_path.write_text(json.dumps(before, default=str) + "\n")
        for tier, acc in before["accuracy"].items():
            w.metric(f"rl.eval.before.{tier}", acc)
    if w.stop_requested.is_set():
        w.interrupt()

    # -- train -----------------------------------------------------------------------------------
    resume = w.resume or last_checkpoint(w.checkpoint_dir) is not None
    try:
        model, tokenizer, summary = train_grpo(
            start, w.checkpoint_dir, cfg, on_event=on_event, stop=w.stop_requested, resume=resume, critic=critic,
            use_cpu=True if w.params.get("cpu") else None, **tracking(w), **tasks,
        )
    finally:
        if own_critic is not None:
            own_critic.close()
    if summary["resumed_from"]:
        w.log(f"resumed from {summary['resumed_from']}")
    if summary["interrupted"] or w.stop_requested.is_set():
        w.interrupt()
    if not w.is_main:
        # Data-parallel replicas hold the weights the main process saves; it alone writes and reports.
        return {}
    record_curves(w, cfg.report_to)
    stop = summary["stop"]
    w.log(f"training ended at step {summary['steps']}: {stop['reason'] if stop else 'unknown'}"
          + (f" ({stop['detail']})" if stop else ""))

    # -- candidate ---------------------------------------------------------------------------------
    out = w.stage_dir / "candidate"
    with writing(out):
        paths = save_candidate(model, tokenizer, out)
        copy_policy(start, out)
    result: dict[str, Any] = {
        "candidate": str(out),
        "started_from": {"path": str(start), "source": source},
        "train": summary,
        "curriculum": summary["curriculum"],
        "stop": stop,
    }

    # -- after: the saved RL model on the same problems ------------------------------------------------
    after = None
    if cfg.eval_per_tier:
        cand, tok = load_model(out)
        after = evaluate_model(cand, tok, cfg.eval_per_tier, split="select")
        for tier, acc in after["accuracy"].items():
            w.metric(f"rl.eval.after.{tier}", acc)
        w.metric("rl.eval.after.parallel_adherence", after["parallel_adherence"])
        rows = score_families(w, {"after": (cand, tok)}, n_per_tier=cfg.eval_per_tier,
                              max_new_tokens=PARALLEL_EVAL_TOKENS, split="select", metric="rl.eval")
        family_eval = {name: {"before": (before or {}).get("families", {}).get(name), "after": row["after"]}
                       for name, row in rows.items()}
        for name, pair in family_eval.items():
            if pair["before"]:
                w.log(f"rl: {name} selection set {family_overall(pair['before']):.3f} -> "
                      f"{family_overall(pair['after']):.3f}")
        result["eval"] = {
            "split": "select",
            "before": before,
            "after": after,
            "delta": {t: after["accuracy"][t] - before["accuracy"][t] for t in after["accuracy"]
                      if before and before["accuracy"].get(t) is not None and after["accuracy"][t] is not None},
            "families": {name: {**pair, "delta": family_overall(pair["after"]) - family_overall(pair["before"])}
                         for name, pair in family_eval.items() if pair["before"]},
        }

    # -- keep the better one -----------------------------------------------------------------------------
    fam_pairs = (result.get("eval") or {}).get("families")
    keep, why = choose_candidate(before, after, cfg.keep_max_tier_drop, fam_pairs) if cfg.keep_better else (
        True, "keep_better is off: the RL model is handed on whatever the held-out check says")
    if keep:
        result["kept"] = {"model": "rl", "reason": why}
        w.metric("rl.kept", 1.0)
        w.artifact("candidate", out, kind="model", meta={"finetune": cfg.finetune, "started_from": str(start)})
        if "adapter" in paths:
            w.artifact("adapter", paths["adapter"], kind="adapter")
        return result
    held = w.stage_dir / "rl_model_not_kept"
    if held.exists():
        shutil.rmtree(held)
    out.rename(held)
    w.log(f"not keeping the RL model: {why}; it is in {held}")
    w.metric("rl.kept", 0.0)
    result.update(candidate=str(start) if source == "sft candidate" else None, rl_model=str(held),
                  kept={"model": source, "reason": why})
    if source != "sft candidate":
        result["stop_run"] = {"state": "rejected", "reason": f"rl: {why}; nothing better than the {source} to evaluate"}
    return result


if __name__ == "__main__":
    run_stage(main)
