"""Score trend sparkline: a list of floats drawn as block characters, or a dim "no data" when empty.

Used as a DataTable cell on the dashboard (`trend_cell`: the agent's graded scores from `agents.scores`,
bucketed into a few bars, plus the latest score) and as a standalone widget (`ScoreTrend`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

BLOCKS = "▁▂▃▄▅▆▇█"


def buckets(values: Sequence[float], n: int) -> list[float]:
    """`values` averaged into at most `n` consecutive, near-equal buckets (oldest first).

    Fifty noisy grades squeezed into a dozen bars: the mean of each stretch shows the trend where the
    last dozen raw grades would mostly show noise.
    """
    vals = list(values)
    if len(vals) <= n:
        return vals
    out = []
    for i in range(n):
        part = vals[i * len(vals) // n:(i + 1) * len(vals) // n]
        out.append(sum(part) / len(part))
    return out


def spark(values: Sequence[float] | None, width: int = 16, lo: float | None = None, hi: float | None = None,
          min_span: float = 0.0) -> Text:
    """The last `width` values as a sparkline. Scores live in [0, 1], so callers may pin lo/hi to compare
    agents on one scale; by default the range comes from the data (a flat series draws mid-height).
    `min_span` widens a data range narrower than it around its middle, so that noise of a few hundredths
    does not fill the whole height."""
    vals = [float(v) for v in (values or []) if v is not None][-width:]
    if not vals:
        return _no_data(width)
    low = min(vals) if lo is None else lo
    high = max(vals) if hi is None else hi
    if high - low < min_span:
        mid = (high + low) / 2
        low, high = mid - min_span / 2, mid + min_span / 2
    span = high - low
    out = []
    for v in vals:
        if span <= 0:
            idx = len(BLOCKS) // 2
        else:
            idx = int((min(max(v, low), high) - low) / span * (len(BLOCKS) - 1) + 0.5)
        out.append(BLOCKS[idx])
    # Colour by the latest value's direction against the first: falling scores are what trigger runs.
    style = "green" if vals[-1] >= vals[0] else "yellow"
    return Text("".join(out).rjust(width), style=style)


# The dashboard's trend column: bars, a space, the latest score ("0.87").
TREND_BARS = 9
TREND_WIDTH = TREND_BARS + 5
# Scores of a healthy agent wander by a few hundredths; a tenth of the scale is the least a column of
# bars spans, so a steady agent draws a flat-ish line and a real fall still shows.
TREND_MIN_SPAN = 0.1


def trend_cell(scores: Sequence[float] | None) -> Text:
    """`▇▇▆▆▅▄▄▃▂ 0.81`: the scores bucketed into bars, then the newest bar's mean; `no data` without scores.

    The number is the newest bucket's mean rather than the single newest grade: one failed evaluation
    (graded ~0.5) would otherwise read as a collapsed agent next to bars that say otherwise.
    """
    if not scores:
        return _no_data(TREND_WIDTH)
    bars = buckets(scores, TREND_BARS)
    out = spark(bars, TREND_BARS, min_span=TREND_MIN_SPAN)
    out.append(f" {bars[-1]:.2f}")
    return out


@functools.cache
def _no_data(width: int) -> Text:
    # One shared instance per width: a dashboard of many agents without scores holds one object.
    return Text("no data".ljust(width)[:width], style="dim italic")


class ScoreTrend(Static):
    """A sparkline widget over `values` (floats, oldest first)."""

    values: reactive[tuple[float, ...]] = reactive(tuple)

    def __init__(self, values: Sequence[float] = (), width: int = 16, **kw):
        super().__init__(**kw)
        self.spark_width = width
        self.set_reactive(ScoreTrend.values, tuple(values))

    def render(self) -> Text:
        return spark(self.values, self.spark_width)
