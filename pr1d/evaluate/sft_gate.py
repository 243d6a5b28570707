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
