"""The promotion gate: a pure decision (pass, fail or inconclusive) over recorded evaluation results.

A candidate model passes when all three hold:

1. **Uplift.** Its overall score clears the bar set by the model in service. The bar is
   ``incumbent + min_uplift`` (``uplift_mode = "absolute"``: points on the 0..1 score scale, so
   0.04 means 0.80 -> 0.84) or ``incumbent * (1 + min_uplift)`` (``"relative"``: 0.80 -> 0.832).
   "Clears" is judged on the whole confidence interval of ``candidate - bar``, from a seeded
   bootstrap (paired by item when both sides scored the same items): the lower bound at or above 0
   passes, the upper bound below 0 fails, an interval that straddles 0 is inconclusive.
2. **Compliance.** Every compliance check of the candidate is green (and at least one ran).
3. **Path diversity** lies within ``[diversity_lower, diversity_upper]``: below is degenerate
   single-path behaviour (copies of one path), above is noise (paths that share nothing).

Any failed criterion makes the outcome ``fail`` (the run is rejected with the reasons); otherwise any
undecided criterion (too few samples, a straddling interval, no compliance checks) makes it
``inconclusive`` (awaiting approval, flagged, so a person decides); otherwise ``pass``.
Every number and threshold used goes into :attr:`GateResult.evidence`, which the run stores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Outcome = Literal["pass", "fail", "inconclusive"]

# Scores are means of floats: 0.84 - 0.80 is 0.03999999999999993, so "exactly +4 points" would fail a
# bare >= comparison. Differences this small are rounding, never evidence.
EPS = 1e-9

# Where each outcome sends the run (pr1d/ledger/states.py): a fail is final, the others wait for a person.
NEXT_STATE: dict[str, str] = {"pass": "awaiting_approval", "inconclusive": "awaiting_approval", "fail": "rejected"}


class GateConfig(BaseModel):
    """The promotion gate (`[gate]`): what a candidate must show before a person is asked to approve it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_uplift: float = Field(
        0.04, ge=0.0, le=1.0,
        description="How much better than the model in service the candidate's overall score must be. "
        "Read per `uplift_mode`: 0.04 is 4 points on the 0..1 score (absolute) or 4% of the incumbent's "
        "score (relative).",
    )
    uplift_mode: Literal["absolute", "relative"] = Field(
        "absolute",
        description='"absolute": bar = incumbent + min_uplift (score points). '
        '"relative": bar = incumbent * (1 + min_uplift).',
    )
    min_samples: int = Field(
        50, ge=1,
        description="Fewer scored items than this on either side makes the uplift check inconclusive.",
    )
    ci_level: float = Field(
        0.95, gt=0.5, lt=1.0,
        description="Confidence level of the bootstrap interval of (candidate - bar); an interval that "
        "straddles 0 is inconclusive.",
    )
    bootstrap_resamples: int = Field(
        2000, ge=100, le=100_000, description="Bootstrap resamples for the confidence interval."
    )
    seed: int = Field(0, description="Seed of the bootstrap: the same inputs always give the same decision.")
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
        description="Require every compliance check of the candidate to pass, and at least one to have run.",
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> GateConfig:
        if self.diversity_lower > self.diversity_upper:
            raise ValueError(
                f"diversity_lower ({self.diversity_lower}) must not exceed diversity_upper ({self.diversity_upper})"
            )
        return self


@dataclass(frozen=True)
class GateInput:
    """One model's evaluation results, as the evaluation stage recorded them.

    ``scores`` are per-item weighted scores in [0, 1]; ``item_ids`` (optional, unique, same length)
    name the items so that candidate and incumbent can be compared item by item. The compliance counts
    and ``path_diversity`` are only checked on the candidate; the incumbent's are kept as evidence.
    """

    scores: Sequence[float]
    item_ids: Sequence[str] | None = None
    compliance_passed: int = 0
    compliance_failed: int = 0
    path_diversity: float | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        for i, s in enumerate(self.scores):
            if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not 0.0 <= s <= 1.0:
                raise ValueError(f"GateInput.scores[{i}] must be a finite number in [0, 1], got {s!r}")
        if self.item_ids is not None:
            if len(self.item_ids) != len(self.scores):
                raise ValueError(
                    f"GateInput.item_ids has {len(self.item_ids)} ids for {len(self.scores)} scores"
                )
            if len(set(self.item_ids)) != len(self.item_ids):
                raise ValueError("GateInput.item_ids must be unique (one score per item)")
        if self.compliance_passed < 0 or self.compliance_failed < 0:
            raise ValueError("GateInput compliance counts must be >= 0")
        d = self.path_diversity
        if d is not None and (isinstance(d, bool) or not math.isfinite(d) or not 0.0 <= d <= 1.0):
            raise ValueError(f"GateInput.path_diversity must be in [0, 1] or None, got {d!r}")

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


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


# -- statistics ------------------------------------------------------------------------------------


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an already sorted sequence."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _bar(incumbent_mean: float, cfg: GateConfig) -> float:
    if cfg.uplift_mode == "relative":
        return incumbent_mean * (1.0 + cfg.min_uplift)
    return incumbent_mean + cfg.min_uplift


def _margin_ci(
    cand: Sequence[float], inc: Sequence[float], paired: bool, cfg: GateConfig
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(cand) - bar(mean(inc))``.

    The bar is linear in the incumbent's mean in both modes, so paired items reduce to one
    per-item margin (``c - (1+u)i`` or ``c - i - u``) whose mean is resampled. Pure Python with a
    seeded ``random.Random``: deterministic everywhere and no numpy in the daemon's process.
    """
    rng = random.Random(cfg.seed)
    b = cfg.bootstrap_resamples
    k = 1.0 + cfg.min_uplift if cfg.uplift_mode == "relative" else 1.0
    add = 0.0 if cfg.uplift_mode == "relative" else cfg.min_uplift
    if paired:
        margins = [c - k * i - add for c, i in zip(cand, inc, strict=True)]
        n = len(margins)
        stats = [sum(rng.choices(margins, k=n)) / n for _ in range(b)]
    else:
        nc, ni = len(cand), len(inc)
        stats = [
            sum(rng.choices(cand, k=nc)) / nc - k * (sum(rng.choices(inc, k=ni)) / ni) - add for _ in range(b)
        ]
    stats.sort()
    alpha = 1.0 - cfg.ci_level
    return _quantile(stats, alpha / 2), _quantile(stats, 1.0 - alpha / 2)


def _pairing(candidate: GateInput, incumbent: GateInput) -> tuple[list[float], list[float], bool]:
    """Align scores by item id when both sides scored exactly the same items; else compare unpaired."""
    if candidate.item_ids is not None and incumbent.item_ids is not None and set(candidate.item_ids) == set(
        incumbent.item_ids
    ):
        inc_by_id = dict(zip(incumbent.item_ids, incumbent.scores, strict=True))
        return list(candidate.scores), [inc_by_id[i] for i in candidate.item_ids], True
    return list(candidate.scores), list(incumbent.scores), False


def _r(x: float | None) -> float | None:
    # Evidence is read by people: six decimals are plenty and keep the JSON stable across platforms.
    return None if x is None else round(x, 6)


# -- the decision ----------------------------------------------------------------------------------


def gate_decision(candidate: GateInput, incumbent: GateInput, cfg: GateConfig | None = None) -> GateResult:
    """Decide whether ``candidate`` may replace ``incumbent`` (the model in service). Pure and deterministic."""
    cfg = cfg or GateConfig()
    failed: list[str] = []
    undecided: list[str] = []
    checks: dict[str, str] = {}

    # 1. uplift ------------------------------------------------------------------------------------
    cand, inc, paired = _pairing(candidate, incumbent)
    c_mean, i_mean = candidate.mean, incumbent.mean
    bar = _bar(i_mean, cfg) if i_mean is not None else None
    point = c_mean - bar if c_mean is not None and bar is not None else None
    ci: tuple[float, float] | None = None
    mode_txt = (
        f"incumbent + {cfg.min_uplift:g} points" if cfg.uplift_mode == "absolute"
        else f"incumbent x (1 + {cfg.min_uplift:g})"
    )
    if len(cand) < cfg.min_samples or len(inc) < cfg.min_samples:
        checks["uplift"] = "inconclusive"
        undecided.append(
            f"too_few_samples: candidate {len(cand)}, incumbent {len(inc)} scored items; "
            f"the gate needs {cfg.min_samples} on each side"
        )
    else:
        ci = _margin_ci(cand, inc, paired, cfg)
        lo, hi = ci
        where = (
            f"candidate {c_mean:.4f} vs bar {bar:.4f} ({mode_txt}, incumbent {i_mean:.4f}); "
            f"{cfg.ci_level:.0%} CI of candidate - bar [{lo:+.4f}, {hi:+.4f}]"
        )
        if lo >= -EPS:
            checks["uplift"] = "pass"
        elif hi < -EPS:
            checks["uplift"] = "fail"
            failed.append(f"uplift_below_bar: {where}")
        else:
            checks["uplift"] = "inconclusive"
            undecided.append(f"ci_straddles_bar: {where}")

    # 2. compliance --------------------------------------------------------------------------------
    comp_total = candidate.compliance_passed + candidate.compliance_failed
    if not cfg.require_compliance:
        checks["compliance"] = "skipped"
    elif candidate.compliance_failed > 0:
        checks["compliance"] = "fail"
        failed.append(
            f"compliance_failed: {candidate.compliance_failed} of {comp_total} compliance checks failed"
        )
    elif comp_total == 0:
        checks["compliance"] = "inconclusive"
        undecided.append("no_compliance_checks: no compliance check was recorded for the candidate")
    else:
        checks["compliance"] = "pass"

    # 3. path diversity ----------------------------------------------------------------------------
    div = candidate.path_diversity
    bounds = f"[{cfg.diversity_lower:g}, {cfg.diversity_upper:g}]"
    if div is None:
        checks["path_diversity"] = "fail"
        failed.append(f"no_parallel_paths: no path diversity was measured (no <Parallel> block); needs {bounds}")
    elif div < cfg.diversity_lower - EPS:
        checks["path_diversity"] = "fail"
        failed.append(f"diversity_too_low: {div:.4f} < {cfg.diversity_lower:g} (degenerate single-path behaviour)")
    elif div > cfg.diversity_upper + EPS:
        checks["path_diversity"] = "fail"
        failed.append(f"diversity_too_high: {div:.4f} > {cfg.diversity_upper:g} (paths look like noise)")
    else:
        checks["path_diversity"] = "pass"

    outcome: Outcome = "fail" if failed else "inconclusive" if undecided else "pass"
    # Say what was checked: with require_compliance off, no compliance check was judged, green or not.
    comp_txt = (f"{comp_total} compliance checks green" if checks["compliance"] == "pass"
                else "compliance not checked (gate.require_compliance = false)")
    reasons = failed + undecided if outcome != "pass" else [
        f"pass: candidate {c_mean:.4f} clears bar {bar:.4f} ({mode_txt}) with {cfg.ci_level:.0%} confidence; "
        f"{comp_txt}; path diversity {div:.4f} within {bounds}"
    ]
    evidence: dict[str, Any] = {
        "outcome": outcome,
        "next_state": NEXT_STATE[outcome],
        "flagged": outcome == "inconclusive",
        "reasons": reasons,
        "checks": checks,
        "candidate": {
            "version": candidate.version, "n": len(candidate.scores), "mean": _r(c_mean),
            "compliance_passed": candidate.compliance_passed, "compliance_failed": candidate.compliance_failed,
            "path_diversity": _r(div),
        },
        "incumbent": {
            "version": incumbent.version, "n": len(incumbent.scores), "mean": _r(i_mean),
            "compliance_passed": incumbent.compliance_passed, "compliance_failed": incumbent.compliance_failed,
            "path_diversity": _r(incumbent.path_diversity),
        },
        "uplift": {
            "mode": cfg.uplift_mode, "min_uplift": cfg.min_uplift, "bar": _r(bar),
            "observed": _r(c_mean - i_mean) if c_mean is not None and i_mean is not None else None,
            "margin": _r(point), "ci_low": _r(ci[0]) if ci else None, "ci_high": _r(ci[1]) if ci else None,
            "ci_level": cfg.ci_level, "paired": paired, "bootstrap_resamples": cfg.bootstrap_resamples,
            "seed": cfg.seed, "min_samples": cfg.min_samples, "eps": EPS,
        },
        "diversity_bounds": [cfg.diversity_lower, cfg.diversity_upper],
        "require_compliance": cfg.require_compliance,
        # What the post-promotion watch holds live grades against (pr1d.registry.watch).
        "expected_score": _r(c_mean),
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
