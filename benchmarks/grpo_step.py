"""GRPO step time: the rl stage's trainer vs a minimal raw-TRL GRPO script, same model, data, config and rewards.

    .venv/bin/python benchmarks/grpo_step.py [--model DIR] [--steps 12] [--reps 3] [--json OUT]

Two arms, each in its own subprocess, interleaved ``--reps`` times (a b a b ...):

(a) ``stage``: :func:`pr1d.train.grpo.build_trainer` as the ``rl`` stage runs it: ParallelRLTrainer (problems
    drawn at generation time, correctness and format KPIs measured per step), the event callback, the
    curriculum bookkeeping and the stop criteria. One tier (easy) and no explore/verify, because raw TRL
    has neither: what is left is what our orchestration costs.
(b) ``raw_trl``: ``GRPOTrainer`` over a ``datasets.Dataset`` holding exactly the problems the stage draws,
    in its order (``shuffle_dataset=False``), with the same ``GRPOConfig`` values and the same reward
    functions (:func:`pr1d.train.rewards.make_reward_funcs`), and no callbacks of ours.

With the same seed both arms sample the same completions (the script checks: the per-step rewards of
the two arms must be equal), so the generation work is identical and the difference is orchestration.
Step time is measured between consecutive ``on_step_end`` calls (a timing callback both arms carry), step
1 excluded (warm-up), as wall time and as the process's CPU time. On a machine shared with other work
both swing by several times for the same step (other processes take the cores; torch's waiting threads
spin and bill CPU time while they wait), so the table reports, per arm over all steps of all reps, the
minimum (the step least disturbed: the cost of the work itself), the 25th percentile and the median.
The target is judged on the minimum and the 25th percentile. Torch runs one thread (``BENCH_THREADS``,
default 1): with two, a contended machine made the same step cost 2 to 17 s of CPU.

Because end-to-end step times on a shared machine are that noisy, the stage arm also times its own code
directly: the problem draw, the phase switch, the per-step observation (decode, grading for the
curriculum, format KPIs) and the event callback, summed per step (``own_s_per_step``). That, over the
step time, is what our orchestration costs, independent of how busy the machine was.
Target: (a) within 5% of (b).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("stage", "raw_trl")


def stage_config(steps: int, max_len: int, threads: int):
    from pr1d.params import RLParams

    return RLParams(max_steps=steps, explore_verify=False, max_completion_length=max_len, threads=threads,
                         checkpoint_every=10**6, eval_per_tier=0, curriculum={"tiers": ["easy"]})


def worker(arm: str, model: str, steps: int, max_len: int, out: str) -> None:
    """One arm in this process; writes {step_times, rewards} to ``out``."""
    import torch
    from transformers import TrainerCallback

    from pr1d.train.grpo import CurriculumRun, build_trainer, grpo_args, tier_pools

    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    cfg = stage_config(steps, max_len, threads)
    ckpt = tempfile.mkdtemp(prefix=f"grpobench-{arm}-")

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.stamps:
                self.stamps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append((time.perf_counter(), time.process_time()))

    clock = Clock()
    own = [0.0]  # seconds spent in our own code (stage arm)

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                own[0] += time.perf_counter() - t0

        return wrapper

    if arm == "stage":
        trainer, callback = build_trainer(model, ckpt, cfg, on_event=lambda _k, _f: None, use_cpu=True)
        trainer._observe = timed(trainer._observe)
        trainer.apply_phase = timed(trainer.apply_phase)
        trainer.curriculum.draw = timed(trainer.curriculum.draw)
        for name in ("on_step_end", "on_log", "on_save"):
            setattr(callback, name, timed(getattr(callback, name)))
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOTrainer

        from pr1d.train.rewards import make_reward_funcs

        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        m = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, use_kernels=False)
        # The problems the stage draws, step by step, once each: RepeatSampler (no shuffle) repeats each
        # num_generations times, in this order.
        cur = CurriculumRun(cfg, tier_pools(("easy",), cfg.tier_pool, cfg.seed))
        rows = []
        for step in range(1, steps + 1):
            rows += cur.draw(step, cfg.generation_batch, cfg.num_generations)[:: cfg.num_generations]
        args = grpo_args(cfg, ckpt, use_cpu=True)
        trainer = GRPOTrainer(model=m, reward_funcs=list(make_reward_funcs(cfg.reward_params(), tok)), args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tok)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.add_callback(clock)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    pairs = list(zip(clock.stamps, clock.stamps[1:], strict=False))
    Path(out).write_text(json.dumps({"step_times": [b[0] - a[0] for a, b in pairs],
                                     "step_cpu": [b[1] - a[1] for a, b in pairs], "rewards": rewards,
                                     "own_s_per_step": own[0] / max(1, len(rewards))}))


def ensure_model(path: str | None) -> str:
    """``path``, else the bootstrap demo model if one was built, else a randomly initialised demo-size model."""
    if path:
        return path
    if Path("/tmp/demo_base/model.safetensors").is_file():
        return "/tmp/demo_base"
    from benchmarks.common import random_demo_model

    return random_demo_model("grpobench-model-")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: /tmp/demo_base, else a random demo-size model)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per arm and rep")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the two arms")
    ap.add_argument("--max-len", type=int, default=64, help="max_completion_length")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", nargs=3, metavar=("ARM", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.steps, a.max_len, a.worker[2])
        return 0
    model = ensure_model(a.model)
    tmp = Path(tempfile.mkdtemp(prefix="grpobench-"))
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for rep in range(a.reps):
        for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
            out = tmp / f"{arm}-{rep}.json"
            subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--max-len", str(a.max_len),
                            "--worker", arm, model, str(out)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[arm].append(json.loads(out.read_text()))
            r = results[arm][-1]
            print(f"rep {rep} {arm:8s} median step {statistics.median(r['step_times'][1:]):.3f} s wall, "
                  f"{statistics.median(r['step_cpu'][1:]):.3f} s CPU", file=sys.stderr)
    def stats(key: str) -> dict[str, dict[str, float]]:
        out = {}
        for arm, rs in results.items():
            xs = sorted(t for r in rs for t in r[key][1:])
            out[arm] = {"min": xs[0], "p25": xs[len(xs) // 4], "median": statistics.median(xs)}
        return out

    wall, cpu = stats("step_times"), stats("step_cpu")
    same = all(abs(x - y) < 1e-6 for s, r in zip(results["stage"], results["raw_trl"], strict=True)
               for x, y in zip(s["rewards"], r["rewards"], strict=True))
    ratios = {f"{kind} {q}": d["stage"][q] / d["raw_trl"][q] for kind, d in (("wall", wall), ("cpu", cpu))
              for q in ("min", "p25", "median")}
    print(f"{'s/step':10s} " + " ".join(f"{arm + ' ' + q:>15s}" for arm in ARMS for q in ("min", "p25", "median")))
    for kind, d in (("wall", wall), ("CPU", cpu)):
        print(f"{kind:10s} " + " ".join(f"{d[arm][q]:15.3f}" for arm in ARMS for q in ("min", "p25", "median")))
    own = statistics.median(r["own_s_per_step"] for r in results["stage"])
    own_share = own / wall["stage"]["min"]
    print("stage / raw_trl: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + f"  (target <= 1.05 on min and p25); same completions in both arms: {same}")
    print(f"stage's own code: {own * 1000:.1f} ms per step = {own_share:.2%} of the fastest stage step")
    if a.json:
        Path(a.json).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "stage_over_raw": ratios,
                                            "own_s_per_step": own, "own_share_of_min_step": own_share,
                                            "same_rewards": same,
                                            "runs": results, "steps": a.steps, "reps": a.reps, "model": model,
                                            "max_completion_length": a.max_len}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
