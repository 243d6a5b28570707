"""Does RL earn its place? The demo's RL stage against an SFT continuation of the same wall-clock time.

    .venv/bin/python benchmarks/rl_control.py --seeds 0 1 2 [--rl '{"max_steps": 120}'] [--n-per-tier 50]

For each bootstrap seed of the demo base model (cached like ``pr1d demo`` caches it):

1. ``sft``: the full demo's SFT recipe (``pr1d.demo.SETTINGS["full"]["sft"]``) on the base model;
2. ``rl``: the full demo's RL stage settings (``SETTINGS["full"]["rl"]``, the daemon's default ``[rewards]``)
   from that SFT candidate, timed;
3. ``sft+``: the control. The same SFT recipe continued from the SFT candidate on *fresh* generated problems
   (another data seed) for as many optimizer steps as fit in the RL arm's wall time, at the first SFT's
   measured seconds per step. Equal compute, measured as the time the machine gave each arm;
4. ``rl kept``: what the rl stage would hand on with ``keep_better`` (its choice, made on the stage's own
   selection split, :func:`pr1d.evaluate.selection.selection_split`).

Every model is scored greedily on two held-out splits: ``select`` (seed ``sft_recipe.SELECT_SEED``) and
``report`` (the fixed split the gates score). The table goes to ``benchmarks/rl_control.md`` and every cell
to the JSON beside it; a seed already measured with the same settings is not run again (``--rerun``).
Each arm trains in its own subprocess; run nothing else on the machine meanwhile (2 cores: the time
matching is only fair when both arms see the same machine).
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

from benchmarks.sft_recipe import SELECT_SEED, _eval_seed, base_model, score  # noqa: E402


def _settings() -> tuple[dict, dict]:
    from pr1d.demo import SETTINGS

    return dict(SETTINGS["full"]["sft"]), dict(SETTINGS["full"]["rl"])


def _scores(model, tok, n: int) -> dict:
    return {"select": score(model, tok, n, SELECT_SEED), "report": score(model, tok, n, _eval_seed())}


def one_seed(base: Path, sft_cfg: dict, rl_cfg: dict, n: int, work: Path) -> dict:
    """Every arm on one base model; returns their scores and timings."""
    import torch

    from pr1d.config import Config
    from pr1d.inference.generate import load_model
    from pr1d.params import RLParams, SFTParams, params_from
    from pr1d.stages.rl import choose_candidate
    from pr1d.train.grpo import copy_policy, train_grpo
    from pr1d.train.sft import curriculum_records, evaluate_model, save_candidate, train_sft

    torch.set_num_threads(2)
    out: dict = {}
    m, t = load_model(base)
    out["base"] = _scores(m, t, n)

    # 1. SFT, the demo's recipe.
    cfg = params_from(SFTParams, {"eval_per_tier": 0, "checkpoint_every": 100_000, **sft_cfg}, "sft")
    records, _ = curriculum_records([], cfg)
    t0 = time.monotonic()
    model, tok, summary = train_sft(base, records, work / "sft-ckpt", cfg)
    out["sft_s"] = time.monotonic() - t0
    sft_dir = work / "sft"
    save_candidate(model, tok, sft_dir)
    copy_policy(base, sft_dir)
    model.eval()
    out["sft"] = _scores(model, tok, n)
    s_per_step = summary["train_s"] / max(1, summary["steps"])
    del model

    # 2. RL from the SFT candidate, the demo's stage settings and the daemon's default rewards.
    # The daemon's [rewards] under the arm's own reward keys (--rl '{"rewards": {"format_weight": 0}}'), as the rl
    # stage layers them.
    rewards = {**Config().rewards.model_dump(mode="json"), **rl_cfg.get("rewards", {})}
    rcfg = params_from(RLParams, {**rl_cfg, "rewards": rewards, "checkpoint_every": 100_000}, "rl")
    t0 = time.monotonic()
    model, tok, rsum = train_grpo(sft_dir, work / "rl-ckpt", rcfg, use_cpu=True)
    out["rl_s"] = time.monotonic() - t0
    out["rl_steps"] = rsum["steps"]
    model.eval()
    out["rl"] = _scores(model, tok, n)
    # What the stage would keep: its own check, on the selection split, at the stage's eval_per_tier.
    if rcfg.eval_per_tier:
        after = evaluate_model(model, tok, rcfg.eval_per_tier, split="select")
        del model
        m, t = load_model(sft_dir)
        before = evaluate_model(m, t, rcfg.eval_per_tier, split="select")
        keep, why = choose_candidate(before, after, rcfg.keep_max_tier_drop)
        out["rl_kept"] = {"keep": keep, "why": why}

    # 3. The control: SFT continued for the RL arm's wall time, on fresh problems.
    steps = max(1, round(out["rl_s"] / s_per_step))
    ccfg = params_from(SFTParams, {"eval_per_tier": 0, "checkpoint_every": 100_000, **sft_cfg,
                                   "max_steps": steps, "seed": int(sft_cfg.get("seed", 0)) + 1}, "sft+")
    crecords, _ = curriculum_records([], ccfg)
    t0 = time.monotonic()
    model, tok, csum = train_sft(sft_dir, crecords, work / "cont-ckpt", ccfg)
    out["cont_s"] = time.monotonic() - t0
    out["cont_steps"] = csum["steps"]
    model.eval()
    out["sft+"] = _scores(model, tok, n)
    return out


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _tiers(s: dict) -> str:
    a = s["accuracy"]
    return f"{a['easy']:.0%}/{a['medium']:.0%}/{a['hard']:.0%}"


def render(cells: dict, command: str, n: int) -> str:
    lines = [
        "# RL against an SFT continuation of equal wall time",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Greedy held-out "
        f"GSM-lite, {n} problems per tier; accuracy easy/medium/hard on the `report` split (the gates' fixed "
        f"split), differences in points overall on `report` and on `select` (seed {SELECT_SEED}). `sft+` is "
        "the SFT candidate trained on for the RL arm's wall time with the same recipe on fresh problems. "
        f"Settings: `{json.dumps(cells['settings'], sort_keys=True)}`.",
        "",
        "| seed | base | SFT | RL | SFT+ (control) | RL − SFT report / select | SFT+ − SFT report / select "
        "| RL − SFT+ report / select | stage keeps RL? | RL s (steps) | SFT+ s (steps) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    diffs: dict[str, list[float]] = {"rl": [], "cont": [], "rl_vs_cont": []}
    for seed, c in sorted(cells["seeds"].items()):
        def d(a: str, b: str, split: str, c: dict = c) -> float:
            return c[a][split]["overall"] - c[b][split]["overall"]

        diffs["rl"].append(d("rl", "sft", "report"))
        diffs["cont"].append(d("sft+", "sft", "report"))
        diffs["rl_vs_cont"].append(d("rl", "sft+", "report"))
        kept = c.get("rl_kept") or {}
        lines.append(
            f"| {seed} | {_tiers(c['base']['report'])} | {_tiers(c['sft']['report'])} | {_tiers(c['rl']['report'])} | "
            f"{_tiers(c['sft+']['report'])} | {_pts(d('rl', 'sft', 'report'))} / {_pts(d('rl', 'sft', 'select'))} | "
            f"{_pts(d('sft+', 'sft', 'report'))} / {_pts(d('sft+', 'sft', 'select'))} | "
            f"{_pts(d('rl', 'sft+', 'report'))} / {_pts(d('rl', 'sft+', 'select'))} | "
            f"{'yes' if kept.get('keep') else 'no' if kept else '-'} | {c['rl_s']:.0f} ({c['rl_steps']}) | "
            f"{c['cont_s']:.0f} ({c['cont_steps']}) |")
    if cells["seeds"]:
        lines += ["", "| difference (report split, points) | mean | min | max |", "|---|---|---|---|"]
        for key, label in (("rl", "RL − SFT"), ("cont", "SFT+ − SFT"), ("rl_vs_cont", "RL − SFT+")):
            xs = diffs[key]
            lines.append(f"| {label} | {_pts(statistics.mean(xs))} | {_pts(min(xs))} | {_pts(max(xs))} |")
    lines += ["", "The stage's keep decisions, verbatim:", ""]
    lines += [f"- seed {seed}: {(c.get('rl_kept') or {}).get('why', '-')}" for seed, c in sorted(cells["seeds"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="bootstrap seeds of the demo base model")
    p.add_argument("--sft", default="{}", help="SFT params as JSON over the full demo's (a smoke run: '{\"max_steps\": 20}')")
    p.add_argument("--rl", default="{}", help="RL stage params as JSON over the full demo's (e.g. '{\"lr\": 1e-5}')")
    p.add_argument("--n-per-tier", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "rl_control.md"))
    p.add_argument("--rerun", action="store_true", help="measure seeds the JSON already holds again")
    args = p.parse_args(argv)
    sft_cfg, rl_cfg = _settings()
    sft_cfg.update(json.loads(args.sft))
    rl_cfg.update(json.loads(args.rl))
    settings = {"sft": sft_cfg, "rl": rl_cfg, "n_per_tier": args.n_per_tier}
    out_json = Path(args.out).with_suffix(".json")
    cells = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if cells.get("settings") != settings:
        cells = {"settings": settings, "seeds": {}}  # other settings: the old cells are not these figures
    for seed in args.seeds:
        if str(seed) in cells["seeds"] and not args.rerun:
            continue
        base = base_model(seed)
        with tempfile.TemporaryDirectory(prefix="pr1-rl-control-") as work:
            cp = subprocess.run([sys.executable, __file__, "--_one", str(base), json.dumps(sft_cfg), json.dumps(rl_cfg),
                                 str(args.n_per_tier), work], capture_output=True, text=True, env=dict(os.environ))
        if cp.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{cp.stderr[-3000:]}")
        cells["seeds"][str(seed)] = c = json.loads(cp.stdout.strip().splitlines()[-1])
        print(f"seed {seed}: sft {c['sft']['report']['overall']:.3f} rl {c['rl']['report']['overall']:.3f} "
              f"sft+ {c['sft+']['report']['overall']:.3f} (rl {c['rl_s']:.0f}s, sft+ {c['cont_s']:.0f}s)", file=sys.stderr)
        out_json.write_text(json.dumps(cells, indent=1))
        command = "python benchmarks/rl_control.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(render(cells, command, args.n_per_tier))
    print(Path(args.out).read_text() if Path(args.out).is_file() else "nothing measured")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        _, _, base, sft_cfg, rl_cfg, n, work = sys.argv
        print(json.dumps(one_seed(Path(base), json.loads(sft_cfg), json.loads(rl_cfg), int(n), Path(work))))
        raise SystemExit(0)
    raise SystemExit(main())
