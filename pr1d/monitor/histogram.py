"""Cumulative-bucket histograms for the daemon's /metrics: scoring API latency, poll cycles, stage durations.

Here, not in pr1d/daemon/metrics.py, because the scoring client (pr1d/monitor/poller.py) keeps its own
latency histogram and the monitor must not import the daemon that composes it.
"""

from __future__ import annotations

import bisect
import math


class Histogram:
    """Cumulative-bucket histogram of non-negative values; ``observe`` is a bisect and three additions."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        if not bounds or any(not math.isfinite(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be finite, distinct and increasing; got {bounds!r}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a histogram observation must be a finite number >= 0; got {value!r}")
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus `le`).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
