"""The GPU check (``scripts/gpu-check``): pr1's SFT, GRPO and generation on a ~0.5B Qwen2-shaped random model.

It runs the code the stages run (``train_sft``, ``train_grpo``, ``generate``, ``forked_generate``), not a
copy, so a machine that passes it can run the curriculum. What it prints (JSON, also ``--out DIR/gpu-check.json``):
per part the step times (median and max, seconds), tokens per second and peak memory, and ``ok``. Any failure
ends it with exit status 1 and the part that failed named.

The model is random (there is no hub here): a Qwen2 architecture of Qwen2.5-0.5B's shape (hidden 896, 24
layers, 14 heads, 2 KV heads) over pr1's own byte-level BPE tokenizer, whose vocabulary is small, so it has
about 0.36B parameters instead of 0.49B. Its answers are noise: the check measures that the path runs and how
fast, not accuracy. ``--smoke`` shrinks everything to run on a CPU in about a minute (tests/test_gpu_check.py).

Also checked: a model from elsewhere (``foreign``): the same shape over its *own* tokenizer with a ChatML
template and no Parallel tags, resolved by Hub id from a local Hub cache, LoRA SFT that adds the tags (bf16),
and the forked engine on the candidate; and, when vLLM is installed, GRPO with its rollouts through TRL's vLLM
integration (``rl_vllm``, colocate mode; skipped and said so otherwise). SFT and RL run in bf16 on a GPU
(``bf16`` on both stages' parameters).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# Qwen2.5-0.5B's shape; the smoke shape is small enough for 2 CPU cores.
SHAPES = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2},
    "smoke": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2},
}
# (SFT steps, SFT batch, RL steps, generation prompts per tier) per mode: the GPU budget is 8 minutes.
BUDGET = {"0.5b": (60, 16, 6, 32), "smoke": (4, 4, 2, 2)}  # 0.5b: 173 s on one H200


def build_model(out: Path, shape: str, seed: int = 0) -> dict[str, Any]:
    """A random Qwen2-shaped model and pr1's tokenizer, saved to ``out``; returns its size."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pr1d.evaluate.gsm_lite import format_prompt, render_sequential, train_split
    from pr1d.train.tokenizer import build_tokenizer, save_tokenizer

    tasks = train_split(2000, seed=seed)
    tokenizer = build_tokenizer([format_prompt(t["question"]) + render_sequential(t) for t in tasks])
    config = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **SHAPES[shape],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return {"architecture": "Qwen2ForCausalLM", "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), **SHAPES[shape]}


class Timer:
    """Seconds between consecutive ``progress`` events of a trainer: one per optimizer step."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.steps: list[float] = []
        self.metrics: dict[str, float] = {}

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress":
            now = time.monotonic()
            self.steps.append(now - self.last)
            self.last = now
        elif kind == "metric":
            self.metrics[fields["name"]] = float(fields["value"])

    def summary(self) -> dict[str, Any]:
        # The first step carries compilation and allocator warm-up: reported apart from the median.
        return {"steps": len(self.steps), "first_step_s": round(self.steps[0], 3) if self.steps else None,
                "median_step_s": round(statistics.median(self.steps[1:] or self.steps), 3) if self.steps else None,
                "max_step_s": round(max(self.steps), 3) if self.steps else None}


def peak_memory(device: str) -> dict[str, float]:
    import torch

    if device == "cuda":
        out = {"gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        torch.cuda.reset_peak_memory_stats()
        return out
    return {"process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_sft(model_dir: Path, work: Path, shape: str, device: str) -> tuple[dict[str, Any], Path]:
    from pr1d.params import SFTParams
    from pr1d.train.sft import curriculum_records, save_candidate, train_sft

    steps, batch, _, _ = BUDGET[shape]
    cfg = SFTParams(max_steps=steps, batch_size=batch, n_train=steps * batch, eval_per_tier=0,
                    checkpoint_every=10**6, bf16=device == "cuda", threads=2)
    records, _ = curriculum_records([], cfg)
    timer = Timer()
    t0 = time.monotonic()
    model, tok, summary = train_sft(model_dir, records, work / "sft-ckpt", cfg, on_event=timer,
                                    use_cpu=device == "cpu")
    elapsed = time.monotonic() - t0
    out = work / "sft-candidate"
    save_candidate(model, tok, out)
    part = {"ok": True, "seconds": round(elapsed, 1), "precision": "bf16" if cfg.bf16 else "fp32",
            "tokens_per_s": round(timer.metrics.get("sft.tokens_per_s", 0.0), 1), **timer.summary(),
            **peak_memory(device)}
    del model
    return part, out


def run_rl(model_dir: Path, work: Path, shape: str, device: str, use_vllm: bool = False) -> dict[str, Any]:
    from pr1d.params import RLParams
    from pr1d.train.grpo import train_grpo

    _, _, steps, _ = BUDGET[shape]
    cfg = RLParams(max_steps=steps, explore_verify=False, checkpoint_every=10**6, eval_per_tier=0, threads=2,
                   max_completion_length=64 if shape == "smoke" else 256, curriculum={"tiers": ["easy"]},
                   bf16=device == "cuda", use_vllm=use_vllm)
    timer = Timer()
    t0 = time.monotonic()
    train_grpo(model_dir, work / ("rl-vllm-ckpt" if use_vllm else "rl-ckpt"), cfg, on_event=timer,
               use_cpu=device == "cpu")
    elapsed = time.monotonic() - t0
    completions = steps * cfg.generation_batch
    return {"ok": True, "seconds": round(elapsed, 1), "precision": "bf16" if cfg.bf16 else "fp32",
            "generation": "vLLM (TRL use_vllm, colocate)" if use_vllm else "transformers generate",
            "completions": completions, "completions_per_s": round(completions / elapsed, 2), **timer.summary(),
            **peak_memory(device)}


def run_generation(model_dir: Path, shape: str, device: str) -> dict[str, Any]:
    """What the backtest does with a model: plain and forked Parallel generation over held-out prompts."""
    from pr1d.evaluate.gsm_lite import eval_split, format_prompt
    from pr1d.inference.forked import forked_generate
    from pr1d.inference.generate import generate, load_model
    from pr1d.inference.policy import ParallelExecutionPolicy

    _, _, _, per_tier = BUDGET[shape]
    model, tok = load_model(model_dir, device=device)
    prompts = [format_prompt(t["question"]) for t in eval_split(per_tier)]
    out: dict[str, Any] = {"ok": True, "prompts": len(prompts)}
    t0 = time.monotonic()
    plain = [c[0] for c in generate(model, tok, prompts, max_new_tokens=128, batch_size=32)]
    dt = time.monotonic() - t0
    out["plain"] = {"seconds": round(dt, 2), "tokens_per_s": round(sum(c.n_tokens for c in plain) / dt, 1)}
    policy = ParallelExecutionPolicy()
    t0 = time.monotonic()
    forked = forked_generate(model, tok, prompts, policy, seed=0, batch_size=16)
    dt = time.monotonic() - t0
    out["forked"] = {"seconds": round(dt, 2), "tokens_per_s": round(sum(c.n_tokens for c in forked) / dt, 1),
                     "branch_count": policy.branch_count}
    out.update(peak_memory(device))
    return out


def run_foreign(work: Path, shape: str, device: str) -> dict[str, Any]:
    """A model from elsewhere: own tokenizer, chat template, no tags; by Hub id from a local cache; LoRA SFT."""
    import os

    from pr1d.data.parallel_format import TAGS
    from pr1d.evaluate.gsm_lite import eval_split, format_prompt
    from pr1d.inference.forked import forked_generate
    from pr1d.inference.generate import load_model
    from pr1d.inference.policy import ParallelExecutionPolicy
    from pr1d.inference.source import resolve_model
    from pr1d.params import SFTParams
    from pr1d.train.sft import curriculum_records, save_candidate, train_sft
    from pr1d.train.stand_in import HUB_ID, build_foreign_qwen2, place_in_hub_cache

    info = build_foreign_qwen2(work / "foreign-built", shape=SHAPES[shape])
    cache = work / "hub-cache"
    place_in_hub_cache(work / "foreign-built", cache)
    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(cache)
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_CACHE = str(cache)
        base = resolve_model(HUB_ID, local_files_only=True)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_CACHE", None)
        else:
            os.environ["HF_HUB_CACHE"] = old
    steps, batch, _, per_tier = BUDGET[shape]
    cfg = SFTParams(max_steps=steps, batch_size=batch, n_train=steps * batch, eval_per_tier=0, finetune="lora",
                    checkpoint_every=10**6, bf16=device == "cuda", threads=2)
    records, _ = curriculum_records([], cfg)
    timer = Timer()
    t0 = time.monotonic()
    model, tok, _ = train_sft(base, records, work / "foreign-ckpt", cfg, on_event=timer, use_cpu=device == "cpu")
    elapsed = time.monotonic() - t0
    save_candidate(model, tok, work / "foreign-candidate")
    del model
    cand, ctok = load_model(work / "foreign-candidate", device=device)
    split = [t for t in TAGS if len(ctok.encode(t, add_special_tokens=False)) != 1]
    if split or not ctok.chat_template:
        raise RuntimeError(f"foreign candidate: tags split {split}, chat template kept: {bool(ctok.chat_template)}")
    prompts = [format_prompt(t["question"]) for t in eval_split(per_tier)]
    t1 = time.monotonic()
    forked = forked_generate(cand, ctok, prompts, ParallelExecutionPolicy(), seed=0, batch_size=16)
    gen_s = time.monotonic() - t1
    return {"ok": True, "model": info, "resolved_from": HUB_ID, "finetune": "lora", "seconds": round(elapsed, 1),
            "precision": "bf16" if cfg.bf16 else "fp32", "tags_added": len(ctok) - info["vocab_size"],
            "tokens_per_s": round(timer.metrics.get("sft.tokens_per_s", 0.0), 1), **timer.summary(),
            "forked_tokens_per_s": round(sum(c.n_tokens for c in forked) / gen_s, 1), **peak_memory(device)}


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shape on the CPU: the same code path, no GPU needed")
    p.add_argument("--out", type=Path, help="keep the models here and write gpu-check.json (default: a temp dir)")
    args = p.parse_args(argv)

    import torch

    shape = "smoke" if args.smoke else "0.5b"
    if shape == "0.5b" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False); "
              "`scripts/gpu-check --smoke` runs the same path on the CPU", file=sys.stderr)
        return 2
    device = "cuda" if shape == "0.5b" else "cpu"
    torch.set_num_threads(2)
    work = args.out or Path(tempfile.mkdtemp(prefix="pr1-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"shape": shape, "device": device, "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    part = "model"
    started = time.monotonic()
    try:
        report["model"] = build_model(work / "base", shape)
        part = "sft"
        report["sft"], candidate = run_sft(work / "base", work, shape, device)
        part = "rl"
        report["rl"] = run_rl(candidate, work, shape, device)
        part = "generation"
        report["generation"] = run_generation(candidate, shape, device)
        part = "foreign"
        report["foreign"] = run_foreign(work, shape, device)
        part = "rl_vllm"
        if device == "cuda" and vllm_installed():
            report["rl_vllm"] = run_rl(candidate, work, shape, device, use_vllm=True)
        else:
            report["rl_vllm"] = {"ok": True, "skipped": "no GPU" if device != "cuda" else "vllm is not installed"}
        report["ok"] = True
    except Exception as e:  # the check's whole point: name the part that failed, then exit non-zero
        traceback.print_exc()
        report[part] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report["ok"] = False
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        (args.out / "gpu-check.json").write_text(text + "\n")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if not report["ok"]:
        print(f"gpu-check: FAILED in {part}: {report[part]['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
