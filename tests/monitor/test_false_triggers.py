"""Fleet-scale behaviour of the signals on the simulator's own streams (benchmarks/false_triggers.py).

A per-agent rule that is right 99% of the time fires somewhere in a fleet every hour. These tests
judge whole simulated fleets after every other evaluation, with fixed seeds: a healthy fleet must
stay quiet, each degraded scenario must still be caught about as fast as with bare thresholds, and a
fail rate just above the bar must be caught within a bounded number of evaluations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from false_triggers import OLD_RULE, WINDOW_ONLY, delays, run  # noqa: E402

from pr1d.monitor.signals import SignalConfig  # noqa: E402

SHIPPED = SignalConfig()
BARE = OLD_RULE  # bare values, reliability from 20 samples: the rule the soak caught out


def test_a_healthy_fleet_stays_quiet():
    res = run("steady", 600, 120, 2, SHIPPED, seed=11)
    assert res["agents_fired"] == 0, res
    # The same streams with bare thresholds: the false triggers the soak saw (2 fails in 20 = 10%).
    bare = run("steady", 600, 120, 2, BARE, seed=11)
    assert bare["agents_fired"] >= 30 and bare["fired_by_signal"].get("reliability.fail_rate", 0) >= 20, bare


def test_unreliable_agents_are_still_caught_as_unreliable():
    res = run("flaky", 60, 300, 2, SHIPPED, seed=5)
    assert res["fired_by_signal"].get("reliability", 0) >= 0.85 * 60, res
    assert res["fired_by_signal"].get("drift", 0) == 0, res  # a burst of failures is not a drift


@pytest.mark.parametrize(
    "scenario,signal", [("slow-degradation", "weighted_score"), ("sudden-drift", "drift")]
)
def test_degradation_is_caught_as_fast_as_with_bare_thresholds(scenario, signal):
    res = run(scenario, 60, 300, 2, SHIPPED, seed=5)
    bare = run(scenario, 60, 300, 2, BARE, seed=5)
    assert res["agents_fired"] == 60 and res["fired_by_signal"][signal] == 60, res
    assert res["median_first_firing"] <= bare["median_first_firing"] + 6, (res, bare)


def test_a_fail_rate_just_above_the_bar_is_caught_within_a_bounded_delay():
    # 10% against a bar of 8%: the window's confidence bound alone catches it late or never; the
    # sequential test accumulates the evidence (docs/entry-criteria.md has the 300-agent figures).
    shipped = delays(0.10, 30, 500, SHIPPED, seed=9)
    window = delays(0.10, 30, 500, WINDOW_ONLY, seed=9)
    assert shipped["caught"] == 30 and shipped["median"] <= 220 and shipped["p95"] <= 450, shipped
    assert window["p95_of_all"] > shipped["p95_of_all"], (window, shipped)
