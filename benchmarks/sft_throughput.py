"""SFT throughput: this stage vs a minimal raw-TRL script vs this stage padded to max length, side by side.

    .venv/bin/python benchmarks/sft_throughput.py [--model DIR|demo|qwen2-shape] [--steps 40] [--reps 2] [--json OUT]

Same model, records and hyperparameters for all three arms:

(a) ``stage``: :func:`pr1d.train.sft.train_sft` as the ``sft`` stage runs it (event callback, length-grouped
    batches with dynamic padding, completion-only loss);
(b) ``raw_trl``: a minimal ``SFTTrainer`` script over the same tokenised records and the same ``SFTConfig``
    values, with no callbacks: what our orchestration costs is (a) against (b);
(c) ``max_length``: the stage with every batch padded to ``max_length`` and no length grouping.

The records are GSM-lite Parallel traces in the demo mix, half of them with KB context of random length
in the prompt (the stage's real input), so lengths are mixed. Tokens/s counts real (non-pad) tokens.
``--model qwen2-shape``: a random-init Qwen2-architecture model (hidden 256, 4 layers) with its own
tokenizer, ChatML template and no Parallel tags; both arms add the tags the same way
(:func:`pr1d.train.tokenizer.add_parallel_tags`) and prompt through the template, so they train the same
tokens. Each arm runs in its own subprocess (peak RSS is that process's), arms interleaved ``--reps`` times;
the table reports medians. Targets: (a) within 3% of (b); (a) at least 1.3x (c).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("stage", "raw_trl", "max_length")


def _kb_snippets() -> list[str]:
    texts = []
    for f in sorted((ROOT / "pr1d" / "kb" / "corpus").rglob("*")):
        if f.is_file() and f.suffix in (".md", ".txt", ".jsonl"):
            texts.append(f.read_text(errors="replace"))
    words = " ".join(texts).split()
    return [" ".join(words[i : i + 120]) for i in range(0, max(1, len(words) - 120), 60)]


def make_records(n: int, seed: int) -> list[dict]:
    from pr1d.params import SFTParams
    from pr1d.train.sft import curriculum_records

    records, _ = curriculum_records([], SFTParams(n_train=n, seed=seed))
    rng = random.Random(seed)
    snippets = _kb_snippets()
    for r in records:
        if rng.random() < 0.5 and snippets:
            ctx = rng.choice(snippets)[: rng.randint(40, 600)]
            r["prompt"] = f"Context: {ctx}\n\n" + r["prompt"]
    return records


def worker(arm: str, model: str, records_path: str, steps: int, out: str) -> None:
    """One arm in this process; writes {tokens, seconds, tokens_per_s} to ``out``."""
    import torch

    from pr1d.params import SFTParams
    from pr1d.train.sft import encode_records, load_records, train_sft

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    records = load_records(records_path)
    cfg = SFTParams(max_steps=steps, checkpoint_every=10**6, eval_per_tier=0, n_train=1,
                         padding="max_length" if arm == "max_length" else "dynamic")
    ckpt = tempfile.mkdtemp(prefix=f"sftbench-{arm}-")
    if arm in ("stage", "max_length"):
        _model, _tok, summary = train_sft(model, records, ckpt, cfg, on_event=lambda _k, _f: None, use_cpu=True)
        seconds = summary["train_s_precise"]  # trainer.train() only: loading is the same in every arm
        tokens = summary["tokens_seen"]
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        from pr1d.train.tokenizer import add_parallel_tags

        tok = AutoTokenizer.from_pretrained(model)
        m = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, use_kernels=False)
        add_parallel_tags(m, tok)  # what any model from elsewhere needs before it can learn the format
        ds = Dataset.from_list(encode_records(tok, records, cfg.max_length))
        args = SFTConfig(
            output_dir=ckpt, max_steps=steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
            lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.0, max_grad_norm=1.0,
            logging_steps=max(1, min(10, steps // 10)), save_strategy="no", seed=cfg.seed, data_seed=cfg.seed,
            bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, completion_only_loss=True,
            max_length=cfg.max_length, padding_free=False, train_sampling_strategy="group_by_length",
            include_num_input_tokens_seen="non_padding", report_to=[], disable_tqdm=True,
        )
        trainer = SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        tokens = int(trainer.state.num_input_tokens_seen)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                                     "peak_rss_mb": rss_mb}))


def ensure_model(path: str | None) -> str:
    if path == "qwen2-shape":
        from benchmarks.common import qwen2_shape_model

        return qwen2_shape_model("sftbench-qwen2-")
    if path and path != "demo":
        return path
    from benchmarks.common import random_demo_model

    return random_demo_model("sftbench-model-")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder, or `demo` (default: a randomly initialised demo-size model), or "
                    "`qwen2-shape` (a random-init Qwen2-architecture model with its own tokenizer and chat template)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per arm (the whole run, model load included)")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions of the three arms")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", nargs=4, metavar=("ARM", "MODEL", "RECORDS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.worker[2], a.steps, a.worker[3])
        return 0
    model = ensure_model(a.model)
    tmp = Path(tempfile.mkdtemp(prefix="sftbench-"))
    recs = tmp / "records.jsonl"
    from pr1d.train.sft import write_records

    write_records(make_records(a.records, 0), recs)
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for rep in range(a.reps):
        for arm in ARMS:
            out = tmp / f"{arm}-{rep}.json"
            subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--worker", arm, model, str(recs), str(out)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[arm].append(json.loads(out.read_text()))
            print(f"rep {rep} {arm:10s} {results[arm][-1]['tokens_per_s']:8.0f} tok/s", file=sys.stderr)
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_s", "peak_rss_mb", "seconds")}
           for arm, rs in results.items()}
    ratio_ab = med["stage"]["tokens_per_s"] / med["raw_trl"]["tokens_per_s"]
    ratio_ac = med["stage"]["tokens_per_s"] / med["max_length"]["tokens_per_s"]
    print(f"{'arm':12s} {'tokens/s':>10s} {'peak RSS MB':>12s} {'run s':>7s}")
    for arm in ARMS:
        m = med[arm]
        print(f"{arm:12s} {m['tokens_per_s']:10.0f} {m['peak_rss_mb']:12.0f} {m['seconds']:7.1f}")
    print(f"(a)/(b) = {ratio_ab:.3f}  (target >= 0.97)   (a)/(c) = {ratio_ac:.2f}x  (target >= 1.3)")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model or "demo", "median": med, "runs": results,
                                            "stage_over_raw": ratio_ab,
                                            "stage_over_max_length": ratio_ac, "steps": a.steps,
                                            "reps": a.reps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
