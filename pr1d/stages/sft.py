"""The `sft` stage: Parallel SFT of the agent's model with TRL; writes the candidate into ``candidate/``.

Params: ``model`` (base model folder, required), ``data`` (records JSONL; default: the run's
``NN-dataset/dataset/records.jsonl``, else generated from the GSM-lite training split), plus every
:class:`pr1d.train.sft.SFTStageConfig` field (``parallel_format``, ``branches``, ``finetune``, ``max_steps``,
...). ``eval_per_tier`` > 0 also scores the candidate (the gate stage compares it with the base).

SIGTERM: the trainer saves a checkpoint at the current step and the stage exits 75; with ``"resume": true``
(or a checkpoint already in the stage's checkpoint folder) training continues from it with the optimizer,
scheduler and RNG state.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .base import Worker, run_stage, writing


def find_dataset(run_dir: Path) -> Path | None:
    """The latest earlier ``NN-dataset/dataset/records.jsonl`` of this run, if any."""
    found = sorted(run_dir.glob("*-dataset/dataset/records.jsonl"))
    return found[-1] if found else None


def main(w: Worker) -> dict:
    from pr1d.evaluate.gsm_lite import train_split
    from pr1d.train.sft import SFTStageConfig, load_records, make_records, save_candidate, train_sft

    p = w.params
    if not p.get("model"):
        raise ValueError("the sft stage needs params.model: the base model folder")
    cfg = SFTStageConfig.from_params(p)
    data = Path(p["data"]) if p.get("data") else find_dataset(w.run_dir)
    if data is not None:
        records = load_records(data)
        w.log(f"{len(records)} records from {data}")
    else:
        tasks = train_split(cfg.n_train, seed=cfg.seed)
        random.Random(cfg.seed).shuffle(tasks)
        records = make_records(tasks, cfg.parallel_format, cfg.branches)
        w.log(f"no dataset given or found: generated {len(records)} records from the training split")

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress":
            w.progress(fields["step"], fields["total"], fields["eta_s"])
        elif kind == "metric":
            w.metric(fields["name"], fields["value"], fields["step"])
        elif kind == "checkpoint":
            w.checkpoint(fields["path"], fields["step"])

    from pr1d.train.sft import last_checkpoint

    resume = w.resume or last_checkpoint(w.checkpoint_dir) is not None
    model, tokenizer, summary = train_sft(
        p["model"],
        records,
        w.checkpoint_dir,
        cfg,
        on_event=on_event,
        stop=w.stop_requested,
        resume=resume,
        use_cpu=True if p.get("cpu") else None,
    )
    if summary["resumed_from"]:
        w.log(f"resumed from {summary['resumed_from']}")
    if summary["interrupted"] or w.stop_requested.is_set():
        w.interrupt()
    out = w.stage_dir / "candidate"
    with writing(out):
        paths = save_candidate(model, tokenizer, out)
    w.artifact("candidate", out, kind="model", meta={"finetune": cfg.finetune})
    if "adapter" in paths:
        w.artifact("adapter", paths["adapter"], kind="adapter")
    result: dict[str, Any] = {"candidate": str(out), "train": summary}
    if cfg.eval_per_tier:
        from pr1d.evaluate.gsm_eval import load_model
        from pr1d.train.sft import evaluate_model

        cand, tok = load_model(out)
        ev = evaluate_model(cand, tok, cfg.eval_per_tier)
        for tier, acc in ev["accuracy"].items():
            w.metric(f"sft.eval.{tier}", acc)
        w.metric("sft.eval.parallel_adherence", ev["parallel_adherence"])
        result["eval"] = ev
    return result


if __name__ == "__main__":
    run_stage(main)
