"""The `backtest` stage: replay history and held-out GSM-lite through candidate and model in service; report.

Reads like the procedure it runs:

1. **Who is compared.** The candidate: ``params.candidate``, else the run's newest ``*-rl/candidate``,
   else ``*-sft/candidate``; it runs under its ParallelExecutionPolicy (``params.policy``, else the
   candidate folder's ``policy.json``, else the default policy) through the forked rollout engine.
   The model in service: the version the agent's registry pointer names (``<models>/<agent>/current``)
   under the policy it was registered with, else the agent's original model the daemon found under
   ``[registry] base_models_dir`` (spec ``model_in_service``), else ``params.base`` (or
   ``params.model``). A model in service without a policy (it never learnt the format) runs plain
   greedy generation.
2. **What is replayed.** The newest ``window`` tasks this agent solved in the local gradebook copy
   (``<state>/gradebook``, filled by the daemon's sync), of every task family the spec's ``[tasks]`` grades,
   recovered as the dataset builder does (GSM-lite from its transcript's chain; other families take the
   graded answer as reference, their prompt gets KB context; entries of a family with no grader are named in
   ``replay.gradebook.unknown_families``), plus ``n_per_tier`` problems per
   tier of the held-out GSM-lite split, plus the shipped guardrail exemplars (``[dataset] guardrails_dir``,
   source ``guardrail``). Every task the run trained on (its dataset's records and the SFT stage's
   ``training_tasks.jsonl``, generated top-up included) is left out, by id and by normalised question
   (``replay.excluded``). Both models see the same prompts with the same seeds.
3. **Grading.** Every answer is graded by :func:`pr1d.evaluate.grading.grade`, the function the RL
   reward uses (a task family's items with its grader's verdict as correctness; the report has a row per
   family in ``families``, next to the GSM-lite benchmark), and checked against the platform's rubric keys (spec ``compliance_keys``:
   :func:`pr1d.evaluate.backtest.rubric_checks`). The platform's critic, when reachable, is asked about
   every final answer; its verdict is the ``critic_agrees`` rubric check, not folded into the grade.
4. **Report.** ``backtest.json`` (every item, both grades, per tier/column differences with paired
   bootstrap CIs and n; :mod:`pr1d.evaluate.backtest`) and ``backtest.png`` (per-tier accuracy, per-column
   differences with CI bars), both recorded as artifacts. The gate stage reads the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..data.targeted import DEFAULT_COMPLIANCE_KEYS
from ..evaluate.backtest import REPORT_SCHEMA, RUBRIC_CHECKS, SIDES, figure_data, rubric_checks, summarize
from ..params import BacktestParams, stage_view
from ..pipeline.files import writing
from ..pipeline.spec import StageSpec
from ..tasks.families import gsm_task_dict
from .base import Worker, run_stage

REPORT_NAME = "backtest.json"
FIGURE_NAME = "backtest.png"
PNG_KEY = "pr1-backtest-figure"  # PNG text chunk holding the plotted numbers, for people and tests
TEXT_LIMIT = 4000  # characters of each answer kept in the report (enough to read a 224-token answer)


def backtest_params(spec: StageSpec) -> BacktestParams:
    """The stage's parameters: the run's params that are :class:`BacktestParams` fields over the config's
    ``[training.backtest]`` (the other run params are other stages'); ``params.model`` is the SFT stage's
    name for ``base``."""
    params = dict(spec.params)
    if params.get("base") is None and params.get("model"):
        params["base"] = params["model"]
    return stage_view(BacktestParams, params, "backtest", defaults=spec.training)


# -- 1. who is compared ---------------------------------------------------------------------------------


def find_candidate(run_dir: Path) -> Path | None:
    """The run's newest RL candidate, else its newest SFT candidate (stage folders sort by sequence)."""
    for pattern in ("*-rl/candidate", "*-sft/candidate"):
        found = sorted(p for p in run_dir.glob(pattern) if p.is_dir())
        if found:
            return found[-1]
    return None


def models_root(spec: StageSpec) -> Path | None:
    reg = spec.registry
    if reg.models_root:
        return Path(reg.models_root)
    return Path(reg.state_dir) / "models" if reg.state_dir else None


def registered_policy(state_dir: str | None, version_id: str) -> dict | None:
    """The policy a version was registered with, read from the ledger without writing to it.

    Read-only (``mode=ro``): the daemon is the ledger's only writer. None when there is no ledger or
    the version has no policy (the model in service then runs plain generation).
    """
    if not state_dir:
        return None
    path = Path(state_dir) / "ledger.sqlite"
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT meta FROM model_versions WHERE id = ?", (version_id,)).fetchone()
    finally:
        conn.close()
    meta = json.loads(row[0]) if row and row[0] else {}
    return (meta.get("policy") or None) if isinstance(meta, dict) else None


def resolve_sides(w: Worker, cfg: BacktestParams) -> dict[str, dict[str, Any]]:
    """Path, version, policy and source of the candidate and of the model in service."""
    from ..inference.policy import ParallelExecutionPolicy
    from ..registry.deploy import read_pointer
    from ..registry.versions import version_dir

    cand = Path(cfg.candidate) if cfg.candidate else find_candidate(w.run_dir)
    if cand is None or not cand.is_dir():
        raise ValueError(
            f"no candidate model: {cand or 'none found'}; set params.candidate or run an sft/rl stage before backtest"
        )
    if cfg.policy is not None:
        cand_policy, how = ParallelExecutionPolicy.from_dict(cfg.policy), "params.policy"
    elif (cand / "policy.json").is_file():
        cand_policy, how = ParallelExecutionPolicy.from_dict(json.loads((cand / "policy.json").read_text())), \
            "candidate/policy.json"
    else:
        cand_policy, how = ParallelExecutionPolicy(), "default"

    agent = w.spec.agent_id or None
    root = models_root(w.spec)
    vid = read_pointer(root, agent) if root is not None and agent else None
    if vid is not None:
        inc_path, source = version_dir(root, agent, vid), f"registry ({root}/{agent}/current)"
        raw = registered_policy(w.spec.registry.state_dir or None, vid)
    elif w.spec.registry.model_in_service:
        # The daemon found the agent's original model under [registry] base_models_dir.
        inc_path, source, raw = w.spec.registry.model_path(), "base model ([registry] base_models_dir/base_models)", None
    elif cfg.base:
        inc_path, source, raw = Path(cfg.base), "params.base", None
    else:
        raise ValueError(
            f"no model in service for agent {agent!r}: the registry has no pointer under {root}, there is no "
            "base model for it under [registry] base_models_dir, and params.base is not set; pass the agent's "
            "current model folder as params.base"
        )
    inc_policy = ParallelExecutionPolicy.from_dict(raw) if raw else None
    return {
        "candidate": {"path": str(cand), "version": None, "policy": cand_policy, "policy_from": how,
                      "source": "params.candidate" if cfg.candidate else "run"},
        "incumbent": {"path": str(inc_path), "version": vid, "policy": inc_policy,
                      "policy_from": "registry" if raw else "none (plain generation)", "source": source},
    }


# -- 2. what is replayed ----------------------------------------------------------------------------------


def _epoch(ts: Any) -> float:
    """A gradebook timestamp as seconds: the platform sends ISO 8601 (``2025-01-01T00:01:00Z``) or epoch."""
    from datetime import datetime

    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0  # unknown format: oldest, so it is replayed last


def gradebook_tasks(state_dir: str | None, agent: str | None, window: int,
                    families: Any = None, min_score: float = 0.9) -> tuple[list[dict], dict]:
    """The newest ``window`` tasks ``agent`` solved, from the local gradebook copy, parsed like the builder.

    Each entry goes through its task family (``families``, default GSM-lite only); entries of a family with no
    grader are counted in ``unknown_families`` (named, not dropped in silence) and replay nothing. A family
    whose reference is the graded answer itself trusts it only from an entry scored at least ``min_score``
    (``[dataset] min_score``; a lower one drops as ``wrong_answer``), as GSM-lite trusts only a correct chain.
    """
    from collections import Counter

    from ..data.gradebook import LocalGradebook
    from ..tasks.contract import DropReason
    from ..tasks.families import GSM_LITE, Families

    families = families or Families.gsm_only()
    stats: dict[str, Any] = {"window": window, "entries": 0, "used": 0, "dropped": {}, "unknown_families": {}}
    if window == 0 or not state_dir:
        stats["note"] = "gradebook replay off" if window == 0 else "no state_dir: no local gradebook copy"
        return [], stats
    book = LocalGradebook(Path(state_dir) / "gradebook")
    mine = [e for e in book.load() if e.get("agent_id") == agent]
    stats["entries"] = len(mine)
    if not mine:
        stats["note"] = f"the local gradebook copy ({book.root}) holds no entries of agent {agent}"
    mine.sort(key=lambda e: (_epoch(e.get("ts")), str(e.get("task_id"))), reverse=True)
    tasks: list[dict] = []
    seen: set[str] = set()
    drops: Counter = Counter()
    unknown: Counter = Counter()
    for e in mine:
        if len(tasks) >= window:
            break
        family = families.for_entry(e)
        try:
            if family is None:
                unknown[families.name_of(e)] += 1
                raise DropReason("unknown_family", families.name_of(e))
            if family.name == GSM_LITE:
                t = {**gsm_task_dict(e), "family": GSM_LITE}
            else:
                if getattr(family, "spec", None) is not None and family.spec.reference_from_entry \
                        and float(e.get("score") or 0.0) < min_score:
                    raise DropReason("wrong_answer", "the graded answer of a low-scored entry is no reference")
                ft = family.task_from_entry(e)
                t = {"id": ft.id, "question": ft.question, "answer": ft.reference or "", "tier": ft.tier or ft.family,
                     "family": ft.family}
        except DropReason as d:
            drops[d.code] += 1
            continue
        if t["id"] in seen:  # the same task graded twice: replay it once (the newest entry)
            drops["duplicate"] += 1
            continue
        seen.add(t["id"])
        tasks.append({**t, "id": f"gb:{t['id']}", "task_id": t["id"], "source": "gradebook"})
    stats["used"], stats["dropped"], stats["unknown_families"] = len(tasks), dict(drops), dict(sorted(unknown.items()))
    return tasks, stats


def guardrail_tasks(spec: StageSpec) -> list[dict]:
    """The shipped guardrail exemplars as replay tasks (``[dataset] guardrails_dir``, else config/guardrails/).

    Loading is strict: a broken exemplar file stops the backtest with the file and the reason, as it
    stops a targeted dataset build.
    """
    from ..data.guardrails import GUARDRAIL_TIER, load_guardrails, resolve_guardrails_dir

    directory = resolve_guardrails_dir(spec.dataset.guardrails_dir or None)
    return [{"id": f"guardrail:{ex.id}", "task_id": f"guardrail:{ex.id}", "source": "guardrail",
             "tier": GUARDRAIL_TIER, "question": ex.question, "answer": ex.answer, "rule": ex.rule,
             "forbid": list(ex.forbid)} for ex in load_guardrails(directory)]


def trained_tasks(run_dir: Path) -> tuple[set[str], set[str], list[str]]:
    """Task ids and questions of everything this run trained on: ``(ids, questions, files read)``.

    The dataset stage's ``*-dataset/dataset/records.jsonl`` (``task_id`` and ``id``, the question from the
    prompt) and the SFT stage's ``*-sft/training_tasks.jsonl`` (every training record, generated top-up
    included).
    """
    from ..evaluate.backtest import question_of_prompt

    ids: set[str] = set()
    questions: set[str] = set()
    files = sorted(run_dir.glob("*-dataset/dataset/records.jsonl")) + sorted(run_dir.glob("*-sft/training_tasks.jsonl"))
    for path in files:
        with path.open() as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
                ids.update(str(rec[k]) for k in ("task_id", "id") if rec.get(k))
                q = rec.get("question") or question_of_prompt(str(rec.get("prompt") or ""))
                if q:
                    questions.add(q)
    return ids, questions, [str(p) for p in files]


def replay_tasks(w: Worker, cfg: BacktestParams, families: Any = None) -> tuple[list[dict], dict]:
    """Gradebook, GSM-lite and guardrail tasks, without any the run trained on (``replay.excluded`` says which)."""
    from ..evaluate.backtest import exclude_trained
    from ..evaluate.gsm_lite import EVAL_SEED, TIERS, eval_split

    tasks, gb = gradebook_tasks(w.spec.registry.state_dir or None, w.spec.agent_id or None, cfg.window, families,
                                min_score=w.spec.dataset.min_score)
    if gb.get("unknown_families"):
        w.log(f"backtest: gradebook entries of task families with no grader left out: {gb['unknown_families']} "
              "(add [tasks.families.<name>], docs/dataset.md)", level="warning")
    tiers = tuple(cfg.tiers or TIERS)
    # GSM-lite's held-out split is never training data by construction; it goes through the same filter anyway.
    gsm = [{**t, "id": f"gsm:{t['id']}", "task_id": t["id"], "source": "gsm_lite", "family": "gsm_lite"}
           for t in (eval_split(cfg.n_per_tier) if cfg.n_per_tier else []) if t["tier"] in tiers]
    held = heldout_tasks(w, cfg, families)
    guard = guardrail_tasks(w.spec) if cfg.guardrail_probes else []
    ids, questions, files = trained_tasks(w.run_dir)
    kept, excluded = exclude_trained(tasks + gsm + held + guard, ids, questions)
    excluded["training_files"] = files
    by_source = {src: sum(1 for t in kept if t["source"] == src)
                 for src in ("gradebook", "gsm_lite", "heldout", "guardrail")}
    gb["replayed"] = by_source["gradebook"]
    return list(kept), {"gradebook": gb,
                        "gsm_lite": {"n_per_tier": cfg.n_per_tier, "tiers": list(tiers), "seed": EVAL_SEED,
                                     "used": by_source["gsm_lite"]},
                        "heldout": {"families": sorted({t["family"] for t in held}), "n_per_tier": cfg.n_per_tier,
                                    "used": by_source["heldout"]},
                        "guardrail": {"enabled": cfg.guardrail_probes, "exemplars": len(guard),
                                      "used": by_source["guardrail"]},
                        "excluded": excluded}


def heldout_tasks(w: Worker, cfg: BacktestParams, families: Any) -> list[dict]:
    """Each served family's held-out set (``[tasks.families.X] heldout``), ``n_per_tier`` per tier: the family's
    own benchmark next to GSM-lite's, with the family's grader and KB context (source ``heldout``)."""
    from ..tasks.families import load_heldout

    if not cfg.n_per_tier or families is None:
        return []
    out: list[dict] = []
    for name, spec in w.spec.tasks.families.items():
        if spec.heldout and name in families.by_name:
            out += [{**t, "id": f"heldout:{name}:{t['id']}", "task_id": t["id"], "source": "heldout", "family": name}
                    for t in load_heldout(spec.heldout, cfg.n_per_tier)]
    return out


def task_families(w: Worker) -> tuple[Any, Any]:
    """The spec's ``[tasks]`` families, and the critic client a critic-graded family needs (else None).

    Without a scoring url a critic-graded family cannot be judged: it is left out of the families (its entries
    are then named in ``replay.gradebook.unknown_families``), with a warning.
    """
    from ..tasks.families import GSM_LITE, Families

    cfg = w.spec.tasks
    if not cfg.needs_critic():
        return cfg.build(), None
    if not w.spec.scoring.url:
        w.log("backtest: a task family is critic-graded but there is no scoring url; its entries are not replayed",
              level="warning")
        specs = {n: f for n, f in cfg.families.items() if f.grader.kind != "critic"}
        return Families.from_config(specs, default=cfg.default_family if cfg.default_family in specs else GSM_LITE), None
    from ..train.critic import CriticClient

    critic = CriticClient(w.spec.scoring.url, w.spec.scoring.token(), timeout=w.spec.scoring.timeout_s)
    return cfg.build(critic=critic), critic


def add_kb_context(w: Worker, tasks: list[dict], replay: dict) -> None:
    """KB context for the replayed tasks of families other than GSM-lite (as the dataset stage retrieves it),
    so both models answer them as the agent does: with retrieval in the prompt."""
    cfg = w.spec.tasks
    todo = sorted({t["question"] for t in tasks if t.get("family") not in (None, "gsm_lite") and cfg.kb_context(t["family"])})
    if not todo:
        return
    from .dataset import kb_contexts

    kb_stats: dict = {}
    contexts = kb_contexts(w.spec.kb, w.spec.registry.state_dir, todo, kb_stats,
                           warn=lambda m: w.log(m, level="warning"))
    for t in tasks:
        if t["question"] in contexts and t.get("family") not in (None, "gsm_lite"):
            t["context"] = contexts[t["question"]]
    replay["kb"] = kb_stats


def grade_side(completions: list, tasks: list[dict], families: Any, guardrails: Any, replay: dict) -> list:
    """Every answer graded by :func:`pr1d.evaluate.grading.grade`; a task family's items with its grader's verdict
    as the correctness column (an item its grader could not judge counts as not correct, and is counted in
    ``replay.grader_unavailable``)."""
    from ..data.parallel_format import extract_final_answer
    from ..evaluate.grading import grade
    from ..tasks.contract import same_answer

    idx = [i for i, t in enumerate(tasks) if t.get("family") not in (None, "gsm_lite")]
    verdicts = dict(zip(idx, families.grade([(tasks[i]["family"], tasks[i]["question"], tasks[i]["answer"] or None,
                                              extract_final_answer(completions[i].text)) for i in idx]),
                        strict=True)) if idx else {}
    replay["grader_unavailable"] = replay.get("grader_unavailable", 0) + sum(v.unavailable for v in verdicts.values())
    out = []
    for i, (c, t) in enumerate(zip(completions, tasks, strict=True)):
        v = verdicts.get(i)
        if v is None:
            out.append(grade(c.text, t["answer"], finished=c.finished, guardrails=guardrails))
            continue
        fam = families.family(t["family"])
        out.append(grade(c.text, t["answer"], finished=c.finished, guardrails=guardrails, correct=v.passed,
                         path_agrees=lambda p, final, fam=fam: same_answer(fam.read_path(p), final)))
    return out


# -- 3. run both models ------------------------------------------------------------------------------------


def answer_all(w: Worker, side: str, info: dict, prompts: list[str], cfg: BacktestParams, step0: int,
               total: int) -> list:
    """One Completion per prompt from one model: forked engine under its policy, else plain greedy.

    Chunk ``i`` is sampled with seed ``cfg.seed + i`` on both sides, so both models draw the same seeds
    for the same prompts.
    """
    from ..inference.generate import generate, load_model

    model, tok = load_model(info["path"])
    policy = info["policy"]
    out: list = []
    for i, start in enumerate(range(0, len(prompts), cfg.batch_size)):
        if w.stop_requested.is_set():
            w.interrupt()  # nothing worth checkpointing: a backtest restarts from scratch
        chunk = prompts[start : start + cfg.batch_size]
        if policy is None:
            out += [c[0] for c in generate(model, tok, chunk, max_new_tokens=cfg.max_new_tokens,
                                           batch_size=cfg.batch_size)]
        else:
            from ..inference.forked import forked_generate

            out += forked_generate(model, tok, chunk, policy, seed=cfg.seed + i, batch_size=cfg.batch_size)
        w.progress(step0 + start + len(chunk), total, message=f"{side}: {start + len(chunk)}/{len(prompts)}")
    del model
    return out


def critic_verdicts(w: Worker, tasks: list[dict], grades: dict[str, list]) -> tuple[dict, dict]:
    """The platform critic's agreement per answer and side (None where it was not asked or did not answer).

    One client for both sides: its cache answers a repeated (question, answer) once, and an outage
    costs one timeout, not one per side.
    """
    scoring = w.spec.scoring
    none = {s: [None] * len(tasks) for s in SIDES}
    if not scoring.url:
        return none, {"status": "no scoring url: critic not asked"}
    from ..train.critic import CriticClient

    # The token as every stage reads it (the variable, else the file); the timeout is [scoring] timeout_s.
    token = scoring.token()
    try:
        client = CriticClient(scoring.url, token, timeout=scoring.timeout_s)
    except ValueError as e:  # a scoring_url the critic cannot use: the report says so, the backtest goes on
        return none, {"status": f"critic not asked: {e}"}
    out: dict[str, list] = {}
    info: dict[str, Any] = {"status": "ok"}
    for s in SIDES:
        idx = [i for i, g in enumerate(grades[s]) if g.final_answer is not None]
        res = client.verify([(tasks[i]["question"], grades[s][i].final_answer) for i in idx]) if idx else []
        out[s] = list(none[s])
        for i, r in zip(idx, res, strict=True):
            out[s][i] = None if r is None else bool(r.agree)
        asked = [v for v in out[s] if v is not None]
        info[s] = {"asked": len(idx), "answered": len(asked),
                   "agreement": round(sum(asked) / len(asked), 6) if asked else None}
        if len(asked) < len(idx):
            info["status"] = f"unavailable for some answers: {client.last_error}"
    return out, info


# -- 4. the picture -----------------------------------------------------------------------------------------


def render_png(summary: dict, path: Path) -> dict:
    """Draw the report picture; returns the numbers read back from the drawn artists.

    Left: per-tier accuracy (the correctness column) of both models. Right: overall candidate −
    incumbent per column, with the bootstrap CI as error bars. The plotted numbers are also written
    into the PNG as the ``pr1-backtest-figure`` text chunk, so the picture carries its own data.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    data = figure_data(summary)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    x = list(range(len(data["tiers"])))
    width = 0.38
    bars = {}
    for k, (side, color) in enumerate((("incumbent", "#8c8c8c"), ("candidate", "#1f77b4"))):
        vals = [v if v is not None else 0.0 for v in data["accuracy"][side]]
        bars[side] = ax1.bar([i + (k - 0.5) * width for i in x], vals, width, label=side, color=color)
    ax1.set_xticks(x, [f"{t}\nn={n}" for t, n in zip(data["tiers"], data["n"], strict=True)])
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("accuracy (correctness)")
    ax1.set_title("accuracy per tier")
    ax1.legend(loc="upper right", fontsize=8)

    cols = data["columns"]
    y = list(range(len(cols)))
    diffs = [d if d is not None else 0.0 for d in data["diff"]]
    lo = [d - (low if low is not None else d) for d, low in zip(diffs, data["ci_low"], strict=True)]
    hi = [(high if high is not None else d) - d for d, high in zip(diffs, data["ci_high"], strict=True)]
    colors = ["#2ca02c" if d >= 0 else "#d62728" for d in diffs]
    hbars = ax2.barh(y, diffs, color=colors, xerr=[lo, hi], capsize=4)
    ax2.axvline(0, color="black", linewidth=0.8)
    ax2.set_yticks(y, cols)
    ax2.invert_yaxis()
    level = summary["ci"]["level"]
    ax2.set_xlabel(f"candidate − incumbent (overall, {level:.0%} paired bootstrap CI)")
    ax2.set_title(f"difference per column (n={summary['tiers']['overall']['n']})")
    fig.tight_layout()

    drawn = {
        "tiers": list(data["tiers"]),
        "accuracy": {s: [round(float(b.get_height()), 6) for b in bars[s]] for s in SIDES},
        "columns": list(cols),
        "diff": [round(float(b.get_width()), 6) for b in hbars.patches],
    }
    with writing(path):
        fig.savefig(path, format="png", metadata={PNG_KEY: json.dumps(data, sort_keys=True)})
    plt.close(fig)
    return drawn


# -- the stage -----------------------------------------------------------------------------------------------


def main(w: Worker) -> dict:
    import torch

    from ..data.parallel_format import measure_batch
    from ..tasks.contract import format_prompt

    started = time.monotonic()
    # Run params over the config's [training.backtest] defaults (a typo there is refused).
    cfg = backtest_params(w.spec)
    # The CI settings are the gate's, so the report's intervals are the ones the gate reasons with.
    gate_cfg = w.spec.gate
    torch.set_num_threads(cfg.threads)

    sides = resolve_sides(w, cfg)
    families, families_critic = task_families(w)
    tasks, replay = replay_tasks(w, cfg, families)
    if not tasks:
        raise ValueError(f"nothing to replay: {replay}")
    ex = replay["excluded"]
    w.log(f"backtest: {len(tasks)} tasks ({replay['gradebook']['replayed']} gradebook, "
          f"{replay['gsm_lite']['used']} GSM-lite, {replay['heldout']['used']} held-out of task families, "
          f"{replay['guardrail']['used']} guardrail; {ex['by_id']} by id and "
          f"{ex['by_question']} by question left out as training data); candidate {sides['candidate']['path']} vs "
          f"{sides['incumbent']['source']} {sides['incumbent']['path']}")

    add_kb_context(w, tasks, replay)
    prompts = [format_prompt(t["question"], t.get("context", "")) for t in tasks]
    total = 2 * len(prompts)
    answers = {}
    for k, side in enumerate(("candidate", "incumbent")):
        answers[side] = answer_all(w, side, sides[side], prompts, cfg, k * len(prompts), total)

    grades = {s: grade_side(answers[s], tasks, families, cfg.guardrail_phrases, replay) for s in SIDES}
    if families_critic is not None:
        families_critic.close()
    if cfg.critic:
        verdicts, critic = critic_verdicts(w, tasks, grades)
    else:
        verdicts, critic = {s: [None] * len(tasks) for s in SIDES}, {"status": "off (params.critic = false)"}

    # The platform's rubric keys, checked on every answer (a key without a check here is reported as such).
    keys = [str(k) for k in (w.spec.scoring.compliance_keys or DEFAULT_COMPLIANCE_KEYS)]
    items = []
    for i, t in enumerate(tasks):
        item: dict[str, Any] = {"id": t["id"], "task_id": t["task_id"], "source": t["source"], "tier": t["tier"],
                                "question": t["question"], "answer": t["answer"]}
        if t.get("family"):
            item["family"] = t["family"]
        if t.get("forbid"):
            item["forbid"] = list(t["forbid"])
        for s in SIDES:
            c = answers[s][i]
            rubric, violations, notes = rubric_checks(
                c.text, finished=c.finished, reference=t["answer"], keys=keys,
                guardrail_phrases=cfg.guardrail_phrases, forbid=t.get("forbid") or (),
                probe=t["source"] == "guardrail", critic_agrees=verdicts[s][i])
            item[s] = {**grades[s][i].to_dict(), "n_tokens": c.n_tokens, "finished": c.finished,
                       "critic_agrees": verdicts[s][i], "rubric": rubric, "violations": violations,
                       "compliance_notes": notes, "text": c.text[:TEXT_LIMIT]}
        items.append(item)

    summary = summarize(items, level=gate_cfg.ci_level, resamples=gate_cfg.bootstrap_resamples, seed=gate_cfg.seed)
    # The format KPIs of the one format module, per side; the candidate's become the run's `eval.<kpi>`
    # metrics, which the scoreboard reports for the version this run registers.
    fmt = {s: dataclasses.asdict(measure_batch([c.text for c in answers[s]])) for s in SIDES}
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "run_id": w.run_id,
        "agent_id": w.spec.agent_id or None,
        "created_at": time.time(),
        **{s: {**{k: v for k, v in sides[s].items() if k != "policy"},
               "policy": sides[s]["policy"].to_dict() if sides[s]["policy"] is not None else None,
               "engine": "forked" if sides[s]["policy"] is not None else "plain greedy"} for s in SIDES},
        "replay": replay,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
        "guardrail_phrases": list(cfg.guardrail_phrases),
        "rubric": {"keys": keys, "checked": [k for k in keys if k in RUBRIC_CHECKS],
                   "not_checked": [k for k in keys if k not in RUBRIC_CHECKS],
                   "critic_agrees": "a check where the critic answered" if cfg.critic else "off (params.critic = false)"},
        "critic": critic,
        "format": fmt,
        **summary,
        "elapsed_s": None,
        "items": items,
    }
    figure_path = w.stage_dir / FIGURE_NAME
    w.stage_dir.mkdir(parents=True, exist_ok=True)
    report["figure"] = {"path": str(figure_path), "drawn": render_png(summary, figure_path),
                        "data": figure_data(summary)}
    report["elapsed_s"] = round(time.monotonic() - started, 2)
    report_path = w.stage_dir / REPORT_NAME
    tmp = report_path.with_suffix(".tmp")
    with writing(tmp):
        tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    tmp.replace(report_path)

    overall = summary["tiers"]["overall"]["columns"]
    for s in SIDES:
        w.metric(f"backtest.{s}.score", overall["score"][s])
    for col, cell in overall.items():
        w.metric(f"backtest.diff.{col}", cell["diff"])
    for kpi in ("path_diversity", "consensus_rate", "parallel_ratio", "format_adherence"):
        if fmt["candidate"][kpi] is not None:
            w.metric(f"eval.{kpi}", fmt["candidate"][kpi])
    w.artifact(REPORT_NAME, report_path, kind="report", meta={"n": summary["n"]})
    w.artifact(FIGURE_NAME, figure_path, kind="figure")
    sc = overall["score"]
    w.log(f"backtest: score {sc['candidate']:.4f} vs {sc['incumbent']:.4f} ({sc['diff']:+.4f}, "
          f"CI [{sc['ci_low']:+.4f}, {sc['ci_high']:+.4f}], n={summary['n']}) in {report['elapsed_s']} s")
    return {"report": str(report_path), "figure": str(figure_path), "n": summary["n"],
            "score": sc, "candidate": report["candidate"], "incumbent": report["incumbent"],
            "unknown_families": replay["gradebook"].get("unknown_families") or {}}


if __name__ == "__main__":
    run_stage(main)
