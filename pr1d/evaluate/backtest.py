"""Backtest statistics: candidate − incumbent per tier and rubric column, paired bootstrap CIs, gate inputs.

Pure Python over the per-item records the backtest stage writes (no torch, no numpy), so the gate
stage, the daemon and the tests can all recompute every figure of a report from its items. One item::

    {"id": "gsm:eval-easy-0003", "source": "gsm_lite" | "gradebook", "tier": "easy",
     "candidate": Grade.to_dict() (+ "n_tokens", "text"), "incumbent": the same for the model in service}

Both sides answered the same item with the same seed, so every comparison is *paired*: the statistic
is the mean of the per-item differences ``candidate - incumbent``, and its confidence interval is a
percentile bootstrap that resamples items (both sides of an item together). Pairing removes the
between-item variance (an easy item is easy for both models), which is most of it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .gate import GateInput, _quantile

SIDES = ("candidate", "incumbent")
SCORE = "score"  # the weighted grade: the gate's number, listed first among the columns
OVERALL = "overall"
# Tiers in the order people read them; tiers a platform adds (custom names) follow, sorted.
TIER_ORDER = ("easy", "medium", "hard")
REPORT_SCHEMA = 1


def _r(x: float | None) -> float | None:
    # Reports are read by people and compared by tests: six decimals, stable across platforms.
    return None if x is None else round(x, 6)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _draws(n: int, resamples: int, seed: int | str) -> list[list[int]]:
    """``resamples`` bootstrap resamples of the item indices ``0..n-1``, from an RNG seeded with ``seed``."""
    rng = random.Random(seed)
    return [rng.choices(range(n), k=n) for _ in range(resamples)] if n else []


def _ci(diffs: Sequence[float], draws: Sequence[Sequence[int]], level: float) -> tuple[float, float]:
    n = len(diffs)
    stats = sorted(sum(diffs[j] for j in d) / n for d in draws)
    alpha = 1.0 - level
    return _quantile(stats, alpha / 2), _quantile(stats, 1.0 - alpha / 2)


def paired_bootstrap_ci(
    diffs: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int | str = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``mean(diffs)`` from ``resamples`` seeded item resamples.

    None for no items. One item gives a zero-width interval at its difference (there is nothing to
    resample), which the sample size reported next to it makes plain.
    """
    if not 0.5 < level < 1.0:
        raise ValueError(f"level must be in (0.5, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not diffs:
        return None
    return _ci(diffs, _draws(len(diffs), resamples, seed), level)


def column_values(side: Mapping[str, Any], column: str) -> float:
    """One side's value of ``column`` for an item: the weighted score or one rubric column."""
    return float(side[SCORE] if column == SCORE else side["columns"][column])


def columns_of(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """``score`` then every rubric column, in the order the grading function lists them."""
    cols: list[str] = []
    for it in items:
        for c in it["candidate"]["columns"]:
            if c not in cols:
                cols.append(c)
    return [SCORE, *cols]


def tiers_of(items: Iterable[Mapping[str, Any]]) -> list[str]:
    seen = {str(it["tier"]) for it in items}
    return [t for t in TIER_ORDER if t in seen] + sorted(seen - set(TIER_ORDER))


def compare(
    items: Sequence[Mapping[str, Any]], columns: Sequence[str], *, level: float, resamples: int, seed: int | str
) -> dict[str, Any]:
    """One row of the report: n and, per column, both means, the paired difference and its CI.

    The same bootstrap resamples serve every column of the row (one seeded RNG per row), so the
    columns' intervals are comparable and the row costs one set of index draws.
    """
    n = len(items)
    row: dict[str, Any] = {"n": n, "columns": {}}
    draws = _draws(n, resamples, seed)
    for col in columns:
        cand = [column_values(it["candidate"], col) for it in items]
        inc = [column_values(it["incumbent"], col) for it in items]
        diffs = [c - i for c, i in zip(cand, inc, strict=True)]
        cell: dict[str, Any] = {"candidate": _r(_mean(cand)), "incumbent": _r(_mean(inc)),
                                "diff": _r(_mean(diffs)), "ci_low": None, "ci_high": None}
        if n:
            lo, hi = _ci(diffs, draws, level)
            cell["ci_low"], cell["ci_high"] = _r(lo), _r(hi)
        row["columns"][col] = cell
    return row


def compliance_counts(items: Iterable[Mapping[str, Any]], side: str) -> dict[str, Any]:
    """Policy checks (:data:`pr1d.evaluate.grading.POLICY_CHECKS`) passed and failed over all items, which
    the gate requires all green, and every named check per check (quality ones too) for the report."""
    from .grading import POLICY_CHECKS

    by: dict[str, dict[str, int]] = {}
    for it in items:
        for name, ok in it[side]["compliance"].items():
            c = by.setdefault(name, {"passed": 0, "failed": 0})
            c["passed" if ok else "failed"] += 1
    policy = [c for name, c in by.items() if name in POLICY_CHECKS]
    return {"passed": sum(c["passed"] for c in policy), "failed": sum(c["failed"] for c in policy),
            "checks": list(POLICY_CHECKS), "by_check": by}


def mean_path_diversity(items: Iterable[Mapping[str, Any]], side: str) -> float | None:
    """Mean path diversity over the items that produced at least one valid parallel block (None: none did)."""
    vals = [float(it[side]["path_diversity"]) for it in items if it[side].get("path_diversity") is not None]
    return _r(_mean(vals))


def parallel_ratio(items: Sequence[Mapping[str, Any]], side: str) -> float | None:
    """Share of items whose answer held a valid parallel block (two or more paths)."""
    if not items:
        return None
    return _r(sum(1 for it in items if int(it[side].get("n_paths") or 0) >= 2) / len(items))


def summarize(
    items: Sequence[Mapping[str, Any]], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Every aggregate figure of a report, recomputable from its items.

    ``tiers`` (each tier and ``overall``) and ``sources`` (gradebook replay, GSM-lite split) are rows
    of :func:`compare`; each row's RNG is seeded with ``"<seed>/<group>/<name>"`` so a row does not
    depend on which other rows exist.
    """
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("backtest items must have unique ids (one record per replayed task)")
    cols = columns_of(items)
    kw = {"level": level, "resamples": resamples}
    tiers = {t: compare([it for it in items if it["tier"] == t], cols, seed=f"{seed}/tier/{t}", **kw)
             for t in tiers_of(items)}
    tiers[OVERALL] = compare(items, cols, seed=f"{seed}/tier/{OVERALL}", **kw)
    sources = {s: compare([it for it in items if it["source"] == s], cols, seed=f"{seed}/source/{s}", **kw)
               for s in sorted({it["source"] for it in items})}
    return {
        "n": len(items),
        "columns": cols,
        "ci": {"method": "paired percentile bootstrap over items", "level": level, "resamples": resamples,
               "seed": seed},
        "tiers": tiers,
        "sources": sources,
        "compliance": {s: compliance_counts(items, s) for s in SIDES},
        "path_diversity": {s: mean_path_diversity(items, s) for s in SIDES},
        "parallel_ratio": {s: parallel_ratio(items, s) for s in SIDES},
    }


def figure_data(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the report picture plots, as numbers: per-tier accuracy of both sides (left panel) and the
    overall difference per column with its CI (right panel). The PNG carries this dict too."""
    tiers = [t for t in summary["tiers"] if t != OVERALL]
    acc = "correctness"
    overall = summary["tiers"][OVERALL]["columns"]
    cols = list(summary["columns"])
    return {
        "tiers": tiers,
        "n": [summary["tiers"][t]["n"] for t in tiers],
        "accuracy": {s: [summary["tiers"][t]["columns"].get(acc, {}).get(s) for t in tiers] for s in SIDES},
        "columns": cols,
        "diff": [overall[c]["diff"] for c in cols],
        "ci_low": [overall[c]["ci_low"] for c in cols],
        "ci_high": [overall[c]["ci_high"] for c in cols],
    }


def gate_inputs(report: Mapping[str, Any]) -> tuple[GateInput, GateInput]:
    """``(candidate, incumbent)`` for :func:`pr1d.evaluate.gate.gate_decision` from a backtest report.

    Scores are the per-item weighted grades with the item ids (so the gate pairs them too);
    compliance counts and mean path diversity are recomputed from the items, not trusted from the
    summary, so a hand-edited summary cannot move the gate.
    """
    items = report["items"]
    ids = [str(it["id"]) for it in items]
    out = []
    for side in SIDES:
        comp = compliance_counts(items, side)
        out.append(GateInput(
            scores=[float(it[side][SCORE]) for it in items], item_ids=ids,
            compliance_passed=comp["passed"], compliance_failed=comp["failed"],
            path_diversity=mean_path_diversity(items, side),
            version=(report.get(side) or {}).get("version"),
        ))
    return out[0], out[1]
