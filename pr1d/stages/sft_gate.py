"""The `sft_gate` stage: score base and SFT candidate on the same held-out GSM-lite problems, then gate.

Params: the fields of :class:`pr1d.params.SFTGateParams` (``base``, ``candidate`` (default: the run's
``NN-sft/candidate``), ``n_per_tier``, ``threshold``, ``uplift_mode`` (``absolute`` | ``relative``), ``tiers``,
``max_new_tokens``, ``threads``) over ``[training.sft_gate]``; ``base`` defaults to the run's ``model``
param, else the agent's model in service. Returns ``{"sft_gate": evidence}`` when
the candidate clears the bar, else that plus ``{"stop_run": {"state": "rejected", "reason":
"sft_uplift_below_threshold"}, "gate": evidence}``.
"""

from __future__ import annotations

from pathlib import Path

from ..params import SFTGateParams
from .base import Worker, run_stage


def find_candidate(run_dir: Path) -> Path | None:
    found = sorted(p for p in run_dir.glob("*-sft/candidate") if p.is_dir())
    return found[-1] if found else None


def main(w: Worker) -> dict:
    import torch

    from pr1d.evaluate.gsm_lite import TIERS
    from pr1d.evaluate.sft_gate import sft_gate
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
    w.progress(2, 2)
    decision = sft_gate(
        reports["base"]["accuracy"],
        reports["candidate"]["accuracy"],
        n,
        threshold=p.threshold,
        mode=p.uplift_mode,
    )
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
