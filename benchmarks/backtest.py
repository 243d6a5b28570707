"""Backtest throughput (tasks/s): the forked engine at branch count 4 vs plain generation, in one run.

The backtest's cost is answering and grading every replayed task on both models; this times that loop
as the stage runs it (``pr1d.stages.backtest``: chunks of ``--batch-size`` prompts, each graded with
``pr1d.evaluate.grading.grade``) on the same held-out GSM-lite tasks, one model, three ways:

* ``plain``   -- greedy ``generate()`` (how a model in service without a policy is replayed);
* ``forked``  -- ``forked_generate`` under ParallelExecutionPolicy(branch_count=4) (how a candidate is
  replayed). A bootstrap model has never seen the Parallel format and opens no block by itself, so
  this measures the engine's trunk against ``generate()``;
* ``forked, block at prompt`` -- the same with every prompt ending in ``<Parallel>``, so each answer
  forks 4 paths at once: the cost of the fork itself on this model.

Then the report's statistics and picture (``summarize`` + ``render_png``) on the plain-vs-forked items.

    .venv/bin/python benchmarks/backtest.py [--model /tmp/demo_base] [--n-per-tier 40] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from pr1d.data.parallel_format import PARALLEL_OPEN, measure_batch
from pr1d.evaluate.backtest import summarize
from pr1d.evaluate.grading import grade
from pr1d.evaluate.gsm_lite import eval_split, format_prompt
from pr1d.inference.forked import forked_generate
from pr1d.inference.generate import generate, load_model
from pr1d.inference.policy import ParallelExecutionPolicy
from pr1d.stages.backtest import render_png


def answer(model, tok, prompts: list[str], engine: str, policy: ParallelExecutionPolicy, batch: int,
           max_new: int, seed: int) -> list:
    out: list = []
    for i, start in enumerate(range(0, len(prompts), batch)):
        chunk = prompts[start : start + batch]
        if engine == "plain":
            out += [c[0] for c in generate(model, tok, chunk, max_new_tokens=max_new, batch_size=batch)]
        else:
            out += forked_generate(model, tok, chunk, policy, seed=seed + i, batch_size=batch)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/demo_base", help="a bootstrap model folder (pr1d model bootstrap)")
    ap.add_argument("--n-per-tier", type=int, default=40, help="held-out GSM-lite tasks per tier")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=224)
    ap.add_argument("--branches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not (Path(a.model) / "config.json").exists():
        print(f"no model at {a.model}: build one with `pr1d model bootstrap` or pass --model", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    tasks = eval_split(a.n_per_tier)
    prompts = [format_prompt(t["question"]) for t in tasks]
    policy = ParallelExecutionPolicy(branch_count=a.branches, temperature=0.7, max_new_tokens=a.max_new_tokens)
    answer(model, tok, prompts[:4], "plain", policy, a.batch_size, a.max_new_tokens, 0)  # warm-up
    answer(model, tok, prompts[:4], "forked", policy, a.batch_size, a.max_new_tokens, 0)

    rows, graded = [], {}
    for name, engine, ps in (("plain", "plain", prompts), ("forked", "forked", prompts),
                             ("forked, block at prompt", "forked", [p + PARALLEL_OPEN for p in prompts])):
        t0 = time.perf_counter()
        comps = answer(model, tok, ps, engine, policy, a.batch_size, a.max_new_tokens, 0)
        t1 = time.perf_counter()
        # A block opened in the prompt is part of the answer: grade it with its opening tag.
        texts = [(PARALLEL_OPEN + c.text) if p.endswith(PARALLEL_OPEN) else c.text for c, p in zip(comps, ps, strict=True)]
        grades = [grade(x, t["answer"], finished=c.finished) for x, c, t in zip(texts, comps, tasks, strict=True)]
        t2 = time.perf_counter()
        graded[name] = grades
        fmt = measure_batch(texts)
        rows.append({
            "engine": name, "tasks": len(tasks), "seconds": round(t2 - t0, 2), "tasks_per_s": round(len(tasks) / (t2 - t0), 2),
            "generate_s": round(t1 - t0, 2), "grade_s": round(t2 - t1, 3),
            "new_tokens_per_s": round(sum(c.n_tokens for c in comps) / (t1 - t0), 1),
            "parallel_ratio": round(fmt.parallel_ratio, 3), "accuracy": round(sum(g.columns["correctness"] for g in grades) / len(grades), 3),
        })
    items = [{"id": t["id"], "tier": t["tier"], "source": "gsm_lite", "candidate": c.to_dict(), "incumbent": i.to_dict()}
             for t, c, i in zip(tasks, graded["forked"], graded["plain"], strict=True)]
    t0 = time.perf_counter()
    summary = summarize(items, resamples=2000)
    with tempfile.TemporaryDirectory() as tmp:
        render_png(summary, Path(tmp) / "backtest.png")
    report_s = time.perf_counter() - t0
    out = {"model": a.model, "branches": a.branches, "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
           "threads": a.threads, "rows": rows, "report_s": round(report_s, 2),
           "forked_vs_plain": round(rows[1]["tasks_per_s"] / rows[0]["tasks_per_s"], 3)}
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"model {a.model}, {len(tasks)} tasks, branch count {a.branches}, batch {a.batch_size}, {a.threads} threads")
    print(f"{'engine':<26}{'tasks/s':>9}{'gen s':>8}{'grade s':>9}{'new tok/s':>11}{'parallel':>10}{'acc':>7}")
    for r in rows:
        print(f"{r['engine']:<26}{r['tasks_per_s']:>9}{r['generate_s']:>8}{r['grade_s']:>9}{r['new_tokens_per_s']:>11}"
              f"{r['parallel_ratio']:>10}{r['accuracy']:>7}")
    print(f"forked / plain throughput: {out['forked_vs_plain']}x; statistics + picture: {out['report_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
