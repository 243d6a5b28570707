"""Confidence intervals over paired per-item results: the seeded percentile bootstrap the backtest and gate share.

Pure Python (no numpy, no torch): the daemon, the gate stage and the tests all recompute the same
intervals from recorded items, and a seeded ``random.Random`` gives the same numbers on every platform.

Pairing: both models answered the same items, so the statistic is the mean of the per-item differences
``candidate - incumbent``, and a resample draws items (both sides of an item together). Drawing indices
(:func:`bootstrap_draws`) rather than values lets several columns of one row share the same resamples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["bootstrap_ci", "bootstrap_draws", "mean", "paired_bootstrap_ci", "quantile"]


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an already sorted sequence."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def mean(xs: Sequence[float]) -> float | None:
    """The arithmetic mean; None for no values (a report shows "no data", never 0)."""
    return sum(xs) / len(xs) if xs else None


def bootstrap_draws(n: int, resamples: int, seed: int | str) -> list[list[int]]:
    """``resamples`` bootstrap resamples of the item indices ``0..n-1``, from an RNG seeded with ``seed``.

    ``rng.choices(range(n))`` picks the same indices as ``rng.choices(values)`` would for ``n`` values,
    so an interval from these draws equals one resampled from the values directly.
    """
    rng = random.Random(seed)
    return [rng.choices(range(n), k=n) for _ in range(resamples)] if n else []


def bootstrap_ci(diffs: Sequence[float], draws: Sequence[Sequence[int]], level: float) -> tuple[float, float]:
    """Percentile interval at ``level`` of ``mean(diffs)`` over the given index resamples (``diffs`` not empty)."""
    n = len(diffs)
    stats = sorted(sum(diffs[j] for j in d) / n for d in draws)
    alpha = 1.0 - level
    return quantile(stats, alpha / 2), quantile(stats, 1.0 - alpha / 2)


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
    return bootstrap_ci(diffs, bootstrap_draws(len(diffs), resamples, seed), level)
