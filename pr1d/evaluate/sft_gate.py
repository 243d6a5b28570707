"""The SFT validation gate (pure): does the SFT candidate beat the base model on held-out GSM-lite?

``sft_gate(base, cand, n_per_tier)`` compares per-tier greedy accuracies measured in the *same* run on the
*same* held-out problems. The overall accuracy of each model is the **sample-weighted** mean over tiers,
``sum(acc[t] * n[t]) / sum(n[t])`` (with the same ``n`` for every tier this is the plain mean over
tiers). Uplift is ``overall(cand) - overall(base)`` in absolute points (``mode="absolute"``, the default)
or that difference over ``overall(base)`` (``mode="relative"``); both are always in the evidence. The run
proceeds iff uplift >= ``threshold``; otherwise the reason is ``sft_uplift_below_threshold``.
No torch here: the daemon and the tests import it freely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REASON_BELOW = "sft_uplift_below_threshold"
REASON_OK = "sft_uplift_ok"
REASON_REGRESSION = "sft_family_regression"
MODES = ("absolute", "relative")


@dataclass(frozen=True)
class GateDecision:
    proceed: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _weights(tiers: list[str], n_per_tier: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(n_per_tier, Mapping):
        missing = [t for t in tiers if t not in n_per_tier]
        if missing:
            raise ValueError(
                f"n_per_tier has no count for tiers {missing}: give one per tier or a single int"
            )
        return {t: int(n_per_tier[t]) for t in tiers}
    return {t: int(n_per_tier) for t in tiers}


def overall(acc: Mapping[str, float], weights: Mapping[str, int]) -> float:
    """Sample-weighted mean accuracy over the tiers of ``weights``."""
    total = sum(weights.values())
    return sum(float(acc[t]) * w for t, w in weights.items()) / total


def sft_gate(
    base: Mapping[str, float | None],
    cand: Mapping[str, float | None],
    n_per_tier: int | Mapping[str, int],
    threshold: float = 0.05,
    mode: str = "absolute",
) -> GateDecision:
    """Proceed iff the candidate's overall accuracy gain over the base is at least ``threshold``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not math.isfinite(threshold):
        raise ValueError(
            "threshold must be a finite number (absolute points, e.g. 0.05, or a relative fraction)"
        )
    tiers = [t for t in base if base[t] is not None]
    if not tiers:
        raise ValueError("base has no tier accuracies: evaluate the base model on at least one tier")
    missing = [t for t in tiers if cand.get(t) is None]
    if missing:
        raise ValueError(f"candidate lacks accuracies for tiers {missing}: evaluate both on the same tiers")
    for name, acc in (("base", base), ("candidate", cand)):
        bad = [t for t in tiers if not 0.0 <= float(acc[t]) <= 1.0]
        if bad:
            raise ValueError(f"{name} accuracies must be fractions in [0, 1]; tiers {bad} are not")
    weights = _weights(tiers, n_per_tier)
    if any(w <= 0 for w in weights.values()):
        raise ValueError("n_per_tier must be positive: a tier with no problems cannot be weighted")
    b, c = overall(base, weights), overall(cand, weights)
    uplift_abs = c - b
    uplift_rel = (c - b) / b if b > 0 else (math.inf if c > b else 0.0)
    uplift = uplift_abs if mode == "absolute" else uplift_rel
    # Rough standard error of the difference (two independent binomials), shown so a reader can judge noise.
    n = sum(weights.values())
    se = math.sqrt(max(b * (1 - b), 0.0) / n + max(c * (1 - c), 0.0) / n)
    proceed = uplift >= threshold - 1e-12
    evidence = {
        "mode": mode,
        "threshold": threshold,
        "weighting": "sample-weighted mean over tiers",
        "n_per_tier": weights,
        "base": {t: float(base[t]) for t in tiers},
        "candidate": {t: float(cand[t]) for t in tiers},
        "per_tier_uplift": {t: float(cand[t]) - float(base[t]) for t in tiers},
        "base_overall": b,
        "candidate_overall": c,
        "uplift_abs": uplift_abs,
        "uplift_rel": uplift_rel if math.isfinite(uplift_rel) else None,
        "uplift": uplift if math.isfinite(uplift) else None,
        "stderr_abs": se,
    }
    return GateDecision(proceed, REASON_OK if proceed else REASON_BELOW, evidence)


def family_gate(
    gsm: GateDecision,
    families: Mapping[str, tuple[Mapping[str, float], Mapping[str, float], Mapping[str, int]]],
    *,
    threshold: float = 0.05,
    max_regression: float = 0.02,
) -> GateDecision:
    """The SFT gate over GSM-lite and every task family with a held-out set.

    ``families`` maps a family to ``(base, candidate, n_per_tier)`` accuracies measured like GSM-lite's. The
    run proceeds iff GSM-lite or some family gains at least ``threshold`` (absolute, overall) **and** neither
    GSM-lite nor any family loses more than ``max_regression``: a curriculum for the platform's support questions
    may leave arithmetic where it was, but not pay for the new family with it. With no families this is
    GSM-lite's own decision. The evidence gains ``families`` (a row per family) and ``carried_by``.
    """
    if not families:
        return gsm
    rows: dict[str, dict[str, Any]] = {}
    for name, (base, cand, n) in families.items():
        d = sft_gate(base, cand, n, threshold=threshold)
        rows[name] = {k: d.evidence[k] for k in ("base", "candidate", "n_per_tier", "per_tier_uplift", "base_overall",
                                                   "candidate_overall", "uplift_abs", "stderr_abs")}
    uplifts = {"gsm_lite": float(gsm.evidence["uplift_abs"]), **{n: r["uplift_abs"] for n, r in rows.items()}}
    carried = sorted(n for n, u in uplifts.items() if u >= threshold - 1e-12)
    regressed = sorted(n for n, u in uplifts.items() if u < -max_regression - 1e-12)
    proceed = bool(carried) and not regressed
    reason = REASON_OK if proceed else REASON_REGRESSION if carried else REASON_BELOW
    evidence = {**gsm.evidence, "families": rows, "carried_by": carried, "regressed": regressed,
                "max_regression": max_regression, "family_threshold": threshold}
    return GateDecision(proceed, reason, evidence)
