"""The promotion gate as a table: pass, fail and inconclusive, the exact +4% edge, a CI straddling the bar."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from pr1d.evaluate.gate import GateConfig, GateInput, gate_decision, gate_outputs

IDS = [f"gsm-easy-{i:04d}" for i in range(200)]


def const(value: float, n: int = 200, **kw) -> GateInput:
    return GateInput(scores=[value] * n, item_ids=IDS[:n], **kw)


def noisy(mean: float, sd: float, n: int = 200, seed: int = 1, paired_ids: bool = True, **kw) -> GateInput:
    rng = random.Random(seed)
    xs = [min(1.0, max(0.0, rng.gauss(mean, sd))) for _ in range(n)]
    return GateInput(scores=xs, item_ids=IDS[:n] if paired_ids else None, **kw)


GOOD = {"compliance_passed": 200, "compliance_failed": 0, "path_diversity": 0.4}
CFG = GateConfig(min_samples=50)

CASES = [
    # (id, candidate, incumbent, config, outcome, reason codes that must appear)
    ("clear_pass", noisy(0.92, 0.03, **GOOD), noisy(0.80, 0.03, seed=2), CFG, "pass", []),
    ("exactly_plus_4_points", const(0.84, **GOOD), const(0.80), CFG, "pass", []),
    ("just_under_4_points", const(0.839, **GOOD), const(0.80), CFG, "fail", ["uplift_below_bar"]),
    ("no_uplift", noisy(0.80, 0.03, **GOOD), noisy(0.80, 0.03, seed=2), CFG, "fail", ["uplift_below_bar"]),
    ("relative_exactly_plus_4_percent", const(0.78, **GOOD), const(0.75),
     GateConfig(min_samples=50, uplift_mode="relative"), "pass", []),
    # +3 points: short of +4 points (absolute) but more than +4% of 0.50 (relative: bar 0.52)
    ("absolute_fails_where_relative_passes", const(0.53, **GOOD), const(0.50), CFG, "fail", ["uplift_below_bar"]),
    ("relative_passes_same_numbers", const(0.53, **GOOD), const(0.50),
     GateConfig(min_samples=50, uplift_mode="relative"), "pass", []),
    # point estimate right at the bar with real noise: the 95% CI straddles it
    ("ci_straddles_bar", noisy(0.84, 0.10, n=60, seed=3, **GOOD), noisy(0.80, 0.10, n=60, seed=4),
     CFG, "inconclusive", ["ci_straddles_bar"]),
    ("too_few_samples", const(0.95, n=10, **GOOD), const(0.80, n=10), CFG, "inconclusive", ["too_few_samples"]),
    ("compliance_failure", const(0.95, compliance_passed=199, compliance_failed=1, path_diversity=0.4),
     const(0.80), CFG, "fail", ["compliance_failed"]),
    ("no_compliance_checks", const(0.95, path_diversity=0.4), const(0.80), CFG, "inconclusive",
     ["no_compliance_checks"]),
    ("compliance_not_required", const(0.95, path_diversity=0.4), const(0.80),
     GateConfig(min_samples=50, require_compliance=False), "pass", []),
    ("diversity_too_low", const(0.95, compliance_passed=5, path_diversity=0.01), const(0.80), CFG, "fail",
     ["diversity_too_low"]),
    ("diversity_too_high", const(0.95, compliance_passed=5, path_diversity=0.99), const(0.80), CFG, "fail",
     ["diversity_too_high"]),
    ("diversity_at_lower_bound", const(0.95, compliance_passed=5, path_diversity=0.05), const(0.80), CFG,
     "pass", []),
    ("no_parallel_paths", const(0.95, compliance_passed=5), const(0.80), CFG, "fail", ["no_parallel_paths"]),
    # a hard failure outranks an undecided check
    ("fail_beats_inconclusive", const(0.95, n=10, compliance_passed=5, compliance_failed=2, path_diversity=0.4),
     const(0.80, n=10), CFG, "fail", ["compliance_failed", "too_few_samples"]),
    ("unpaired_when_items_differ", noisy(0.92, 0.03, paired_ids=False, **GOOD), noisy(0.80, 0.03, seed=2),
     CFG, "pass", []),
]


@pytest.mark.parametrize(("case", "cand", "inc", "cfg", "outcome", "codes"), CASES, ids=[c[0] for c in CASES])
def test_gate_table(case, cand, inc, cfg, outcome, codes):
    r = gate_decision(cand, inc, cfg)
    assert r.outcome == outcome, r.reasons
    got = {x.split(":")[0] for x in r.reasons}
    assert set(codes) <= got, r.reasons
    assert r.next_state == {"pass": "awaiting_approval", "inconclusive": "awaiting_approval",
                            "fail": "rejected"}[outcome]
    assert r.flagged == (outcome == "inconclusive")
    assert r.evidence["outcome"] == outcome and r.evidence["reasons"] == r.reasons


def test_pass_reason_says_what_was_checked():
    r = gate_decision(const(0.95, **GOOD), const(0.80), CFG)
    assert "200 compliance checks green" in r.reasons[0]
    off = gate_decision(const(0.95, path_diversity=0.4), const(0.80), GateConfig(min_samples=50, require_compliance=False))
    assert off.outcome == "pass" and "compliance checks green" not in off.reasons[0]
    assert "compliance not checked (gate.require_compliance = false)" in off.reasons[0]


def test_ci_straddle_really_straddles_and_point_estimate_clears():
    r = gate_decision(noisy(0.84, 0.10, n=60, seed=3, **GOOD), noisy(0.80, 0.10, n=60, seed=4), CFG)
    u = r.evidence["uplift"]
    assert u["ci_low"] < 0 < u["ci_high"]
    assert u["paired"] is True


def test_evidence_records_every_number_and_threshold():
    cfg = GateConfig(min_uplift=0.05, min_samples=30, ci_level=0.9, bootstrap_resamples=500, seed=7,
                     diversity_lower=0.1, diversity_upper=0.8)
    r = gate_decision(noisy(0.95, 0.02, **GOOD), noisy(0.80, 0.02, seed=2), cfg)
    ev = r.evidence
    assert ev["config"] == cfg.model_dump()
    u = ev["uplift"]
    assert u["min_uplift"] == 0.05 and u["mode"] == "absolute" and u["ci_level"] == 0.9
    assert u["bootstrap_resamples"] == 500 and u["seed"] == 7 and u["min_samples"] == 30
    assert u["bar"] == pytest.approx(ev["incumbent"]["mean"] + 0.05, abs=1e-6)
    assert u["ci_low"] <= u["margin"] <= u["ci_high"]
    assert ev["candidate"]["n"] == 200 and ev["candidate"]["compliance_passed"] == 200
    assert ev["diversity_bounds"] == [0.1, 0.8]
    assert ev["expected_score"] == ev["candidate"]["mean"]
    assert ev["checks"] == {"uplift": "pass", "compliance": "pass", "path_diversity": "pass"}


def test_deterministic():
    a = gate_decision(noisy(0.86, 0.1, **GOOD), noisy(0.80, 0.1, seed=2), CFG)
    b = gate_decision(noisy(0.86, 0.1, **GOOD), noisy(0.80, 0.1, seed=2), CFG)
    assert a == b


def test_outputs_drive_the_run():
    ok = gate_outputs(gate_decision(const(0.9, **GOOD), const(0.8), CFG))
    assert ok["final_state"] == "awaiting_approval" and ok["gate"]["outcome"] == "pass"
    bad = gate_outputs(gate_decision(const(0.8, **GOOD), const(0.8), CFG))
    assert bad["stop_run"]["state"] == "rejected" and "uplift_below_bar" in bad["stop_run"]["reason"]
    unsure = gate_outputs(gate_decision(const(0.9, n=5, **GOOD), const(0.8, n=5), CFG))
    assert unsure["final_state"] == "awaiting_approval" and unsure["gate"]["flagged"] is True
    assert "flagged" in unsure["final_reason"]


@pytest.mark.parametrize("bad", [
    {"scores": [0.5, float("nan")]},
    {"scores": [1.2]},
    {"scores": [True]},
    {"scores": [0.5, 0.6], "item_ids": ["a"]},
    {"scores": [0.5, 0.6], "item_ids": ["a", "a"]},
    {"scores": [0.5], "path_diversity": 2.0},
    {"scores": [0.5], "compliance_failed": -1},
])
def test_bad_inputs_refused(bad):
    with pytest.raises(ValueError):
        GateInput(**bad)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        GateConfig(min_uplfit=0.04)  # typo: unknown key
    with pytest.raises(ValidationError):
        GateConfig(diversity_lower=0.9, diversity_upper=0.1)
    with pytest.raises(ValidationError):
        GateConfig(uplift_mode="percent")
