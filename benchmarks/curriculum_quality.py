"""Writes benchmarks/curriculum_quality.md: held-out accuracy per tier through the curriculum on the demo model.

    .venv/bin/python benchmarks/curriculum_quality.py [--quick] [--state-dir DIR]   # runs `pr1d demo` first
    .venv/bin/python benchmarks/curriculum_quality.py --from-state-dir DIR [--run N]  # a demo already run
    .venv/bin/python benchmarks/curriculum_quality.py --quick --scenario kb-dip --append  # + a row per task family
    .venv/bin/python benchmarks/curriculum_quality.py --quick --scenario kb-dip --base-seed 2 --append  # another base

It reads what the run recorded in the ledger (no number is computed here): the SFT gate's evidence (base
and SFT candidate on the same held-out GSM-lite problems, greedy), the RL stage's before/after
evaluation with its parallel-format figures, and the promotion gate's backtest comparison. The seed of
the held-out split and of the bootstrap are in the table, so anyone can reproduce it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "curriculum_quality.md"


def _stage_results(state: Path, run: int | None) -> tuple[int, dict, dict]:
    con = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    if run is None:
        row = con.execute("SELECT id FROM runs WHERE kind = 'full' ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise SystemExit(f"no full run in {state}")
        run = int(row[0])
    results = {name: json.loads(res) if res else {} for name, res in
               con.execute("SELECT name, result FROM stages WHERE run_id = ? ORDER BY seq", (run,))}
    gate_row = con.execute("SELECT state, gate FROM runs WHERE id = ?", (run,)).fetchone()
    return run, results, {"state": gate_row[0], "gate": json.loads(gate_row[1]) if gate_row[1] else {}}


def _pct(x) -> str:
    return f"{x * 100:.1f}%" if isinstance(x, int | float) else "-"


def render(state: Path, run: int | None, label: str) -> str:
    run, st, final = _stage_results(state, run)
    sft = (st.get("sft_gate") or {}).get("sft_gate") or {}
    rl = st.get("rl") or {}
    ev = rl.get("eval") or {}
    before, after = ev.get("before") or {}, ev.get("after") or {}
    boot = {}
    for p in (state / "base-models").glob("*/bootstrap.json"):
        boot = json.loads(p.read_text())
    train = (st.get("sft") or {}).get("train") or {}
    cfg = train.get("config") or {}
    rl_train = (st.get("rl") or {}).get("train") or {}
    lines = [
        "# Curriculum quality on the demo model",
        "",
        f"Written by `benchmarks/curriculum_quality.py` from run {run} of `{state}` ({label}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Held-out GSM-lite (fixed evaluation split, "
        "seed `pr1d.evaluate.gsm_lite.EVAL_SEED`; 1 in 8 arithmetic fact families never seen in training), greedy "
        "decoding. Base model: bootstrap seed "
        f"{boot.get('seed', '-')}, {boot.get('steps', '-')} steps, {boot.get('params', '-')} parameters. SFT: "
        f"{cfg.get('finetune', '-')} fine-tuning, {train.get('steps', '-')} steps of batch "
        f"{cfg.get('batch_size', '-')}, lr {cfg.get('lr', '-')}, mix {cfg.get('mix', '-')}, seed {cfg.get('seed', '-')}. "
        f"RL: {rl_train.get('steps', '-')} GRPO steps ({(rl_train.get('stop') or {}).get('reason', '-')}), "
        f"{(rl_train.get('config') or {}).get('num_generations', '-')} generations per prompt.",
        "",
        "| tier | base | after SFT | SFT uplift | RL start | after RL |",
        "|---|---|---|---|---|---|",
    ]
    base, cand = sft.get("base") or {}, sft.get("candidate") or {}
    b_acc, a_acc = before.get("accuracy") or {}, after.get("accuracy") or {}
    for tier in ("easy", "medium", "hard"):
        up = (cand.get(tier) - base.get(tier)) * 100 if tier in cand and tier in base else None
        lines.append(f"| {tier} | {_pct(base.get(tier))} | {_pct(cand.get(tier))} | "
                     f"{'' if up is None else f'{up:+.1f} pts'} | {_pct(b_acc.get(tier))} | {_pct(a_acc.get(tier))} |")
    n = sft.get("n_per_tier")
    n = sum(n.values()) if isinstance(n, dict) else n
    lines += [
        f"| overall | {_pct(sft.get('base_overall'))} | {_pct(sft.get('candidate_overall'))} | "
        f"{(sft.get('uplift_abs') or 0) * 100:+.1f} pts | {_pct(before.get('overall'))} | {_pct(after.get('overall'))} |",
        "",
        f"SFT gate: {n} problems; uplift {(sft.get('uplift_abs') or 0) * 100:+.1f} points absolute "
        f"(relative {(sft.get('uplift_rel') or 0) * 100:+.1f}%), standard error {(sft.get('stderr_abs') or 0) * 100:.1f} "
        f"points; threshold {(sft.get('threshold') or 0) * 100:+.0f} points.",
        "",
        ("After RL, parallel format on held-out answers: "
         + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in (after.get("format") or {}).items()
                     if k in ("format_adherence", "parallel_ratio", "path_diversity", "consensus_rate"))
         + f"; parallel adherence {after.get('parallel_adherence', '-')}.") if after else
        "RL did not run: the run stopped before it (below).",
        "",
    ]
    fams = sft.get("families") or {}
    if fams:
        lines += [
            "Task families with a held-out set, scored by the SFT gate next to GSM-lite (same base and candidate, the "
            "family's own grader, its KB context in the prompt; the run proceeds when GSM-lite or a family gains the "
            f"threshold and none loses more than {(sft.get('max_regression') or 0) * 100:.0f} points):",
            "",
            "| family | tier | base | after SFT | SFT uplift |",
            "|---|---|---|---|---|",
        ]
        rows = {"gsm_lite": {"base": base, "candidate": cand, "base_overall": sft.get("base_overall"),
                             "candidate_overall": sft.get("candidate_overall"), "uplift_abs": sft.get("uplift_abs")},
                **fams}
        for name, row in rows.items():
            for tier in row["base"]:
                b, c = row["base"].get(tier), row["candidate"].get(tier)
                lines.append(f"| {name} | {tier} | {_pct(b)} | {_pct(c)} | {(c - b) * 100:+.1f} pts |")
            lines.append(f"| {name} | overall | {_pct(row.get('base_overall'))} | {_pct(row.get('candidate_overall'))} | "
                         f"{(row.get('uplift_abs') or 0) * 100:+.1f} pts |")
        lines += ["", f"Carried by: {', '.join(sft.get('carried_by') or []) or 'none'}; regressed: "
                      f"{', '.join(sft.get('regressed') or []) or 'none'}.", ""]
    g = final["gate"]
    if not g.get("incumbent"):  # no promotion gate ran: the run stopped at the SFT gate (or before)
        stop = (st.get("sft_gate") or {}).get("stop_run") or {}
        lines += [f"Run ended `{final['state']}`" + (f" at the SFT gate: `{stop.get('reason')}`" if stop else "")
                  + "; no backtest or promotion gate ran.", ""]
    elif g.get("uplift"):
        u = g["uplift"]
        # older gates wrote `margin`; newer ones write the observed uplift and the bar it is held to
        margin = u.get("margin")
        if margin is None and u.get("observed") is not None and u.get("bar") is not None:
            margin = round(u["observed"] - u["bar"], 6)
        reasons = "; ".join(g.get("reasons") or [])
        lines += [
            f"Promotion gate (backtest, candidate vs model in service, {u.get('compared') or 'weighted grade'}): "
            f"**{g.get('outcome')}** — candidate {g['candidate'].get('mean')} vs {g['incumbent'].get('mean')}, "
            f"margin over the bar {margin} ({int(u.get('ci_level', 0) * 100)}% CI [{u.get('ci_low')}, "
            f"{u.get('ci_high')}], n = {g['candidate'].get('n')})" + (f"; why: {reasons}" if reasons else "")
            + f"; run ended `{final['state']}`.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-state-dir", type=Path, help="read a demo state dir instead of running the demo")
    ap.add_argument("--run", type=int, help="run id (default: the newest full run)")
    ap.add_argument("--quick", action="store_true", help="run `pr1d demo --quick`")
    ap.add_argument("--state-dir", type=Path, help="where the demo runs (default: a temporary dir)")
    ap.add_argument("--scenario", help="the demo's sim scenario (e.g. kb-dip: store questions from the KB)")
    ap.add_argument("--base-seed", type=int, default=0,
                    help="the demo's --base-seed: bootstrap seed of the base model (default 0, the demo's own)")
    ap.add_argument("--append", action="store_true",
                    help="append this run as a section of --out (e.g. a second scenario) instead of replacing it")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", help="a sentence under the section's title (how the run was made: fresh clone, ...)")
    a = ap.parse_args()
    state, label = a.from_state_dir, "an existing demo state dir"
    meta_path = state / "demo.json" if state else None
    if meta_path is not None and meta_path.is_file():  # the demo's own record of how it was started
        meta = json.loads(meta_path.read_text())
        flags = (["--quick"] if meta.get("quick") else []) + (
            ["--scenario", str(meta["scenario"])] if meta.get("scenario") not in (None, "demo") else []) + (
            ["--base-seed", str(meta["base_seed"])] if meta.get("base_seed") else [])
        label = " ".join(["`pr1d demo", *flags]) + "`, read from its state dir"
    if state is None:
        state = a.state_dir or Path(tempfile.mkdtemp(prefix="pr1-quality-"))
        cmd = [str(Path(sys.executable).parent / "pr1d"), "demo", "--exit-when-done", "--state-dir", str(state)]
        extra = (["--quick"] if a.quick else []) + (["--scenario", a.scenario] if a.scenario else []) + (
            ["--base-seed", str(a.base_seed)] if a.base_seed else [])
        label = " ".join(["`pr1d demo", *extra]) + "`"
        subprocess.run(cmd + extra, check=True)
    text = render(state, a.run, label)
    if a.note:
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\n{a.note}\n\n{rest}"
    if a.append and a.out.is_file():
        section = text.replace("# Curriculum quality on the demo model", f"## Another run: {label}", 1)
        text = a.out.read_text().rstrip("\n") + "\n\n" + section
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
