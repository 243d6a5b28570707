"""The dashboard's pure cell and panel builders, table-tested: trend bars, signal markers, graded scores, alerts."""

from __future__ import annotations

import pytest

from pr1tui.screens.dashboard import alert_lines, graded, signals_text
from pr1tui.widgets.sparkline import TREND_WIDTH, buckets, trend_cell


@pytest.mark.parametrize(("values", "n", "expected"), [
    ([], 3, []),
    ([1.0, 2.0], 3, [1.0, 2.0]),  # fewer values than buckets: unchanged
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, [1.5, 3.5, 5.5]),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 2, [1.5, 4.0]),  # uneven: every value lands in exactly one bucket
])
def test_buckets(values, n, expected):
    assert buckets(values, n) == expected


@pytest.mark.parametrize(("scores", "expected", "style"), [
    (None, "no data".ljust(TREND_WIDTH), "dim italic"),
    ([], "no data".ljust(TREND_WIDTH), "dim italic"),
    ([0.9] * 20, "▅▅▅▅▅▅▅▅▅ 0.90", "green"),  # flat: mid-height, not a full or empty column
    ([0.90, 0.91, 0.90, 0.91, 0.90, 0.91, 0.90, 0.91, 0.90], "▄▅▄▅▄▅▄▅▄ 0.90", "green"),  # noise stays small
    ([0.9 - 0.01 * i for i in range(45)], "█▇▆▅▅▄▃▂▁ 0.48", "yellow"),  # falling: yellow, newest bar's mean
    ([0.5, 0.9], "▁█ 0.90".rjust(TREND_WIDTH), "green"),
])
def test_trend_cell(scores, expected, style):
    cell = trend_cell(scores)
    assert (cell.plain, str(cell.style)) == (expected, style)


@pytest.mark.parametrize(("signals", "expected"), [
    (None, "–"),
    ({}, "–"),
    ({"drift": {"state": "warn"}, "weighted_score": {"state": "firing", "evidence": {"mean": 0.8}},
      "compliance": {"state": "ok"}, "reliability": {"state": "insufficient_data"}}, "W✗ R○ D▲ C●"),
    ({"reliability": {"state": "ok"}, "latency": {"state": "bogus"}}, "R● L?"),  # unknown: listed after, marked ?
])
def test_signals_text(signals, expected):
    assert signals_text(signals).plain == expected


def test_graded_keeps_only_platform_verdicts():
    rows = [[1.0, 0.9, "pass"], [2.0, 0.4, "fail"], [3.0, None, "error"], [4.0, 0.7, "error"], [5.0, None, "pass"]]
    assert graded(rows) == [0.9, 0.4]


PUSH = {"deployment": 7, "agent": "a1", "version": "v-2", "action": "promote", "since": 1767261600.0,
        "attempts": 3, "last_error": "HTTP 503 from agent manager"}
STATUS = {
    "registry": {
        "pending_pushes": [PUSH],
        "alerts": [
            {"kind": "profile_push_pending", "agent": "a1", "message": "profile push pending for agent a1 ..."},
            {"kind": "watch_short", "agent": "a2", "message": "a2: live grades 0.71 short of 0.90"},
        ],
    },
    "scoreboard": {"alerts": [{"kind": "kpi", "agent": "a3", "message": "agent a3 (v-9): parallel_ratio 0.2 is below 0.5"}]},
}


@pytest.mark.parametrize(("status", "stable", "expected"), [
    ({}, False, []),
    ({"registry": None, "scoreboard": None}, False, []),  # a daemon without the registry
    (STATUS, False, [
        "▲ profile push pending a1: promote → v-2 since 01-01 10:00, 3 attempts, "
        "last error: HTTP 503 from agent manager",
        "✗ watch_short: a2: live grades 0.71 short of 0.90",
        "▲ kpi: agent a3 (v-9): parallel_ratio 0.2 is below 0.5",
    ]),
    # Snapshots: the attempt count and the error move with every retry, so they are left out.
    (STATUS, True, [
        "▲ profile push pending a1: promote → v-2 since 01-01 10:00",
        "✗ watch_short: a2: live grades 0.71 short of 0.90",
        "▲ kpi: agent a3 (v-9): parallel_ratio 0.2 is below 0.5",
    ]),
    # A push alert without its structured entry is still shown, in the daemon's words.
    ({"registry": {"alerts": [STATUS["registry"]["alerts"][0]]}}, True,
     ["✗ profile_push_pending: profile push pending for agent a1 ..."]),
])
def test_alert_lines(status, stable, expected):
    assert [t.plain for t in alert_lines(status, utc=True, stable=stable)] == expected
