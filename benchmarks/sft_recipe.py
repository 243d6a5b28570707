"""SFT recipes across bootstrap seeds: held-out accuracy per tier on two evaluation splits, with the spread.

    .venv/bin/python benchmarks/sft_recipe.py --seeds 0 1 2 [--arms quick full] [--n-per-tier 50]
    .venv/bin/python benchmarks/sft_recipe.py --base DIR [--arm 'name={"max_steps":800,"lr":5e-4}']

One model proves nothing: each arm (an SFT configuration, see :data:`ARMS`) is trained on the demo base model
of every bootstrap seed given (bootstrapped with the demo's own recipe, steps-bounded, and cached under
``$PR1_CACHE_DIR/models`` like ``pr1d demo`` does), then scored greedily on two held-out splits:

- ``select``: a fresh split (seed ``SELECT_SEED``), the one recipes are *chosen* on;
- ``report``: the fixed evaluation split the SFT gate uses (``gsm_lite.EVAL_SEED``), the one they are
  *reported* on.

The records are the SFT stage's own (``curriculum_records``: generated GSM-lite training problems in the
arm's tier mix, through the dataset builder), the training is the stage's ``train_sft``. It writes the
table to ``benchmarks/sft_recipe.md`` (``--out``) with the command that made it, and a JSON of every cell
beside it.
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
SELECT_SEED = 20261203  # the split recipes are chosen on (never the gate's)

# The recipes under test. "quick" and "full" mirror pr1d.demo.SETTINGS; extra arms come from --arm.
ARMS: dict[str, dict] = {
    "quick": {},  # filled from pr1d.demo.SETTINGS at run time
    "full": {},
}


def _demo_arms() -> dict[str, dict]:
    from pr1d.demo import SETTINGS

    return {name: dict(SETTINGS[name]["sft"]) for name in ("quick", "full")}


def base_model(seed: int) -> Path:
    """The demo base model of bootstrap ``seed`` (seed 0 is the one ``pr1d demo`` uses), cached."""
    from pr1d.demo import base_model_dir, bootstrap_into

    dest = base_model_dir(seed)
    if not (dest / "bootstrap.json").is_file():
        t0 = time.monotonic()
        bootstrap_into(dest, seed=seed, log=lambda line: print(f"  [seed {seed}] {line}", file=sys.stderr))
        print(f"bootstrapped seed {seed} in {time.monotonic() - t0:.0f}s -> {dest}", file=sys.stderr)
    return dest


def score(model, tok, n_per_tier: int, seed: int) -> dict:
    """Greedy accuracy per tier and overall on the split of ``seed``, plus the cut-off rate."""
    from pr1d.evaluate.gsm_eval import evaluate_tasks
    from pr1d.evaluate.gsm_lite import eval_split
    from pr1d.train.sft import PARALLEL_EVAL_TOKENS

    report = evaluate_tasks(model, tok, eval_split(n_per_tier, seed=seed), k=0, max_new_tokens=PARALLEL_EVAL_TOKENS)
    tiers = report["tiers"]
    return {"accuracy": {t: tiers[t]["greedy"] for t in ("easy", "medium", "hard")},
            "overall": tiers["overall"]["greedy"], "finished": tiers["overall"]["finished"],
            "tokens": tiers["overall"]["tokens_per_answer"], "parallel": report["parallel"].get("parallel_ratio")}


def run_arm(base: Path, arm: dict, n_per_tier: int, work: Path) -> dict:
    import torch

    from pr1d.params import SFTParams, params_from
    from pr1d.train.sft import curriculum_records, train_sft

    torch.set_num_threads(2)
    cfg = params_from(SFTParams, {"eval_per_tier": 0, "checkpoint_every": 100_000, **arm}, "sft")
    records, _ = curriculum_records([], cfg)
    model, tok, summary = train_sft(base, records, work, cfg)
    model.eval()
    if os.environ.get("PR1_SWEEP_KEEP"):  # keep the candidate to look at its answers
        from pr1d.train.sft import save_candidate

        save_candidate(model, tok, Path(os.environ["PR1_SWEEP_KEEP"]))
    return {"train_s": summary["train_s"], "steps": summary["steps"],
            "select": score(model, tok, n_per_tier, SELECT_SEED), "report": score(model, tok, n_per_tier, _eval_seed())}


def _eval_seed() -> int:
    from pr1d.evaluate.gsm_lite import EVAL_SEED

    return EVAL_SEED


def base_scores(base: Path, n_per_tier: int) -> dict:
    import torch

    from pr1d.inference.generate import load_model

    torch.set_num_threads(2)
    model, tok = load_model(base)
    return {"select": score(model, tok, n_per_tier, SELECT_SEED), "report": score(model, tok, n_per_tier, _eval_seed())}


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def render(cells: dict, args: argparse.Namespace, command: str) -> str:
    lines = [
        "# SFT recipes across bootstrap seeds",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Greedy held-out "
        f"GSM-lite, {args.n_per_tier} problems per tier. Uplift = candidate − its own base model, in points. "
        f"`select` is a fresh split (seed {SELECT_SEED}) that recipes are chosen on; `report` is the fixed "
        "evaluation split the SFT gate uses, the one these figures are reported on. Cells accumulate across "
        "invocations in the JSON beside this file (a cell is rerun only when its arm's configuration changes or "
        "with --rerun); `train s` is wall time, on a machine that may have been shared: not a speed figure.",
        "",
        "| arm | seed | base easy/med/hard | SFT easy/med/hard (report) | uplift report | uplift select | easy Δ | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, list[float]]] = {}
    for arm, by_seed in cells["arms"].items():
        for seed, c in by_seed.items():
            b = cells["bases"][seed]
            up_r = c["report"]["overall"] - b["report"]["overall"]
            up_s = c["select"]["overall"] - b["select"]["overall"]
            easy = c["report"]["accuracy"]["easy"] - b["report"]["accuracy"]["easy"]
            s = summary.setdefault(arm, {"report": [], "select": [], "easy": []})
            s["report"].append(up_r)
            s["select"].append(up_s)
            s["easy"].append(easy)
            acc = c["report"]["accuracy"]
            bacc = b["report"]["accuracy"]
            lines.append(
                f"| {arm} | {seed} | {bacc['easy']:.0%}/{bacc['medium']:.0%}/{bacc['hard']:.0%} | "
                f"{acc['easy']:.0%}/{acc['medium']:.0%}/{acc['hard']:.0%} | {_pts(up_r)} | {_pts(up_s)} | "
                f"{_pts(easy)} | {c['train_s']:.0f} |")
    lines += ["", "| arm | seeds | uplift report: mean (min … max) | uplift select: mean (min … max) | easy Δ min |",
              "|---|---|---|---|---|"]
    for arm, s in summary.items():
        r, sel = s["report"], s["select"]
        lines.append(f"| {arm} | {len(r)} | {_pts(statistics.mean(r))} ({_pts(min(r))} … {_pts(max(r))}) | "
                     f"{_pts(statistics.mean(sel))} ({_pts(min(sel))} … {_pts(max(sel))}) | {_pts(min(s['easy']))} |")
    lines += ["", "Arms:", ""]
    lines += [f"- `{arm}`: `{json.dumps(cfg, sort_keys=True)}`" for arm, cfg in cells["arm_configs"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="bootstrap seeds of the demo base model")
    p.add_argument("--base", action="append", default=[], help="a base model folder instead of --seeds (repeatable)")
    p.add_argument("--arms", nargs="*", default=["quick"], help="arms of pr1d.demo.SETTINGS to run (quick, full)")
    p.add_argument("--arm", action="append", default=[], metavar='NAME=JSON', help="an extra arm: SFT params as JSON")
    p.add_argument("--n-per-tier", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "sft_recipe.md"))
    p.add_argument("--rerun", action="store_true", help="run cells the JSON already holds again")
    p.add_argument("--keep", help="save each arm's candidate under DIR/<arm>-<seed> (to read its answers)")
    args = p.parse_args(argv)

    configs = {k: v for k, v in _demo_arms().items() if k in args.arms}
    for spec in args.arm:
        name, sep, js = spec.partition("=")
        if not sep:
            p.error(f"--arm {spec!r}: expected NAME=JSON")
        configs[name] = json.loads(js)
    bases = {f"dir{i}": Path(b) for i, b in enumerate(args.base)} or {str(s): None for s in args.seeds}
    out_json = Path(args.out).with_suffix(".json")
    cells = json.loads(out_json.read_text()) if out_json.is_file() else {}
    cells = {"bases": cells.get("bases", {}), "arms": cells.get("arms", {}), "arm_configs": cells.get("arm_configs", {})}
    for arm, cfg in configs.items():
        if cells["arm_configs"].get(arm) not in (None, cfg):
            cells["arms"].pop(arm, None)  # the arm's configuration changed: its old cells are not its figures
    cells["arm_configs"].update(configs)
    for key, path in bases.items():
        path = path or base_model(int(key))
        if key not in cells["bases"]:
            cells["bases"][key] = base_scores(path, args.n_per_tier)
            print(f"base {key}: {json.dumps(cells['bases'][key]['report']['accuracy'])}", file=sys.stderr)
        for arm, cfg in configs.items():
            if key in cells["arms"].get(arm, {}) and cells["arm_configs"].get(arm) == cfg and not args.rerun:
                continue  # measured before with this very configuration (the JSON beside the table)
            with tempfile.TemporaryDirectory(prefix="pr1-sft-recipe-") as work:
                # One subprocess per arm: a fresh process leaves no allocator or thread state behind.
                env = dict(os.environ)
                if args.keep:
                    env["PR1_SWEEP_KEEP"] = str(Path(args.keep) / f"{arm}-{key}")
                cp = subprocess.run(
                    [sys.executable, __file__, "--_one", str(path), json.dumps(cfg), str(args.n_per_tier), work],
                    capture_output=True, text=True, env=env)
            if cp.returncode != 0:
                raise SystemExit(f"arm {arm} on {key} failed:\n{cp.stderr[-3000:]}")
            cells["arms"].setdefault(arm, {})[key] = json.loads(cp.stdout.strip().splitlines()[-1])
            c = cells["arms"][arm][key]
            print(f"{arm} on {key}: report {json.dumps(c['report']['accuracy'])} select "
                  f"{c['select']['overall']:.3f} ({c['train_s']:.0f}s)", file=sys.stderr)
            out_json.write_text(json.dumps(cells, indent=1))
    command = "python benchmarks/sft_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(render(cells, args, command))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        _, _, base, cfg, n, work = sys.argv
        print(json.dumps(run_arm(Path(base), json.loads(cfg), int(n), Path(work))))
        raise SystemExit(0)
    raise SystemExit(main())
