"""Bootstrap the tiny agent model: tokenizer, a Llama-style causal LM, time-boxed pretraining on GSM-lite.

``python -m pr1d.train.model bootstrap --out DIR [--minutes M] [--seed S] [--size tiny|demo]`` writes a
folder that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load back
(safetensors only) plus ``bootstrap.json`` with the run's figures and the weights' sha256.

The model is meant to be an *agent in trouble*: fluent on one-step problems, partly right on two-step
ones and weak on hard ones, so that the SFT + RL curriculum has headroom and GRPO gets reward signal.
The corpus is the GSM-lite training split (left-to-right solutions, loss on the solution only) plus
arithmetic drills drawn from the same non-held-out facts: word problems alone spend ~55 tokens per fact
and left held-out easy accuracy near 15% after 2000 steps; with drills the arithmetic is learnt first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from pr1d.evaluate.gsm_eval import greedy_accuracy
from pr1d.evaluate.gsm_lite import TIERS, arithmetic_drills, format_prompt, render_sequential, train_split
from pr1d.train.tokenizer import build_tokenizer, save_tokenizer

ProgressFn = Callable[[dict[str, Any]], None]

# Model shapes. Llama rather than Qwen2: with a custom tokenizer in the folder, a Qwen2 config makes
# AutoTokenizer substitute Qwen's own tokenizer class, while Llama leaves ours alone.
SIZES: dict[str, dict[str, int]] = {
    # ~0.9M parameters, ~20k tokens/s on two cores: 2000 steps (about 3.5 minutes) learn the arithmetic and
    # one-step problems while two-step composition is still partial.
    "demo": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4},
    # ~0.28M parameters, ~50k tokens/s: learns one-step problems in ~2000 steps (~40 s) for the tests.
    "tiny": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
}


@dataclass
class PretrainConfig:
    """Hyperparameters of the bootstrap pretraining (defaults are the tuned demo settings)."""

    minutes: float = field(
        default=60.0,
        metadata={
            "help": "wall-clock backstop of the training loop. With max_steps set, the steps alone shape the "
            "learning-rate schedule (the same model on any machine); a loop that hits this cap stops and is "
            "recorded as cut_short, which pr1d demo refuses to cache. (A 12-minute cap that also drove the "
            "schedule gave busy machines a different, weaker model: 1734 steps instead of 2000.)"
        },
    )
    max_steps: int | None = field(
        default=2000,
        metadata={
            "help": "stop after this many steps (None: the time budget alone). 2000 demo steps give the "
            "agent in trouble: ~90% easy, ~25% medium, ~3% hard"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the init, the corpus and the batch order"})
    lr: float = field(default=1.5e-3, metadata={"help": "peak AdamW learning rate (3e-3 and up stalled runs)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (matrices only)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per step"})
    corpus_size: int = field(default=40_000, metadata={"help": "training problems generated up front"})
    drill_ratio: float = field(
        default=0.5, metadata={"help": "arithmetic drills per training problem (0: word problems only)"}
    )
    facts_per_drill: int = field(default=8, metadata={"help": "facts in one drill example"})
    mix: dict[str, float] = field(
        default_factory=lambda: {"easy": 0.75, "medium": 0.22, "hard": 0.03},
        metadata={"help": "tier mix of the corpus; little hard so that hard stays hard"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"help": "torch device for the loop (the model is moved there)"})
    log_every: int = field(default=25, metadata={"help": "steps between on_progress calls"})

    def __post_init__(self) -> None:
        if self.minutes <= 0 and not self.max_steps:
            raise ValueError("set minutes > 0 or max_steps: pretraining needs a budget to stop")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio is a fraction of lr: use a value in [0, 1]")
        if self.drill_ratio < 0:
            raise ValueError("drill_ratio counts drills per problem: use 0 or more")
        if self.batch_size < 1 or self.corpus_size < self.batch_size:
            raise ValueError("batch_size must be >= 1 and corpus_size >= batch_size")


def make_model(vocab_size: int, size: str, tokenizer, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama-style LM of the named size, seeded."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    shape = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=512,
        # Tied embeddings: at this scale the output matrix would be a sixth of all parameters.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


Example = tuple[list[int], list[int]]  # (input_ids, labels with -100 where no loss is taken)


def encode_corpus(tokenizer, tasks: list[dict[str, Any]]) -> list[Example]:
    """``<s> prompt solution </s>`` per task, with the loss on the solution only.

    Predicting the question's random quantities teaches nothing and would take a large share of a
    tiny model's capacity.
    """
    prompts = [format_prompt(t["question"]) for t in tasks]
    full = [p + render_sequential(t) for p, t in zip(prompts, tasks, strict=True)]
    # The Rust tokenizer directly: the transformers wrapper adds seconds on a corpus of this size.
    backend = tokenizer.backend_tokenizer
    prompt_lens = [len(e.ids) for e in backend.encode_batch(prompts)]
    eos = tokenizer.eos_token_id
    examples = []
    for enc, n in zip(backend.encode_batch(full), prompt_lens, strict=True):
        ids = enc.ids + [eos]
        examples.append((ids, [-100] * n + ids[n:]))
    return examples


def encode_drills(tokenizer, drills: list[str]) -> list[Example]:
    """Drill texts with the loss on ``= r`` only: the operands are random, the results are the lesson."""
    eos = tokenizer.eos_token_id
    examples = []
    for text, enc in zip(drills, tokenizer.backend_tokenizer.encode_batch(drills), strict=True):
        # Character spans from each " =" to the end of its line (newline included), in text order.
        spans, pos = [], 0
        for line in text.split("\n"):
            eq = line.find(" =")
            if eq >= 0:
                spans.append((pos + eq, pos + len(line) + 1))
            pos += len(line) + 1
        labels, span = [], 0
        for tok, (start, _end) in zip(enc.ids, enc.offsets, strict=True):
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            inside = span < len(spans) and spans[span][0] <= start
            labels.append(tok if inside else -100)
        examples.append((enc.ids + [eos], labels + [eos]))
    return examples


def length_grouped_batches(
    examples: list[Example], batch_size: int, pad_id: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(input_ids, labels)`` batches, similar lengths together, in random order.

    Sequences are right-padded per batch (never packed), so no example attends to another and,
    because attention is causal, real tokens never see the padding either: no attention mask needed.
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    # Sort inside mega-chunks rather than globally: batches stay length-homogeneous but the epoch
    # still mixes tiers and lengths from step to step.
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda i: len(examples[i][0]))
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    for batch in batches:
        width = max(len(examples[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq, lab = examples[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
        yield ids, labels


def build_corpus(cfg: PretrainConfig):
    """``(tokenizer, examples)``: the training split's problems plus drills, and a tokenizer trained on them.

    Training split only: the held-out rule keeps every evaluation fact out of both.
    """
    tasks = train_split(cfg.corpus_size, seed=cfg.seed, mix=cfg.mix)
    drills = arithmetic_drills(
        int(cfg.corpus_size * cfg.drill_ratio), seed=cfg.seed, facts_per_drill=cfg.facts_per_drill
    )
    # A sample is plenty for the vocabulary (the templates repeat) and saves seconds of the budget.
    texts = [format_prompt(t["question"]) + render_sequential(t) for t in tasks[:10_000]]
    tokenizer = build_tokenizer(texts + drills[:2_000])
    return tokenizer, encode_corpus(tokenizer, tasks) + encode_drills(tokenizer, drills)


def _lr_at(progress: float, step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    model: LlamaForCausalLM,
    tokenizer,
    examples: list[Example],
    cfg: PretrainConfig,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train on ``examples`` until the time (or step) budget is spent; returns the loop's figures.

    The cosine schedule runs on *progress*, the larger of elapsed/budget and step/max_steps, so a
    wall-clock budget still ends at the low learning rate whatever the machine's speed.
    """
    torch.set_num_threads(cfg.threads)
    rng = random.Random(f"pretrain/{cfg.seed}")
    model.to(cfg.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "norm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    budget_s = cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    pad_id = tokenizer.pad_token_id
    model.train()

    def progress_now(step: int, elapsed: float) -> float:
        # With a step budget the schedule follows the steps alone, so the model does not depend on how busy
        # the machine was; the clock only stops a loop that overruns (cut_short). Without one, the clock is
        # the budget and drives the schedule.
        if cfg.max_steps:
            return step / cfg.max_steps
        return elapsed / budget_s

    step, tokens, epochs, loss_ema, cut_short = 0, 0, 0, None, False
    started = time.monotonic()
    done = False
    while not done:
        epochs += 1
        for ids, labels in length_grouped_batches(examples, cfg.batch_size, pad_id, rng):
            elapsed = time.monotonic() - started
            progress = progress_now(step, elapsed)
            if progress >= 1.0:
                done = True
                break
            if cfg.max_steps and elapsed >= budget_s:
                done = cut_short = True
                break
            lr = _lr_at(progress, step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, labels = ids.to(cfg.device), labels.to(cfg.device)
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens += int((ids != pad_id).sum())
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            if on_progress is not None and step % cfg.log_every == 0:
                elapsed = time.monotonic() - started
                progress = progress_now(step, elapsed)
                on_progress(
                    {
                        "step": step,
                        "loss": round(loss_ema, 4),
                        "lr": lr,
                        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
                        "elapsed_s": round(elapsed, 1),
                        "progress": round(min(progress, 1.0), 4),
                        "eta_s": round(elapsed * (1 - progress) / progress, 1) if progress > 0 else None,
                    }
                )
    elapsed = time.monotonic() - started
    model.eval()
    return {
        "steps": step,
        "epochs": epochs,
        "tokens": tokens,
        "train_s": round(elapsed, 1),
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "final_loss": round(loss_ema, 4) if loss_ema is not None else None,
        # True when the wall-clock backstop stopped a step-budgeted loop: not the recipe's model.
        "cut_short": cut_short,
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model: LlamaForCausalLM, tokenizer, out_dir: Path) -> str:
    """Save weights (safetensors), config and tokenizer; returns the sha256 of model.safetensors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5 writes safetensors only (its save_pretrained has no pickle path left to opt out of).
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    pickles = sorted(p.name for p in out_dir.glob("*.bin"))
    if pickles:
        raise RuntimeError(f"pickled weights written to {out_dir}: {pickles}; only safetensors are allowed")
    return sha256_file(out_dir / "model.safetensors")


def bootstrap(
    out_dir: str | Path,
    *,
    size: str = "demo",
    cfg: PretrainConfig | None = None,
    eval_per_tier: int = 100,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the tokenizer and model, pretrain, evaluate on held-out GSM-lite, save; returns bootstrap.json.

    Every phase reports through ``on_progress`` (``{"phase": ...}`` plus the loop's figures), so a
    stage worker can forward them as events.
    """
    cfg = cfg or PretrainConfig()
    out = Path(out_dir)
    emit = on_progress or (lambda _event: None)
    started = time.monotonic()
    torch.set_num_threads(cfg.threads)

    # Phases 1-2: training corpus and the tokenizer trained on it.
    emit({"phase": "corpus", "message": f"generating {cfg.corpus_size} training problems and drills"})
    tokenizer, examples = build_corpus(cfg)

    # Phase 3: model and the time-boxed pretraining loop.
    model = make_model(len(tokenizer), size, tokenizer, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    emit({"phase": "pretrain", "message": f"{size} model, {n_params} parameters", "params": n_params})
    loop = pretrain(model, tokenizer, examples, cfg, on_progress=lambda ev: emit({"phase": "pretrain", **ev}))

    # Phase 4: held-out accuracy (greedy) on the fixed evaluation split.
    emit({"phase": "evaluate", "message": f"greedy on {eval_per_tier} held-out problems per tier"})
    accuracy = greedy_accuracy(model, tokenizer, n_per_tier=eval_per_tier) if eval_per_tier > 0 else {}

    # Phase 5: save and fingerprint.
    sha = save_model(model, tokenizer, out)

    record = {
        "size": size,
        "params": n_params,
        "vocab_size": len(tokenizer),
        "seed": cfg.seed,
        "minutes": cfg.minutes,
        **loop,
        "heldout_accuracy": accuracy,
        "eval_per_tier": eval_per_tier,
        "model_sha256": sha,
        "total_s": round(time.monotonic() - started, 1),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("minutes", "seed")},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "bootstrap.json").write_text(json.dumps(record, indent=2) + "\n")
    emit({"phase": "done", "message": f"saved to {out}", "heldout_accuracy": accuracy})
    return record


def _print_progress(event: dict[str, Any]) -> None:
    if "step" in event:
        eta = event.get("eta_s")
        print(
            f"step {event['step']:>5}  loss {event['loss']:.4f}  {event['tokens_per_s']:>8.0f} tok/s  "
            f"ETA {eta if eta is not None else '?'} s",
            file=sys.stderr,
        )
    elif "message" in event:
        print(f"[{event['phase']}] {event['message']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pr1d.train.model", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("bootstrap", help="build + pretrain the tiny agent model")
    boot.add_argument("--out", required=True, help="output folder (created)")
    boot.add_argument("--minutes", type=float, default=PretrainConfig.minutes, help="pretraining budget")
    boot.add_argument(
        "--max-steps", type=int, default=PretrainConfig.max_steps, help="step budget (0: the time budget alone)"
    )
    boot.add_argument("--seed", type=int, default=0)
    boot.add_argument("--size", choices=sorted(SIZES), default="demo")
    boot.add_argument("--corpus-size", type=int, default=PretrainConfig.corpus_size, help="training problems")
    boot.add_argument("--eval-per-tier", type=int, default=100, help="held-out problems per tier (0: skip)")
    boot.add_argument("--json", action="store_true", help="print bootstrap.json on stdout when done")
    args = parser.parse_args(argv)
    try:
        cfg = PretrainConfig(
            minutes=args.minutes, max_steps=args.max_steps or None, seed=args.seed, corpus_size=args.corpus_size
        )
    except ValueError as exc:
        parser.error(str(exc))
    record = bootstrap(
        args.out, size=args.size, cfg=cfg, eval_per_tier=args.eval_per_tier, on_progress=_print_progress
    )
    if args.json:
        json.dump(record, sys.stdout)
        sys.stdout.write("\n")
    else:
        acc = record["heldout_accuracy"]
        summary = ", ".join(f"{t} {100 * acc[t]:.0f}%" for t in TIERS if t in acc)
        print(f"bootstrap: {record['steps']} steps, {record['tokens_per_s']:.0f} tok/s; held-out greedy: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
