"""The `sft` stage: Parallel SFT of the agent's model with TRL; writes the candidate into ``candidate/``.

Params: ``model`` (base model folder; default: the agent's model in service), ``data`` (records JSONL;
default: the run's ``NN-dataset/dataset/records.jsonl``, else generated from the GSM-lite training split),
``cpu``, plus every :class:`pr1d.params.SFTParams` field (``parallel_format``, ``branches``, ``finetune``,
``max_steps``, ``mix``, ...) over the config's ``[training.sft]``. ``eval_per_tier`` > 0 also scores the
candidate (the gate stage compares it with the base). ``report_to`` names experiment trackers: TensorBoard
writes into the stage's ``tensorboard/`` folder, recorded as an artifact (kind ``tensorboard``); every tracker
sees the run as ``pr1-run<id>-sft``. A tracker whose package is missing fails the stage before it trains.

SIGTERM: the trainer saves a checkpoint at the current step and the stage exits 75; with ``"resume": true``
(or a checkpoint already in the stage's checkpoint folder) training continues from it with the optimizer,
scheduler and RNG state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..params import SFTParams
from ..pipeline.files import writing
from .base import Worker, run_stage


def find_dataset(run_dir: Path) -> Path | None:
    """The latest earlier ``NN-dataset/dataset/records.jsonl`` of this run, if any."""
    found = sorted(run_dir.glob("*-dataset/dataset/records.jsonl"))
    return found[-1] if found else None


# The folder of a training stage's TensorBoard event files (report_to = ["tensorboard"]), inside its stage folder
# so that each run's curves stay with the run: `tensorboard --logdir <state>/runs` compares them all.
TENSORBOARD_DIR = "tensorboard"


def tracking(w: Worker) -> dict[str, Any]:
    """The trainer's ``logging_dir`` and ``run_name`` for this stage (the SFT and RL stages share them)."""
    return {"logging_dir": w.stage_dir / TENSORBOARD_DIR, "run_name": f"pr1-run{w.run_id}-{w.spec.stage}"}


def record_curves(w: Worker, report_to: list[str]) -> None:
    """Record the stage's TensorBoard folder (kind ``tensorboard``), so `pr1ctl show RUN` names it."""
    folder = w.stage_dir / TENSORBOARD_DIR
    if "tensorboard" in report_to and folder.is_dir():
        w.artifact("tensorboard", folder, kind="tensorboard")


# Every training record's task id and question, generated top-up included: the backtest leaves these out.
TRAINING_TASKS = "training_tasks.jsonl"


def write_training_tasks(records: list[dict[str, Any]], path: Path) -> None:
    """One ``{"id", "task_id", "question"}`` line per training record (atomic), for the backtest's clean replay."""
    import json

    from pr1d.evaluate.backtest import question_of_prompt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with writing(tmp):
        tmp.write_text("".join(json.dumps({"id": r.get("id"), "task_id": r.get("task_id"),
                                           "question": question_of_prompt(str(r.get("prompt") or ""))}) + "\n"
                               for r in records))
    tmp.replace(path)


def main(w: Worker) -> dict:
    from pr1d.train.sft import check_reporters, curriculum_records, load_records, save_candidate, train_sft

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        # Each FSDP rank holds a shard: the candidate needs the shards gathered by every rank at once, which
        # this stage does not do yet. Refuse before hours of GPU time rather than save a partial model.
        raise ValueError(
            "the sft stage does not save a candidate under FSDP yet: use config/accelerate/1node-8gpu-ddp.yaml "
            "(LoRA, as in config/profiles/qwen2.5-7b.toml); see docs/multi_gpu.md"
        )
    p = w.params
    # The model to fine-tune: params.model, else the one the agent runs now (the daemon resolves the
    # agent's current registry version, or its original model under [registry] base_models_dir).
    model_path = p.get("model") or w.spec.registry.model_in_service
    if not model_path:
        raise ValueError(
            "the sft stage needs a model: set params.model, or give the agent a model in service (a registry "
            "version, or its original model under [registry] base_models_dir/<model name>)"
        )
    # In a run the sft_gate stage scores base and candidate side by side; the stage's own evaluation is for
    # runs that ask for it (params.eval_per_tier), so a curriculum does not score the candidate twice.
    cfg = w.stage_params(SFTParams, "sft", base={"eval_per_tier": 0})
    check_reporters(cfg.report_to)  # a missing tracker package stops the stage now, not after the data is built
    model_path = w.spec.registry.model_path(str(model_path))  # a folder, or a Hub id's cached snapshot
    data = Path(p["data"]) if p.get("data") else find_dataset(w.run_dir)
    records, sources = curriculum_records(load_records(data) if data is not None else [], cfg)
    w.log(
        f"{sources['dataset']} records from {data or 'no dataset'} + {sources['generated']} generated "
        f"GSM-lite training problems (mix {','.join(f'{t}={v:g}' for t, v in cfg.mix.items())}) = {len(records)}"
    )
    if w.is_main:
        write_training_tasks(records, w.stage_dir / TRAINING_TASKS)

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
        model_path,
        records,
        w.checkpoint_dir,
        cfg,
        on_event=on_event,
        stop=w.stop_requested,
        resume=resume,
        use_cpu=True if p.get("cpu") else None,
        **tracking(w),
    )
    if summary["resumed_from"]:
        w.log(f"resumed from {summary['resumed_from']}")
    if summary["interrupted"] or w.stop_requested.is_set():
        w.interrupt()
    if summary["world_size"] > 1:
        w.log(
            f"trained {summary['steps']} steps over {summary['backend']} on {summary['batches_per_epoch']} "
            f"batches per epoch; weights {summary['weights']}"
        )
    if not w.is_main:
        # The DDP replicas hold the weights the main process saves; it alone writes and reports the candidate.
        return {}
    record_curves(w, cfg.report_to)
    out = w.stage_dir / "candidate"
    with writing(out):
        paths = save_candidate(model, tokenizer, out)
        policy, longest = candidate_policy(records, tokenizer)
        (out / "policy.json").write_text(json.dumps(policy.to_dict(), indent=1) + "\n")
    w.log(f"candidate policy: paths {policy.max_path_tokens}, summary {policy.summary_max_tokens}, answer "
          f"{policy.max_new_tokens} tokens (longest trained: path {longest['path']}, summary {longest['summary']}, "
          f"answer {longest['answer']})")
    w.artifact("candidate", out, kind="model", meta={"finetune": cfg.finetune})
    if "adapter" in paths:
        w.artifact("adapter", paths["adapter"], kind="adapter")
    result: dict[str, Any] = {"candidate": str(out), "train": summary, "records": sources}
    if cfg.eval_per_tier:
        from pr1d.inference.generate import load_model
        from pr1d.train.sft import evaluate_model

        cand, tok = load_model(out)
        ev = evaluate_model(cand, tok, cfg.eval_per_tier)
        for tier, acc in ev["accuracy"].items():
            w.metric(f"sft.eval.{tier}", acc)
        w.metric("sft.eval.parallel_adherence", ev["parallel_adherence"])
        result["eval"] = ev
    return result


def candidate_policy(records: list[dict[str, Any]], tokenizer) -> tuple[Any, dict[str, int]]:
    """The ParallelExecutionPolicy the candidate ships with (``candidate/policy.json``, read by the backtest and
    registered on promotion): the default, with budgets raised to fit the longest path, summary and answer it was
    trained to write (pr1d.inference.policy.sized_to_traces)."""
    from pr1d.data import parallel_format as pf
    from pr1d.inference.policy import sized_to_traces

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    longest = {"path": 0, "summary": 0, "answer": 0}
    for rec in records:
        text = rec.get("completion") or ""
        longest["answer"] = max(longest["answer"], n(text))
        try:
            blocks = pf.parse(text).blocks
        except pf.FormatError:  # a record that is not Parallel (sequential) has no paths to size
            continue
        for block in blocks:
            longest["path"] = max([longest["path"], *(n(path) for path in block.paths)])
            longest["summary"] = max(longest["summary"], n(block.summary))
    return sized_to_traces(longest["path"], longest["summary"], longest["answer"]), longest


if __name__ == "__main__":
    run_stage(main)
