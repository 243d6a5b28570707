"""Does the curriculum lift a task family that needs the knowledge base, and is retrieval what does it?

    .venv/bin/python benchmarks/kb_family.py [--seeds 0] [--train-seeds 0 1] [--steps 2000] [--top-k 1]
                                             [--kb-records 3000] [--gsm-topup 5000] [--skip-control]

The KB-facts family (pr1d/tasks/kb_facts.py) asks about a fictional store's products; the facts exist only in
the shipped pages under ``pr1d/kb/catalogue``. Per bootstrap seed (the demo's base model, cached like
``pr1d demo`` does) and per training seed, two SFT arms of equal compute:

- ``kb-on``: records of the KB-facts training products with the context the dataset stage retrieves (the
  whole shipped corpus ingested into the embedded sqlite-vec store, ``kb_contexts`` with ``[kb] top_k``),
  evaluated on the held-out products with retrieval;
- ``kb-off``: the same records and steps with no context, evaluated without retrieval (the control;
  ``--skip-control`` leaves it out when a recipe variant is read against an earlier run's control).

Both arms' records are the sim teacher's verified Parallel traces (``kb_facts.parallel_trace``, checked by the
builder's family gate), topped up with GSM-lite problems by the SFT stage's ``curriculum_records`` so arithmetic
is kept. Accuracy is greedy, per tier, on two slices of 24 held-out products each (72 easy / 48 medium / 24 hard):
the report split (products 48-72, scored by no stage, where nothing was chosen: the headline figures) and the SFT
gate's split (products 0-24, where top_k and the record count were chosen); and on the GSM-lite evaluation split
(``--gsm-per-tier``). Writes ``benchmarks/kb_family.md`` and a JSON of every cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_kb(state_dir: Path, top_k: int):
    """Both shipped corpora (the arithmetic notes and the store catalogue) in the embedded store, as
    `pr1ctl kb ingest` loads them: retrieval has to find the product's page among everything."""
    from pr1d.kb.config import KBConfig
    from pr1d.kb.discovery import create_service_discovery
    from pr1d.kb.embed import Embedder
    from pr1d.kb.factory import open_cache, open_store
    from pr1d.kb.ingest import ingest_path

    cfg = KBConfig(store="sqlite", top_k=top_k)

    async def go():
        endpoints = create_service_discovery(cfg)
        cache = open_cache(cfg, endpoints)
        embedder = Embedder(cfg.embedding_model, cache=cache)
        store = open_store(cfg, state_dir=state_dir, endpoints=endpoints, dim=embedder.dim)
        async with store:
            reports = [await ingest_path(ROOT / "pr1d" / "kb" / folder, store, embedder, cfg, cache=cache)
                       for folder in ("corpus", "catalogue")]
        cache.close()
        return reports

    report = asyncio.run(go())
    return cfg, report


def contexts(cfg, state_dir: Path, questions: list[str]) -> tuple[dict[str, str], dict]:
    from pr1d.stages.dataset import kb_contexts

    out: dict = {}
    got = kb_contexts(cfg, state_dir, sorted(set(questions)), out)
    return got, out


def kb_records(ctx: dict[str, str] | None, tasks: list[dict]) -> tuple[list[dict], dict]:
    """Verified Parallel records of ``tasks`` (training products), with or without context."""
    from pr1d.data.builder import DropReason, build_family_record
    from pr1d.tasks import kb_facts
    from pr1d.tasks.families import Families

    fam = Families.from_config({"kb_facts": {"grader": {"kind": "numeric"}}}).family("kb_facts")

    class Teacher:  # the sim's teacher, in process (the same function serves /v1/chat/completions)
        def family_completions(self, task, family, branches):
            return [kb_facts.parallel_trace(kb_facts.lookup(task.question))]

    records, drops = [], {}
    for raw in tasks:
        entry = {**raw, "transcript": kb_facts.render_sequential(raw), "final_answer": raw["answer"]}
        try:
            records.append(build_family_record(fam.task_from_entry(entry), fam, generator=Teacher(),
                                               kb_context=(ctx or {}).get(raw["question"], "")))
        except DropReason as e:
            drops[e.code] = drops.get(e.code, 0) + 1
    return records, drops


# Held-out products per split. `gate`: the SFT gate's split, on which top_k and the record count were chosen;
# `report`: products 48..72, which neither the gate nor RL's keep check (24..48) ever scores: the figures to quote.
SPLITS = {"gate": 0, "report": 48}


def split_tasks(split: str) -> list[dict]:
    from pr1d.tasks import kb_facts

    return kb_facts.heldout_slice(SPLITS[split], kb_facts.EVAL_PRODUCTS)


def score_kb(model, tok, ctx: dict[str, str] | None) -> dict:
    """Both splits; the top-level keys are the report split's."""
    gate = _score_kb(model, tok, ctx, "gate")
    return {**_score_kb(model, tok, ctx, "report"), "gate": gate}


def _score_kb(model, tok, ctx: dict[str, str] | None, split: str) -> dict:
    from pr1d.evaluate.gsm_eval import evaluate_tasks
    from pr1d.train.sft import PARALLEL_EVAL_TOKENS

    tasks = [{**t, "context": (ctx or {}).get(t["question"], "")} for t in split_tasks(split)]
    report = evaluate_tasks(model, tok, tasks, k=0, max_new_tokens=PARALLEL_EVAL_TOKENS)
    tiers = report["tiers"]
    return {"accuracy": {t: tiers[t]["greedy"] for t in ("easy", "medium", "hard")},
            "overall": tiers["overall"]["greedy"], "finished": tiers["overall"]["finished"]}


def score_gsm(model, tok, n_per_tier: int) -> dict:
    from pr1d.evaluate.gsm_eval import evaluate_tasks
    from pr1d.evaluate.gsm_lite import eval_split
    from pr1d.train.sft import PARALLEL_EVAL_TOKENS

    report = evaluate_tasks(model, tok, eval_split(n_per_tier), k=0, max_new_tokens=PARALLEL_EVAL_TOKENS)
    tiers = report["tiers"]
    return {"accuracy": {t: tiers[t]["greedy"] for t in ("easy", "medium", "hard")}, "overall": tiers["overall"]["greedy"]}


def train_arm(base: Path, records: list[dict], args, seed: int, work: Path):
    import torch

    from pr1d.params import SFTParams, params_from
    from pr1d.train.sft import curriculum_records, train_sft

    torch.set_num_threads(2)
    cfg = params_from(SFTParams, {"eval_per_tier": 0, "checkpoint_every": 100_000, "max_steps": args.steps,
                                  "batch_size": args.batch_size, "max_length": 512, "seed": seed,
                                  "n_train": len(records) + args.gsm_topup}, "sft")
    mixed, sources = curriculum_records(records, cfg)
    model, tok, summary = train_sft(base, mixed, work, cfg)
    model.eval()
    return model, tok, {"train_s": summary["train_s"], "steps": summary["steps"], "sources": sources}


def _recipe(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "skip_control"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "–"
    m = 100 * statistics.fmean(xs)
    return f"{m:.1f}" if len(xs) < 2 else f"{m:.1f} ± {100 * statistics.stdev(xs):.1f}"


def render(cells: list[dict], args, command: str, kb_info: dict) -> str:
    lines = [
        "# KB-facts: the curriculum on a family that needs the knowledge base",
        "",
        f"`{command}`",
        "",
        "Held-out products only (the sim never asks about them), greedy: the **report split** (held-out products 48-72: "
        "72 easy, 48 medium, 24 hard tasks), which neither the SFT gate (products 0-24) nor RL's keep check (24-48) "
        "scores, and on which nothing was chosen; the `gate split` column is the SFT gate's own split, on which "
        "top_k and the record count were chosen. "
        "`kb-on` trains and answers with the context the dataset stage retrieves "
        f"(pr1d/kb/corpus and pr1d/kb/catalogue in the sqlite-vec store, top_k={args.top_k}); `kb-off` trains on the same records "
        f"and steps ({args.kb_records} KB-facts records, {args.steps} steps of {args.batch_size}, GSM-lite top-up "
        f"{args.gsm_topup}) with no context. "
        f"GSM-lite: the SFT gate's evaluation split, {args.gsm_per_tier} per tier. Mean ± sd over "
        f"{len(cells)} model(s) (bootstrap seeds {sorted({c['seed'] for c in cells})} x training seeds "
        f"{sorted({c['train_seed'] for c in cells})}).",
        "",
        f"Retrieval: {kb_info}",
        "",
        "| model | KB easy | KB medium | KB hard | KB overall | KB overall, gate split | GSM-lite overall |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key, kbkey in (("base, with retrieval", "base", "kb_on"), ("base, no retrieval", "base", "kb_off"),
                              ("SFT kb-on (retrieval)", "kb_on", "kb"), ("SFT kb-off (control)", "kb_off", "kb")):
        rows = [c[key] for c in cells if key in c]
        if not rows:
            continue
        if len(rows) < len(cells):
            label += f", {len(rows)} of {len(cells)} models"
        kbs = [r[kbkey] for r in rows]
        lines.append(
            f"| {label} | " + " | ".join(_mean_sd([k["accuracy"][t] for k in kbs]) for t in ("easy", "medium", "hard"))
            + f" | {_mean_sd([k['overall'] for k in kbs])} | {_mean_sd([k['gate']['overall'] for k in kbs if 'gate' in k])}"
            f" | {_mean_sd([r['gsm']['overall'] for r in rows])} |")
    up = [c["kb_on"]["kb"]["overall"] - c["base"]["kb_on"]["overall"] for c in cells]
    ctrl = [c["kb_on"]["kb"]["overall"] - c["kb_off"]["kb"]["overall"] for c in cells if "kb_off" in c]
    gsm = [c["kb_on"]["gsm"]["overall"] - c["base"]["gsm"]["overall"] for c in cells]
    per = [f"seed {c['seed']}/{c['train_seed']}: {100 * u:+.1f}" for c, u in zip(cells, up, strict=True)]
    per_ctrl = [f"seed {c['seed']}/{c['train_seed']}: {100 * d:+.1f}"
                for c, d in zip([c for c in cells if "kb_off" in c], ctrl, strict=True)]
    per_gsm = [f"seed {c['seed']}/{c['train_seed']}: {100 * g:+.1f}" for c, g in zip(cells, gsm, strict=True)]
    lines += [
        "",
        f"- KB-facts uplift (kb-on vs base, both with retrieval): {_mean_sd(up)} points"
        + (f" (min {100 * min(up):+.1f}; {', '.join(per)})" if len(up) > 1 else ""),
        f"- retrieval's share (kb-on vs the kb-off control): {_mean_sd(ctrl)} points"
        + (f" ({', '.join(per_ctrl)})" if len(ctrl) > 1 or len(ctrl) < len(cells) else "") if ctrl else
        "- retrieval's share: not measured (--skip-control: no kb-off arm in this run)",
        f"- GSM-lite change (kb-on vs base): {_mean_sd(gsm)} points" + (f" ({', '.join(per_gsm)})" if len(gsm) > 1 else ""),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="bootstrap seeds (base models)")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="SFT seeds per base model")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gsm-topup", type=int, default=5000, help="GSM-lite records added to the KB records")
    ap.add_argument("--gsm-per-tier", type=int, default=50)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--kb-records", type=int, default=3000, help="KB-facts training tasks drawn (of 10,368)")
    ap.add_argument("--skip-control", action="store_true",
                    help="train the kb-on arm only (a recipe variant measured against an earlier run's control)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "kb_family.md")
    ap.add_argument("--previous", type=Path, action="append", default=[],
                    help="a JSON this benchmark wrote with the same settings: its cells join this run's table "
                         "(seeds run one invocation at a time)")
    args = ap.parse_args(argv)
    command = "python benchmarks/kb_family.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "gsm_topup", "gsm_per_tier", "top_k", "kb_records")}
    if args.skip_control:
        settings["skip_control"] = True
    earlier: list[dict] = []
    earlier_commands: list[str] = []
    for prev in args.previous:
        old = json.loads(prev.read_text())
        earlier_commands.append(old.get("command", str(prev)))
        # --skip-control changes which arms a cell holds, not how an arm is trained: such runs join, and the
        # control row says over how many models it was measured.
        if _recipe(old.get("settings") or {}) != _recipe(settings):
            ap.error(f"{prev}: written with other settings ({old.get('settings')}), not {settings}")
        earlier += old["cells"]
    seeds_run = {(c["seed"], c["train_seed"]) for c in earlier}
    command = "`, then `".join(dict.fromkeys([*earlier_commands, command]))

    import torch

    from benchmarks.sft_recipe import base_model
    from pr1d.inference.generate import load_model
    from pr1d.tasks import kb_facts

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="pr1-kbfam-"))
    cfg, reports = build_kb(work, args.top_k)
    import random

    train = random.Random(0).sample(kb_facts.train_split(), args.kb_records)
    questions = [t["question"] for t in train + split_tasks("gate") + split_tasks("report")]
    ctx, kb_out = contexts(cfg, work, questions)
    right = sum(ctx.get(q, "").startswith(f"[1] {kb_facts.product_in(q).slug}.md") for q in questions)
    kb_info = (f"{sum(r.files for r in reports)} files, {sum(r.chunks for r in reports)} chunks ingested; {kb_out.get('with_context')} of "
               f"{len(set(questions))} questions got context, {right} of {len(questions)} with their product's page first")
    print(kb_info, file=sys.stderr)
    on_records, on_drops = kb_records(ctx, train)
    off_records, off_drops = ([], {}) if args.skip_control else kb_records(None, train)
    print(f"records: kb-on {len(on_records)} (drops {on_drops}), kb-off {len(off_records)} (drops {off_drops})",
          file=sys.stderr)
    cells = []
    for seed in args.seeds:
        base = base_model(seed)
        model, tok = load_model(base)
        base_cell = {"kb_on": score_kb(model, tok, ctx), "kb_off": score_kb(model, tok, None),
                     "gsm": score_gsm(model, tok, args.gsm_per_tier)}
        print(f"seed {seed} base: {json.dumps(base_cell)}", file=sys.stderr)
        for ts in args.train_seeds:
            if (seed, ts) in seeds_run:
                print(f"seed {seed}/{ts}: already in --previous, skipped", file=sys.stderr)
                continue
            cell = {"seed": seed, "train_seed": ts, "base": base_cell}
            for arm, recs, arm_ctx in (("kb_on", on_records, ctx), ("kb_off", off_records, None)):
                if arm == "kb_off" and args.skip_control:
                    continue
                t0 = time.monotonic()
                m, t, info = train_arm(base, recs, args, ts, work / f"{arm}-{seed}-{ts}")
                cell[arm] = {"kb": score_kb(m, t, arm_ctx), "gsm": score_gsm(m, t, args.gsm_per_tier), **info,
                             "wall_s": round(time.monotonic() - t0, 1)}
                print(f"seed {seed}/{ts} {arm}: {json.dumps(cell[arm])}", file=sys.stderr)
            cells.append(cell)
            every = earlier + cells
            args.out.write_text(render(every, args, command, kb_info))
            written = _recipe(settings) | ({} if any("kb_off" in c for c in every) else {"skip_control": True})
            args.out.with_suffix(".json").write_text(json.dumps(
                {"command": command, "settings": written, "cells": every}, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
