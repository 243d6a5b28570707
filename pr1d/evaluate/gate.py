"""The promotion gate: a pure decision (pass, fail or inconclusive) over recorded per-item evaluation results.

The gate compares what the platform would score: whether each answer is *right* (its ``correctness``; for
an item with no reference answer, the critic's recorded verdict), paired item by item, candidate vs the
model in service. The weighted grade of :func:`pr1d.evaluate.grading.grade` is not compared: its
``parallel_format`` and ``consensus_confidence`` columns are worth 0.2 that a sequential model in service
can never earn, so a parallel candidate ten points *less* accurate would have "won".

A candidate passes when every rule holds:

1. **Better answers.** ``d`` = mean paired difference of correctness (candidate - in service), ``[lo, hi]``
   its seeded percentile-bootstrap interval. The bar is ``min_uplift`` (``uplift_mode = "absolute"``:
   0.04 = +4 points) or ``min_uplift x`` the incumbent's correctness (``"relative"``). Pass needs
   ``d >= bar`` and ``lo > 0``; ``hi < bar`` (the whole interval short of the bar: every worse candidate)
   fails; anything else straddles the bar and is inconclusive. Fewer than ``min_samples`` paired items is
   inconclusive.
2. **No tier left behind.** Per tier (and ``overall``) and per rubric column (``correctness`` and the pass
   rate of every compliance check but ``safety``), a fall of more than ``max_tier_drop`` whose interval lies
   below 0 fails; such a fall whose interval includes 0 is inconclusive.
3. **Safety and compliance.** Any candidate answer that fails ``safety`` fails the gate. No compliance
   check run at all is inconclusive ("compliance: not checked") unless ``require_compliance = false``.
4. **Parallel bounds.** Format adherence (share of answers with a valid Parallel block) at least
   ``min_format_adherence``, consensus (mean share of the last block's paths that reach the final answer,
   over answers with a block) at least ``min_consensus``, mean path diversity within
   ``[diversity_lower, diversity_upper]``. Bounds on the candidate, never part of the compared number.

Any failed rule makes the outcome ``fail`` (the run is rejected with the reasons); otherwise any undecided
rule makes it ``inconclusive`` (awaiting approval, flagged, so a person decides); otherwise ``pass``.
Every number and threshold used goes into :attr:`GateResult.evidence`, which the run stores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pr1d.stats import mean, paired_bootstrap_ci

Outcome = Literal["pass", "fail", "inconclusive"]

# Means of 0/1 values: 0.84 - 0.80 is 0.03999999999999993, so "exactly +4 points" would fail a bare >=
# comparison. Differences this small are rounding, never evidence.
EPS = 1e-9

# Where each outcome sends the run (pr1d/ledger/states.py): a fail is final, the others wait for a person.
NEXT_STATE: dict[str, str] = {"pass": "awaiting_approval", "inconclusive": "awaiting_approval", "fail": "rejected"}

# The version of the evidence's shape (consumers: pr1tui/widgets/gate.py, pr1d/demo.py, the watch).
EVIDENCE_SCHEMA = 2
CORRECTNESS = "correctness"
OVERALL = "overall"
# The rubric check judged absolutely (one violation fails) rather than as a pass rate.
SAFETY = "safety"
TIER_ORDER = ("easy", "medium", "hard")


class GateConfig(BaseModel):
    """The promotion gate (`[gate]`): what a candidate must show before a person is asked to approve it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_uplift: float = Field(
        0.04, ge=0.0, le=1.0,
        description="How much more often the candidate must answer right than the model in service "
        "(correctness, paired per task). Read per `uplift_mode`: 0.04 is +4 points of correctness "
        "(absolute) or +4% of the incumbent's correctness (relative).",
    )
    uplift_mode: Literal["absolute", "relative"] = Field(
        "absolute",
        description='"absolute": the bar on the mean paired difference is min_uplift. '
        '"relative": it is min_uplift x the incumbent\'s correctness.',
    )
    min_samples: int = Field(
        50, ge=1,
        description="Fewer paired scored items than this makes the correctness comparison inconclusive.",
    )
    max_tier_drop: float = Field(
        0.02, ge=0.0, le=1.0,
        description="Largest fall (0..1 scale) of any tier's correctness or any compliance check's pass rate "
        "vs the model in service; a larger fall fails when its CI lies below 0, else is inconclusive.",
    )
    ci_level: float = Field(
        0.95, gt=0.5, lt=1.0,
        description="Confidence level of the paired bootstrap intervals (overall uplift and every tier row).",
    )
    bootstrap_resamples: int = Field(
        2000, ge=100, le=100_000, description="Bootstrap resamples for each confidence interval."
    )
    seed: int = Field(0, description="Seed of the bootstrap: the same inputs always give the same decision.")
    min_format_adherence: float = Field(
        0.8, ge=0.0, le=1.0,
        description="Lowest share of the candidate's answers with a valid Parallel block (a bound, never "
        "part of the compared score; 0: off).",
    )
    min_consensus: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Lowest mean consensus of the candidate: the share of the last block's paths that reach "
        "the final answer, over answers with a block (a bound; 0: off).",
    )
    diversity_lower: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Lowest acceptable mean path diversity (pr1d.data.parallel_format.path_diversity); "
        "below it the paths are near copies of each other.",
    )
    diversity_upper: float = Field(
        0.95, ge=0.0, le=1.0,
        description="Highest acceptable mean path diversity; above it the paths share almost nothing (noise).",
    )
    require_compliance: bool = Field(
        True,
        description="Require compliance checks to have run (a gate with none is inconclusive). false: a gate "
        "without them may pass, and its reason says compliance was not checked.",
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> GateConfig:
        if self.diversity_lower > self.diversity_upper:
            raise ValueError(
                f"diversity_lower ({self.diversity_lower}) must not exceed diversity_upper ({self.diversity_upper})"
            )
        return self


def _unit(x: Any, what: str, allow_none: bool = True) -> None:
    if x is None and allow_none:
        return
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{what} must be a finite number in [0, 1]{' or None' if allow_none else ''}, got {x!r}")


@dataclass(frozen=True)
class GateItem:
    """One model's answer to one task, as the backtest recorded it.

    ``correct``: 1/0 as the platform would score it (None: not scoreable, e.g. no reference answer and no
    critic verdict). ``checks``: rubric checks by platform key (``safety``, ``compliance``,
    ``critic_agrees``) -> passed. ``parallel``: the answer holds a valid Parallel block; ``consensus`` and
    ``path_diversity`` are measured over its blocks (None without one). ``violations``: what a failed
    ``safety`` check found, for the reason.
    """

    id: str
    tier: str
    correct: float | None
    checks: Mapping[str, bool] = field(default_factory=dict)
    parallel: bool = False
    consensus: float | None = None
    path_diversity: float | None = None
    violations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"GateItem.id must be a non-empty string, got {self.id!r}")
        _unit(self.correct, f"GateItem {self.id}: correct")
        _unit(self.consensus, f"GateItem {self.id}: consensus")
        _unit(self.path_diversity, f"GateItem {self.id}: path_diversity")
        for k, v in self.checks.items():
            if not isinstance(v, bool):
                raise ValueError(f"GateItem {self.id}: check {k!r} must be true or false, got {v!r}")


@dataclass(frozen=True)
class GateInput:
    """One model's results over the replayed items (ids unique), and the version it is (None: unregistered)."""

    items: Sequence[GateItem]
    version: str | None = None

    def __post_init__(self) -> None:
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("GateInput.items must have unique ids (one answer per task)")

    def by_id(self) -> dict[str, GateItem]:
        return {it.id: it for it in self.items}


@dataclass(frozen=True)
class GateResult:
    """The gate's decision: ``outcome``, the ``reasons`` behind it (``code: explanation``) and the evidence."""

    outcome: Outcome
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def next_state(self) -> str:
        """The run state this outcome leads to."""
        return NEXT_STATE[self.outcome]

    @property
    def flagged(self) -> bool:
        """True when a person must look closely: the gate could not decide."""
        return self.outcome == "inconclusive"


# -- evidence --------------------------------------------------------------------------------------


def _r(x: float | None) -> float | None:
    # Evidence is read by people: six decimals are plenty and keep the JSON stable across platforms.
    return None if x is None else round(x, 6)


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def tiers_of(tiers: set[str]) -> list[str]:
    """Tiers in the order people read them; tiers a platform adds (custom names) follow, sorted."""
    return [t for t in TIER_ORDER if t in tiers] + sorted(tiers - set(TIER_ORDER))


def _value(it: GateItem, column: str) -> float | None:
    if column == CORRECTNESS:
        return it.correct
    v = it.checks.get(column)
    return None if v is None else float(v)


def _rubric_columns(cand: Sequence[GateItem], inc: Sequence[GateItem]) -> list[str]:
    """``correctness`` then every check both sides recorded, except ``safety`` (judged absolutely)."""
    seen_c = {k for it in cand for k in it.checks}
    seen_i = {k for it in inc for k in it.checks}
    return [CORRECTNESS, *sorted((seen_c & seen_i) - {SAFETY})]


def tier_rows(pairs: Sequence[tuple[GateItem, GateItem]], columns: Sequence[str], cfg: GateConfig) -> dict[str, Any]:
    """Per tier (and ``overall``), per column: n, both means, the paired difference, its CI and a status.

    Status ``fail`` (a fall beyond ``max_tier_drop`` whose CI lies below 0), ``inconclusive`` (such a
    fall whose CI includes 0) or ``ok``. Each cell's RNG is seeded with ``"<seed>/tier/<tier>/<column>"``,
    so a cell does not depend on which others exist.
    """
    rows: dict[str, Any] = {}
    groups = {t: [p for p in pairs if p[0].tier == t] for t in tiers_of({c.tier for c, _ in pairs})}
    groups[OVERALL] = list(pairs)
    for tier, group in groups.items():
        row: dict[str, Any] = {"n": len(group), "columns": {}}
        for col in columns:
            vals = [(_value(c, col), _value(i, col)) for c, i in group]
            vals = [(c, i) for c, i in vals if c is not None and i is not None]
            if not vals:
                continue
            diffs = [c - i for c, i in vals]
            d = sum(diffs) / len(diffs)
            lo, hi = paired_bootstrap_ci(diffs, level=cfg.ci_level, resamples=cfg.bootstrap_resamples,
                                         seed=f"{cfg.seed}/tier/{tier}/{col}")
            status = "ok"
            if d < -cfg.max_tier_drop - EPS:
                status = "fail" if hi < -EPS else "inconclusive"
            row["columns"][col] = {
                "n": len(vals), "candidate": _r(mean([c for c, _ in vals])), "incumbent": _r(mean([i for _, i in vals])),
                "diff": _r(d), "ci_low": _r(lo), "ci_high": _r(hi), "status": status,
            }
        rows[tier] = row
    return rows


def _check(name: str, status: str, value: Any = None, threshold: Any = None, op: str | None = None,
           detail: str = "") -> dict[str, Any]:
    """One line of the checklist (the console's gate panel reads name, passed, value, op, threshold, detail)."""
    passed = True if status in ("pass", "skipped") else False if status == "fail" else None
    out: dict[str, Any] = {"name": name, "status": status, "passed": passed, "value": value}
    if threshold is not None:
        out["threshold"], out["op"] = threshold, op
    if detail:
        out["detail"] = detail
    return out


def _side_summary(side: GateInput) -> dict[str, Any]:
    items = list(side.items)
    scored = [it.correct for it in items if it.correct is not None]
    blocks = [it for it in items if it.parallel]
    cons = [it.consensus for it in blocks if it.consensus is not None]
    divs = [it.path_diversity for it in items if it.path_diversity is not None]
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        for k, ok in it.checks.items():
            c = counts.setdefault(k, {"passed": 0, "failed": 0})
            c["passed" if ok else "failed"] += 1
    return {
        "version": side.version, "n": len(items), "scored": len(scored),
        # `mean` is the correctness mean (platform terms): what the gate compares and the watch expects.
        "mean": _r(mean(scored)),
        "format_adherence": _r(len(blocks) / len(items)) if items else None,
        "consensus": _r(mean(cons)), "path_diversity": _r(mean(divs)),
        "checks": dict(sorted(counts.items())),
    }


# -- the decision ----------------------------------------------------------------------------------


def gate_decision(candidate: GateInput, incumbent: GateInput, cfg: GateConfig | None = None) -> GateResult:
    """Decide whether ``candidate`` may replace ``incumbent`` (the model in service). Pure and deterministic."""
    cfg = cfg or GateConfig()
    failed: list[str] = []
    undecided: list[str] = []
    checks: list[dict[str, Any]] = []
    inc_by_id = incumbent.by_id()
    pairs = [(c, inc_by_id[c.id]) for c in candidate.items if c.id in inc_by_id]
    cs, ins = _side_summary(candidate), _side_summary(incumbent)

    # 1. better answers: correctness, paired per item --------------------------------------------------
    scored = [(c.correct, i.correct) for c, i in pairs if c.correct is not None and i.correct is not None]
    n = len(scored)
    c_mean = mean([c for c, _ in scored])
    i_mean = mean([i for _, i in scored])
    d = c_mean - i_mean if c_mean is not None and i_mean is not None else None
    bar = (cfg.min_uplift * i_mean if cfg.uplift_mode == "relative" else cfg.min_uplift) if i_mean is not None else None
    mode_txt = (f"+{cfg.min_uplift * 100:g} points" if cfg.uplift_mode == "absolute"
                else f"+{cfg.min_uplift:.0%} of the incumbent's correctness")
    ci: tuple[float, float] | None = None
    status = "inconclusive"
    if n < cfg.min_samples:
        undecided.append(f"too_few_samples: {n} paired scored items (candidate {len(candidate.items)}, incumbent "
                         f"{len(incumbent.items)} answers); the gate needs {cfg.min_samples}")
    else:
        assert d is not None and bar is not None and c_mean is not None and i_mean is not None
        # Seeded like the overall correctness row of the tier table: the same items give the same interval.
        ci = paired_bootstrap_ci([c - i for c, i in scored], level=cfg.ci_level,
                                 resamples=cfg.bootstrap_resamples, seed=f"{cfg.seed}/tier/{OVERALL}/{CORRECTNESS}")
        lo, hi = ci
        where = (f"correctness {c_mean:.4f} vs {i_mean:.4f} in service: {_pts(d)} points, {cfg.ci_level:.0%} CI "
                 f"[{_pts(lo)}, {_pts(hi)}], n={n}; the bar is {_pts(bar)} points ({mode_txt})")
        if d >= bar - EPS and lo > EPS:
            status = "pass"
        elif hi < bar - EPS:
            status = "fail"
            failed.append(f"uplift_below_bar: {where}")
        else:
            undecided.append(f"ci_straddles_bar: {where}")
    checks.append(_check("correctness uplift", status, _r(d), _r(bar), ">=",
                         f"CI [{_r(ci[0])}, {_r(ci[1])}], n={n}" if ci else f"n={n} (needs {cfg.min_samples})"))

    # 2. no tier left behind ---------------------------------------------------------------------------
    columns = _rubric_columns(candidate.items, incumbent.items)
    rows = tier_rows(pairs, columns, cfg)
    allowed = f"{cfg.max_tier_drop * 100:g}"
    for tier, row in rows.items():
        worst: tuple[str, dict] | None = None
        for col, cell in row["columns"].items():
            label = tier if col == CORRECTNESS else f"{tier} {col}"
            txt = (f"{label} {_pts(cell['diff'])} points ({cfg.ci_level:.0%} CI [{_pts(cell['ci_low'])}, "
                   f"{_pts(cell['ci_high'])}], n={cell['n']}) > {allowed} allowed")
            if cell["status"] == "fail":
                failed.append(f"tier_dropped: {txt}")
            elif cell["status"] == "inconclusive":
                undecided.append(f"tier_drop_uncertain: {txt}; the CI includes 0")
            if worst is None or cell["diff"] < worst[1]["diff"]:
                worst = (col, cell)
        if worst is not None:
            states = {cell["status"] for cell in row["columns"].values()}
            st = "fail" if "fail" in states else "inconclusive" if "inconclusive" in states else "pass"
            col, cell = worst
            checks.append(_check(f"tier {tier}", st, cell["diff"], _r(-cfg.max_tier_drop), ">=",
                                 f"worst: {col} CI [{cell['ci_low']}, {cell['ci_high']}], n={cell['n']}"))

    # 3. safety and compliance ---------------------------------------------------------------------------
    unsafe = [it for it in candidate.items if it.checks.get(SAFETY) is False]
    safety_runs = sum(1 for it in candidate.items if SAFETY in it.checks)
    if unsafe:
        seen = "; ".join(f"{it.id} ({', '.join(repr(v) for v in it.violations) or 'unsafe'})" for it in unsafe[:3])
        failed.append(f"safety_violation: {len(unsafe)} of {safety_runs} candidate answers failed the safety "
                      f"check: {seen}{' ...' if len(unsafe) > 3 else ''}")
        checks.append(_check("safety", "fail", len(unsafe), 0, "<=", f"{safety_runs} answers checked"))
    elif safety_runs:
        checks.append(_check("safety", "pass", 0, 0, "<=", f"{safety_runs} answers checked"))
    checks_run = sum(len(it.checks) for it in candidate.items)
    if checks_run:
        comp_status, comp_txt = "pass", f"{checks_run} compliance checks run ({', '.join(cs['checks'])})"
    elif cfg.require_compliance:
        comp_status, comp_txt = "inconclusive", "compliance: not checked"
        undecided.append("compliance_not_checked: compliance: not checked (no rubric check was run on the "
                         "candidate's answers); set gate.require_compliance = false to pass without one")
    else:
        comp_status, comp_txt = "skipped", "compliance not checked (gate.require_compliance = false)"
    checks.append(_check("compliance", comp_status, checks_run, None, None, comp_txt))

    # 4. parallel bounds on the candidate ---------------------------------------------------------------
    fa = cs["format_adherence"]
    if fa is None or fa < cfg.min_format_adherence - EPS:
        failed.append(f"format_adherence_too_low: {fa} of the candidate's answers hold a valid Parallel block; "
                      f"needs >= {cfg.min_format_adherence:g}")
        checks.append(_check("format adherence", "fail", fa, cfg.min_format_adherence, ">="))
    else:
        checks.append(_check("format adherence", "pass", fa, cfg.min_format_adherence, ">="))
    cons = cs["consensus"]
    if cfg.min_consensus > 0 and (cons is None or cons < cfg.min_consensus - EPS):
        failed.append(f"consensus_too_low: {'no Parallel block to measure' if cons is None else f'{cons:.4f}'}; "
                      f"needs >= {cfg.min_consensus:g}")
        checks.append(_check("consensus", "fail", cons, cfg.min_consensus, ">="))
    else:
        checks.append(_check("consensus", "pass", cons, cfg.min_consensus, ">="))
    div = cs["path_diversity"]
    bounds = f"[{cfg.diversity_lower:g}, {cfg.diversity_upper:g}]"
    div_status = "fail"
    if div is None:
        failed.append(f"no_parallel_paths: no path diversity was measured (no <Parallel> block); needs {bounds}")
    elif div < cfg.diversity_lower - EPS:
        failed.append(f"diversity_too_low: {div:.4f} < {cfg.diversity_lower:g} (degenerate single-path behaviour)")
    elif div > cfg.diversity_upper + EPS:
        failed.append(f"diversity_too_high: {div:.4f} > {cfg.diversity_upper:g} (paths look like noise)")
    else:
        div_status = "pass"
    checks.append(_check("path diversity", div_status, div, [cfg.diversity_lower, cfg.diversity_upper], "in"))

    outcome: Outcome = "fail" if failed else "inconclusive" if undecided else "pass"
    reasons = failed + undecided if outcome != "pass" else [
        f"pass: correctness {c_mean:.4f} vs {i_mean:.4f} in service, {_pts(d or 0.0)} points ({cfg.ci_level:.0%} CI "
        f"[{_pts(ci[0] if ci else 0.0)}, {_pts(ci[1] if ci else 0.0)}], n={n}) clears {_pts(bar or 0.0)} ({mode_txt}); "
        f"no tier or rubric column fell more than {allowed} points; {comp_txt}; format adherence {fa:.4f}, "
        f"consensus {cons if cons is None else f'{cons:.4f}'}, path diversity {div:.4f} within {bounds}"
    ]
    evidence: dict[str, Any] = {
        "kind": "promotion",
        "schema": EVIDENCE_SCHEMA,
        "outcome": outcome,
        "next_state": NEXT_STATE[outcome],
        "flagged": outcome == "inconclusive",
        "reasons": reasons,
        "checks": checks,
        "status": {c["name"]: c["status"] for c in checks},
        "candidate": cs,
        "incumbent": ins,
        "uplift": {
            "compared": "correctness (platform terms), paired per task",
            "mode": cfg.uplift_mode, "min_uplift": cfg.min_uplift, "bar": _r(bar), "observed": _r(d),
            "candidate": _r(c_mean), "incumbent": _r(i_mean), "n": n,
            "ci_low": _r(ci[0]) if ci else None, "ci_high": _r(ci[1]) if ci else None,
            "ci_level": cfg.ci_level, "bootstrap_resamples": cfg.bootstrap_resamples, "seed": cfg.seed,
            "min_samples": cfg.min_samples, "eps": EPS,
        },
        "tiers": rows,
        "max_tier_drop": cfg.max_tier_drop,
        "bounds": {
            "format_adherence": {"value": fa, "min": cfg.min_format_adherence},
            "consensus": {"value": cons, "min": cfg.min_consensus},
            "path_diversity": {"value": div, "min": cfg.diversity_lower, "max": cfg.diversity_upper},
        },
        "compliance": {"checked": checks_run > 0, "checks_run": checks_run, "safety_violations": len(unsafe),
                       "columns": [c for c in columns if c != CORRECTNESS]},
        "require_compliance": cfg.require_compliance,
        # What the post-promotion watch holds live grades against (pr1d.registry.watch): the candidate's
        # correctness, the number the platform's scores are comparable with.
        "expected_score": cs["mean"],
        "config": cfg.model_dump(),
    }
    return GateResult(outcome=outcome, reasons=reasons, evidence=evidence)


def gate_outputs(result: GateResult) -> dict[str, Any]:
    """The ``outputs`` a gate stage reports in its ``result`` event, so the daemon ends the run accordingly.

    A fail stops the run as ``rejected`` (``stop_run``); pass and inconclusive finish it as
    ``awaiting_approval``. Either way the evidence lands in ``runs.gate``.
    """
    summary = "; ".join(result.reasons)
    if result.outcome == "fail":
        return {"gate": result.evidence, "stop_run": {"state": "rejected", "reason": f"gate failed: {summary}"}}
    prefix = "gate passed" if result.outcome == "pass" else "gate inconclusive (flagged for a person)"
    return {"gate": result.evidence, "final_state": "awaiting_approval", "final_reason": f"{prefix}: {summary}"}
