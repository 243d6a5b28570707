"""Score trend sparkline: a list of floats drawn as block characters, or a dim "no data" when empty.

Used as a DataTable cell (via `spark`) on the dashboard and as a standalone widget (`ScoreTrend`). The
daemon has no score API yet (the monitor lands in a later issue), so today every agent shows "no data";
the widget already takes the list of floats the monitor will provide.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float] | None, width: int = 16, lo: float | None = None, hi: float | None = None) -> Text:
    """The last `width` values as a sparkline. Scores live in [0, 1], so callers may pin lo/hi to compare
    agents on one scale; by default the range comes from the data (a flat series draws mid-height)."""
    vals = [float(v) for v in (values or []) if v is not None][-width:]
    if not vals:
        return _no_data(width)
    low = min(vals) if lo is None else lo
    high = max(vals) if hi is None else hi
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
