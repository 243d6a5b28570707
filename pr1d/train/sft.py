"""Parallel SFT: teach a GSM-lite model the Parallel format (or plain chains) with TRL's ``SFTTrainer``.

``python -m pr1d.train.sft --model PATH --data records.jsonl --out DIR [--parallel-format] [--branches N]
[--finetune full|lora] [--max-steps N] [--cpu]`` (every field of :class:`SFTParams` is a flag).
Without ``--data`` records are generated from the GSM-lite training split (``--n-train``).

Records are JSON lines ``{"prompt", "completion", "tier", ...}``. We tokenise them ourselves exactly as
pretraining and evaluation do (``<s>`` + prompt, completion, ``</s>``) and hand TRL ``input_ids`` plus a
``completion_mask``, with ``completion_only_loss=True``: TRL builds the labels, the prompt is never
trained on. (TRL's own prompt/completion tokenisation passes ``add_special_tokens=False`` and would drop
the ``<s>`` the model was pretrained and is evaluated with.)

On CPU batches are dynamically padded and length-grouped (``train_sampling_strategy="group_by_length"``);
``padding_free`` needs flash attention and is never used with sdpa/eager.

``report_to`` (an :class:`SFTParams` field the RL stage shares) names experiment trackers; TensorBoard's event
files go to ``--out``/tensorboard (the stage: its folder's ``tensorboard/``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pr1d.evaluate.gsm_lite import TIERS, train_split
from pr1d.params import SFTParams, add_param_arguments, params_from_args

EventFn = Callable[[str, dict[str, Any]], None]
PARALLEL_EVAL_TOKENS = 224


# -------------------------------------------------------------------------------------------------
# Records
# -------------------------------------------------------------------------------------------------


def make_records(tasks: list[dict[str, Any]], parallel: bool, branches: int = 2) -> list[dict[str, Any]]:
    """Records for tasks that come without a dataset stage (the CLI, tests): the dataset builder's own
    ``build_record``, so both paths write byte-identical traces through the same verification."""
    from pr1d.data.builder import DropReason, build_record

    records = []
    for t in tasks:
        try:
            records.append(build_record(t, branches=branches, mode="parallel" if parallel else "sequential"))
        except DropReason:
            continue  # a task no strategy can verify is left out, as the builder does
    return records


def curriculum_records(
    records: list[dict[str, Any]], cfg: SFTParams
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The training set: ``records`` (the dataset stage's verified traces) topped up to ``cfg.n_train`` with
    generated GSM-lite training problems, drawn per ``cfg.mix``, in the same format.

    A fleet's gradebook of best graded work is often a few hundred distinct tasks; thousands of optimizer
    steps over those alone would memorise them. The top-up comes from the same training split (no held-out
    fact ever) and goes through the same builder and verification. Returns the records (shuffled, seeded)
    and where they came from.
    """
    need = cfg.n_train - len(records)
    extra: list[dict[str, Any]] = []
    if need > 0:
        tasks = train_split(need, seed=cfg.seed, mix=cfg.mix)
        extra = make_records(tasks, cfg.parallel_format, cfg.branches)
    out = list(records) + extra
    random.Random(cfg.seed).shuffle(out)
    return out, {"dataset": len(records), "generated": len(extra)}


def load_records(path: str | Path) -> list[dict[str, Any]]:
    records = []
    with open(path) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("completion"), str):
                raise ValueError(f"{path}:{i}: a record needs string 'prompt' and 'completion' fields")
            records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def write_records(records: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def encode_records(tokenizer, records: list[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    """``input_ids`` (``<s>`` prompt completion ``</s>``) and ``completion_mask`` (1 on completion + EOS).

    The prompt goes through the tokenizer's chat template when it has one (the assistant's turn is the
    completion), exactly as :func:`pr1d.inference.generate.generate` renders it at inference.
    """
    from pr1d.inference.prompting import render_prompt

    eos = tokenizer.eos_token_id
    out = []
    for r in records:
        prompt = render_prompt(tokenizer, r["prompt"])
        p_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + r["completion"])["input_ids"] + [eos]
        n = 0
        while n < min(len(p_ids), len(full)) and p_ids[n] == full[n]:
            n += 1
        full = full[:max_length]
        out.append({"input_ids": full, "completion_mask": [0] * n + [1] * (len(full) - n)})
    return out


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


def sft_metrics(logs: dict[str, Any], state, elapsed: float) -> list[tuple[str, float]]:
    """The metric events of one Trainer log: loss, learning rate and grad norm, then tokens per second."""
    out = [(f"sft.{key}", float(logs[key])) for key in ("loss", "learning_rate", "grad_norm")
           if key in logs and math.isfinite(float(logs[key]))]
    if state.num_input_tokens_seen:
        out.append(("sft.tokens_per_s", state.num_input_tokens_seen / elapsed))
    return out


def wrap_lora(model, cfg: SFTParams):
    from peft import LoraConfig, get_peft_model

    from pr1d.train.tokenizer import embedding_module_names, embeddings_tied

    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules(),
        # The tags are special tokens the base never used: their embeddings (and the output rows) must learn,
        # so the embedding modules, by whatever name the architecture gives them, are trained in full and saved
        # with the adapter. Tied embeddings stay tied (one trained copy; merge keeps the model's shape).
        modules_to_save=embedding_module_names(model),
        ensure_weight_tying=embeddings_tied(model),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def load_trainable(model_path: str | Path, cfg: Any):
    """``(model, tokenizer)`` from a local path, ready to train: the Parallel tags are special tokens of the
    tokenizer (added, with mean-initialised embedding rows, when the model comes from elsewhere), and the model
    is LoRA-wrapped (seeded) when ``cfg.finetune == "lora"``. The SFT and RL stages both load this way; ``cfg``
    is either stage config (they share the finetune/lora_*/seed fields)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pr1d.inference.generate import LOCAL_ONLY
    from pr1d.train.tokenizer import add_parallel_tags

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **LOCAL_ONLY)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    add_parallel_tags(model, tokenizer)
    if cfg.finetune == "lora":
        torch.manual_seed(cfg.seed)
        model = wrap_lora(model, cfg)
    return model, tokenizer


# -------------------------------------------------------------------------------------------------
# Experiment tracking (report_to), shared with the RL trainer
# -------------------------------------------------------------------------------------------------


class TrackerMissing(RuntimeError):
    """A ``report_to`` tracker whose package is not installed in the training environment."""


def check_reporters(report_to: list[str]) -> None:
    """Raise :class:`TrackerMissing`, naming what to pip install, when a tracker's package is missing.

    Called before the model loads: without the check the Trainer's constructor (or, for some trackers, the
    first log) fails with an ImportError traceback after minutes of loading and data preparation.
    """
    import importlib.util

    from pr1d.params import REPORTERS

    missing = [name for name in report_to if importlib.util.find_spec(REPORTERS[name]) is None]
    if missing:
        packages = " ".join(REPORTERS[name] for name in missing)
        whose = "its package is" if len(missing) == 1 else "their packages are"
        raise TrackerMissing(
            f"report_to asks for {', '.join(missing)} but {whose} not installed in this environment "
            f"({sys.executable}): pip install {packages}" + (" (tensorboard comes with pip install 'pr1[train]')"
                                                            if "tensorboard" in missing else "")
            + f", or take {', '.join(missing)} out of report_to"
        )


def report_args(cfg: Any, run_name: str | None) -> dict[str, Any]:
    """The Trainer arguments of ``cfg.report_to`` (either stage's params): the trackers and the run's name."""
    return {"report_to": list(cfg.report_to), **({"run_name": run_name} if run_name else {})}


def tensorboard_into(trainer, logging_dir: str | Path | None) -> None:
    """Point the trainer's TensorBoard writer (when ``report_to`` has one) at ``logging_dir``.

    transformers 5 has no ``logging_dir`` argument: its callback reads ``TENSORBOARD_LOGGING_DIR`` when it is
    built, else writes under ``output_dir`` (here the checkpoint folder). Setting the folder on the callback
    keeps the process environment alone; the writer is opened at the start of training.
    """
    if logging_dir is None:
        return
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(logging_dir)


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(checkpoint_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def train_sft(
    model_path: str | Path,
    records: list[dict[str, Any]],
    checkpoint_dir: str | Path,
    cfg: SFTParams,
    *,
    on_event: EventFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
    use_cpu: bool | None = None,
    logging_dir: str | Path | None = None,
    run_name: str | None = None,
):
    """Train; returns ``(model, tokenizer, summary)``. ``summary["interrupted"]``: stopped on request.

    ``logging_dir``: where TensorBoard's event files go when ``cfg.report_to`` has it (default: under the
    checkpoint folder); ``run_name``: the run's name in the trackers.
    """
    check_reporters(cfg.report_to)
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(cfg.threads)
    emit = on_event or (lambda _t, _f: None)
    model, tokenizer = load_trainable(model_path, cfg)
    encoded = encode_records(tokenizer, records, cfg.max_length)
    dataset = Dataset.from_list(encoded)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.max_steps // 20),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, min(10, cfg.max_steps // 10)),
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        fp16=False,
        use_cpu=use_cpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        completion_only_loss=True,
        max_length=cfg.max_length,
        padding_free=False,
        # Length-grouped batches with dynamic padding keep examples apart under sdpa/eager attention (TRL's
        # padding-free packing does only under flash attention). max_length is the benchmark's baseline.
        train_sampling_strategy="group_by_length" if cfg.padding == "dynamic" else "random",
        pad_to_multiple_of=cfg.max_length if cfg.padding == "max_length" else None,
        include_num_input_tokens_seen="non_padding",
        **report_args(cfg, run_name),
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Under DDP: every trainable parameter (LoRA adapters, the saved embeddings) takes part in each
        # forward, so skip the search for unused ones the Trainer turns on for a PEFT model (an extra pass
        # over the autograd graph per step).
        ddp_find_unused_parameters=False,
    )
    # Imported here, not at module level: the stage's config must load without transformers.
    from pr1d.train.callbacks import EventCallback

    callback = EventCallback(emit, stop, metrics=sft_metrics)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback]
    )
    # Events go through on_event; the Trainer's own printing would interleave with the event stream on stdout.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    tensorboard_into(trainer, logging_dir)
    ckpt = last_checkpoint(checkpoint_dir) if resume else None
    started = time.monotonic()
    out = trainer.train(resume_from_checkpoint=ckpt)
    elapsed = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "steps": trainer.state.global_step,
        "resumed_from": ckpt,
        "interrupted": callback.stopped,
        "train_s": round(elapsed, 1),
        "train_s_precise": elapsed,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_loss": out.training_loss,
        "records": len(records),
        "config": cfg.model_dump(mode="json"),
        # Under `accelerate launch`: which rank this is, of how many, and how many batches of each epoch
        # it drew (a rank that trains alone on everything shows world_size 1 and the full count).
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "backend": trainer.accelerator.state.backend,
        "batches_per_epoch": len(trainer.get_train_dataloader()),
        "weights": weights_fingerprint(trainer.model),
    }
    return trainer.model, tokenizer, summary


def weights_fingerprint(model) -> str:
    """A short digest of the model's weights that replicas holding equal weights share exactly.

    Per parameter, the integer sum of its bit pattern (exact and independent of reduction order, thread
    count or device, unlike a float sum; computed where the tensor lives, no copy to the host) goes into a
    sha256 with the parameter's name. Under DDP every rank must end with the same digest; under FSDP each
    rank holds a shard and the digests differ by design.
    """
    import hashlib

    import torch

    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().contiguous()
        bits = t.view(ints[t.element_size()])
        h.update(f"{name}:{int(bits.sum(dtype=torch.int64))};".encode())
    return h.hexdigest()[:16]


def save_candidate(model, tokenizer, out_dir: str | Path) -> dict[str, str]:
    """Save the candidate (safetensors only): full model in ``out_dir``; LoRA also ``out_dir/adapter``.

    Under `accelerate launch` call it on the main process only (``Worker.is_main``; the DDP replicas hold
    the same weights): several ranks writing one folder would interleave their files.
    """
    out = Path(out_dir)
    paths = {"model": str(out)}
    if _distributed_rank() != 0:
        return {**paths, **({"adapter": str(out / "adapter")} if hasattr(model, "peft_config") else {})}
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        adapter = out / "adapter"
        model.save_pretrained(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        paths["adapter"] = str(adapter)
        model = model.merge_and_unload()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    pickles = sorted(str(p) for p in out.rglob("*.bin"))
    if pickles:
        raise RuntimeError(f"pickled weights written: {pickles}; only safetensors are allowed")
    return paths


def _distributed_rank() -> int:
    """This process's global rank once torch.distributed is up (the trainer did it under a launcher); else 0."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# -------------------------------------------------------------------------------------------------
# Evaluation
# -------------------------------------------------------------------------------------------------


def evaluate_model(
    model, tokenizer, n_per_tier: int, tiers=TIERS, max_new_tokens: int = PARALLEL_EVAL_TOKENS,
    split: str = "eval",
):
    """Greedy held-out accuracy per tier plus format KPIs; ``parallel_adherence`` = valid *and* parallel.

    ``split``: ``"eval"`` (the fixed split the gates score) or ``"select"`` (the one the curriculum chooses
    between models on, :func:`pr1d.evaluate.selection.selection_split`).
    """
    from pr1d.data.parallel_format import measure
    from pr1d.evaluate.gsm_eval import evaluate_tasks
    from pr1d.evaluate.gsm_lite import eval_split
    from pr1d.evaluate.selection import selection_split

    draw = {"eval": eval_split, "select": selection_split}.get(split)
    if draw is None:
        raise ValueError(f"unknown evaluation split {split!r}; expected 'eval' or 'select'")
    tasks = [t for t in draw(n_per_tier) if t["tier"] in tiers]
    report = evaluate_tasks(model, tokenizer, tasks, k=0, max_new_tokens=max_new_tokens, keep_texts=True)
    texts = report.pop("greedy_texts")
    ms = [measure(t) for t in texts]
    return {
        "accuracy": {t: report["tiers"][t]["greedy"] for t in tiers if t in report["tiers"]},
        "overall": report["tiers"]["overall"]["greedy"],
        "format": report["parallel"],
        "parallel_adherence": sum(m.format_ok and m.has_parallel for m in ms) / len(ms) if ms else 0.0,
        "format_errors": dict(Counter(m.error_code for m in ms if not m.format_ok)),
        "n_per_tier": n_per_tier,
        "split": split,
        "samples": texts[:2],
    }


def evaluate_family(model, tokenizer, tasks: list[dict[str, Any]], family, max_new_tokens: int = PARALLEL_EVAL_TOKENS,
                    ) -> dict[str, Any]:
    """Greedy held-out accuracy per tier on a task family's ``tasks`` (each with its ``context``), every answer
    judged by the family's own grader (the critic's outage counts as not passed, and is counted)."""
    from pr1d.evaluate.gsm_eval import evaluate_tasks
    from pr1d.tasks.contract import Task, final_answer

    report = evaluate_tasks(model, tokenizer, tasks, k=0, max_new_tokens=max_new_tokens, keep_texts=True)
    texts = report.pop("greedy_texts")
    items = [(Task(str(t["id"]), family.name, t["question"], str(t["answer"]), t["tier"], str(t.get("context") or "")),
              final_answer(text)) for t, text in zip(tasks, texts, strict=True)]
    verdicts = family.grader.grade_many(items)
    tiers = list(dict.fromkeys(t["tier"] for t in tasks))
    acc = {tier: sum(v.passed for t, v in zip(tasks, verdicts, strict=True) if t["tier"] == tier)
           / sum(1 for t in tasks if t["tier"] == tier) for tier in tiers}
    return {"accuracy": acc, "n_per_tier": {tier: sum(1 for t in tasks if t["tier"] == tier) for tier in tiers},
            "unavailable": sum(v.unavailable for v in verdicts), "with_context": sum(bool(t.get("context")) for t in tasks),
            "samples": texts[:2]}


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pr1d.params.SFTParams` field (``--max-steps``; booleans as ``--x/--no-x``)."""
    add_param_arguments(parser, SFTParams)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pr1d.train.sft", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="base model: a save_pretrained folder or a Hub id in the local Hugging Face cache")
    parser.add_argument("--allow-download", action="store_true",
                        help="fetch a Hub id missing from the cache (safetensors, configs, tokenizer; never code)")
    parser.add_argument("--data", help="records JSONL; default: generated from the GSM-lite training split")
    parser.add_argument("--out", required=True,
                        help="output folder: candidate/, checkpoints/, sft.json (and tensorboard/ with --report-to)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when CUDA is available")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = params_from_args(SFTParams, args)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    from pr1d.inference.source import ModelNotFound, resolve_model

    try:  # a folder, or a Hub id from the local Hugging Face cache (--allow-download: fetch a missing one)
        args.model = str(resolve_model(args.model, local_files_only=not args.allow_download,
                                        allow_hint="pass --allow-download"))
    except ModelNotFound as exc:
        parser.error(str(exc))
    records, sources = curriculum_records(load_records(args.data) if args.data else [], cfg)
    print(f"{sources['dataset']} dataset records + {sources['generated']} generated", file=sys.stderr)

    def show(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress" and (fields["step"] % 25 == 0 or fields["step"] == fields["total"]):
            print(f"step {fields['step']}/{fields['total']} eta {fields['eta_s'] or 0:.0f}s", file=sys.stderr)
        elif kind == "metric" and fields["name"] == "sft.loss":
            print(f"  loss {fields['value']:.4f}", file=sys.stderr)

    model, tokenizer, summary = train_sft(
        args.model,
        records,
        out / "checkpoints",
        cfg,
        on_event=show,
        resume=args.resume,
        use_cpu=True if args.cpu else None,
        logging_dir=out / "tensorboard",
        run_name=f"pr1-sft-{out.name}",
    )
    if summary["rank"] != 0:
        return 0  # under `accelerate launch` the main process writes the candidate and the report
    summary["candidate"] = save_candidate(model, tokenizer, out / "candidate")
    if cfg.eval_per_tier:
        from pr1d.inference.generate import load_model

        base_m, base_t = load_model(args.model)
        cand_m, cand_t = load_model(out / "candidate")
        summary["eval"] = {
            "base": evaluate_model(base_m, base_t, cfg.eval_per_tier),
            "candidate": evaluate_model(cand_m, cand_t, cfg.eval_per_tier),
        }
    (out / "sft.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    json.dump(summary, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
