"""The promotion gate as tables: correctness paired per task, no tier left behind, safety, compliance, bounds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from pr1d.evaluate.gate import GateConfig, GateInput, GateItem, gate_decision, gate_outputs

GOOD = {"safety": True, "compliance": True}
CFG = GateConfig(min_samples=50, bootstrap_resamples=400)


def pair(tiers: dict[str, tuple[int, int, int, int]], cand=None, inc=None) -> tuple[GateInput, GateInput]:
    """Both sides over the same tasks. Per tier ``(both right, only candidate right, only incumbent right,
    both wrong)``. ``cand``/``inc``: ``f(k, item) -> item`` to change the k-th answer of that side."""
    c_items, i_items = [], []
    k = 0
    for tier, counts in tiers.items():
        for (cv, iv), count in zip(((1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)), counts, strict=True):
            for _ in range(count):
                tid = f"{tier}-{k:04d}"
                ci = GateItem(id=tid, tier=tier, correct=cv, checks=dict(GOOD), parallel=True, consensus=1.0,
                              path_diversity=0.4)
                ii = GateItem(id=tid, tier=tier, correct=iv, checks=dict(GOOD))
                c_items.append(cand(k, ci) if cand else ci)
                i_items.append(inc(k, ii) if inc else ii)
                k += 1
    return GateInput(c_items, version=None), GateInput(i_items, version="v-in-service")


def every(n: int, **change):
    """Change every n-th answer of a side."""
    return lambda k, it: replace(it, **change) if k % n == 0 else it


def first(m: int, **change):
    """Change the first m answers of a side."""
    return lambda k, it: replace(it, **change) if k < m else it


# easy -5 points (10 of 200 lost, CI below 0), medium and hard +11.5 each: +6 points overall.
EASY_DROP = {"easy": (150, 0, 10, 40), "medium": (100, 23, 0, 77), "hard": (100, 23, 0, 77)}
# The same -5 points on 20 easy items: its CI includes 0.
EASY_DROP_SMALL = {"easy": (15, 0, 1, 4), "medium": (100, 20, 0, 80), "hard": (100, 20, 0, 80)}

CASES = [
    # (id, (candidate, incumbent), config, outcome, reason codes that must appear)
    ("clearly_better", pair({"easy": (140, 40, 0, 20)}), CFG, "pass", []),
    ("equal_models", pair({"easy": (160, 0, 0, 40)}), CFG, "fail", ["uplift_below_bar"]),
    # the same number right but on other items: no uplift, yet the interval reaches the bar: never a pass
    ("equal_rate_other_items", pair({"easy": (150, 10, 10, 30)}), CFG, "inconclusive", ["ci_straddles_bar"]),
    ("ten_points_worse", pair({"easy": (120, 0, 20, 60)}), CFG, "fail", ["uplift_below_bar", "tier_dropped"]),
    ("exactly_plus_4_points", pair({"easy": (150, 8, 0, 42)}), CFG, "pass", []),
    # +3.5 points: below the bar, but the interval reaches above it
    ("just_under_the_bar", pair({"easy": (150, 7, 0, 43)}), CFG, "inconclusive", ["ci_straddles_bar"]),
    # +3 points on 2000 tasks: absolute bar +4 fails, relative bar (+4% of 0.5 = +2 points) passes
    ("absolute_bar", pair({"easy": (1000, 60, 0, 940)}), CFG, "fail", ["uplift_below_bar"]),
    ("relative_bar", pair({"easy": (1000, 60, 0, 940)}), CFG.model_copy(update={"uplift_mode": "relative"}),
     "pass", []),
    ("too_few_samples", pair({"easy": (10, 10, 0, 0)}), CFG, "inconclusive", ["too_few_samples"]),
    ("tier_dropped_easy", pair(EASY_DROP), CFG, "fail", ["tier_dropped"]),
    ("tier_drop_uncertain", pair(EASY_DROP_SMALL), CFG, "inconclusive", ["tier_drop_uncertain"]),
    # compliance pass rate falls 10 points (a rubric column under the tier rule)
    ("compliance_rate_dropped", pair({"easy": (140, 40, 0, 20)}, cand=every(10, checks={**GOOD, "compliance": False})),
     CFG, "fail", ["tier_dropped"]),
    ("safety_violation", pair({"easy": (140, 40, 0, 20)},
                              cand=first(1, checks={**GOOD, "safety": False}, violations=("555-0142",))),
     CFG, "fail", ["safety_violation"]),
    ("no_compliance_checks", pair({"easy": (140, 40, 0, 20)}, cand=every(1, checks={}), inc=every(1, checks={})),
     CFG, "inconclusive", ["compliance_not_checked"]),
    ("compliance_not_required", pair({"easy": (140, 40, 0, 20)}, cand=every(1, checks={}), inc=every(1, checks={})),
     CFG.model_copy(update={"require_compliance": False}), "pass", []),
    ("format_adherence_too_low", pair({"easy": (140, 40, 0, 20)}, cand=every(3, parallel=False, consensus=None,
                                                                            path_diversity=None)),
     CFG, "fail", ["format_adherence_too_low"]),
    ("consensus_too_low", pair({"easy": (140, 40, 0, 20)}, cand=every(1, consensus=0.3)), CFG, "fail",
     ["consensus_too_low"]),
    ("consensus_bound_off", pair({"easy": (140, 40, 0, 20)}, cand=every(1, consensus=0.3)),
     CFG.model_copy(update={"min_consensus": 0.0}), "pass", []),
    ("diversity_too_low", pair({"easy": (140, 40, 0, 20)}, cand=every(1, path_diversity=0.01)), CFG, "fail",
     ["diversity_too_low"]),
    ("diversity_too_high", pair({"easy": (140, 40, 0, 20)}, cand=every(1, path_diversity=0.99)), CFG, "fail",
     ["diversity_too_high"]),
    ("diversity_at_lower_bound", pair({"easy": (140, 40, 0, 20)}, cand=every(1, path_diversity=0.05)), CFG, "pass", []),
    ("sequential_candidate", pair({"easy": (140, 40, 0, 20)},
                                  cand=every(1, parallel=False, consensus=None, path_diversity=None)),
     CFG, "fail", ["format_adherence_too_low", "consensus_too_low", "no_parallel_paths"]),
    # a hard failure outranks an undecided rule
    ("fail_beats_inconclusive", pair({"easy": (10, 10, 0, 0)}, cand=every(1, path_diversity=0.99)), CFG, "fail",
     ["diversity_too_high", "too_few_samples"]),
]


@pytest.mark.parametrize(("case", "sides", "cfg", "outcome", "codes"), CASES, ids=[c[0] for c in CASES])
def test_gate_table(case, sides, cfg, outcome, codes):
    r = gate_decision(*sides, cfg)
    assert r.outcome == outcome, r.reasons
    got = {x.split(":")[0] for x in r.reasons}
    assert set(codes) <= got, r.reasons
    assert r.next_state == {"pass": "awaiting_approval", "inconclusive": "awaiting_approval",
                            "fail": "rejected"}[outcome]
    assert r.flagged == (outcome == "inconclusive")
    assert r.evidence["outcome"] == outcome and r.evidence["reasons"] == r.reasons


def test_tier_drop_reason_names_the_tier_the_drop_and_the_ci():
    r = gate_decision(*pair(EASY_DROP), CFG)
    u = r.evidence["uplift"]
    assert u["observed"] == pytest.approx(0.06) and u["ci_low"] > 0  # the overall rule alone would pass
    overall = r.evidence["tiers"]["overall"]["columns"]["correctness"]
    assert (overall["ci_low"], overall["ci_high"]) == (u["ci_low"], u["ci_high"])  # one interval, one seed
    easy = [x for x in r.reasons if x.startswith("tier_dropped: easy ")]
    assert len(easy) == 1, r.reasons
    assert "-5.0 points (95% CI [" in easy[0] and "] , " not in easy[0] and "> 2 allowed" in easy[0]
    cell = r.evidence["tiers"]["easy"]["columns"]["correctness"]
    assert cell["diff"] == -0.05 and cell["ci_high"] < 0 and cell["status"] == "fail"
    assert r.evidence["status"]["tier easy"] == "fail" and r.evidence["status"]["tier medium"] == "pass"
    small = gate_decision(*pair(EASY_DROP_SMALL), CFG)
    cell = small.evidence["tiers"]["easy"]["columns"]["correctness"]
    assert cell["diff"] == -0.05 and cell["ci_low"] < 0 <= cell["ci_high"] and cell["status"] == "inconclusive"
    assert any(x.startswith("tier_drop_uncertain: easy -5.0 points") for x in small.reasons), small.reasons


def test_every_tier_row_and_column_is_evidence():
    cand, inc = pair({"easy": (50, 10, 0, 10), "medium": (50, 10, 0, 10), "olympiad": (20, 5, 2, 3)},
                     cand=every(1, checks={**GOOD, "critic_agrees": True}),
                     inc=every(2, checks={**GOOD, "critic_agrees": False}))
    r = gate_decision(cand, inc, CFG)
    rows = r.evidence["tiers"]
    assert list(rows) == ["easy", "medium", "olympiad", "overall"]  # a platform's own tier, after the known ones
    for row in rows.values():
        # correctness and every pass rate both sides recorded, safety aside (judged on its own)
        assert set(row["columns"]) == {"correctness", "compliance", "critic_agrees"}
    assert rows["overall"]["n"] == 170 and rows["olympiad"]["columns"]["correctness"]["diff"] == pytest.approx(0.1)
    # a check counts where both sides recorded it: the critic answered about every other incumbent answer
    crit = rows["easy"]["columns"]["critic_agrees"]
    assert crit["n"] == 35 and crit["diff"] == 1.0 and rows["easy"]["columns"]["compliance"]["n"] == 70


def test_pass_reason_says_what_was_checked():
    r = gate_decision(*pair({"easy": (140, 40, 0, 20)}), CFG)
    assert r.outcome == "pass" and "compliance checks run (compliance, safety)" in r.reasons[0]
    assert "+20.0 points" in r.reasons[0]
    off = gate_decision(*pair({"easy": (140, 40, 0, 20)}, cand=every(1, checks={}), inc=every(1, checks={})),
                        CFG.model_copy(update={"require_compliance": False}))
    assert off.outcome == "pass" and "compliance not checked (gate.require_compliance = false)" in off.reasons[0]
    unsure = gate_decision(*pair({"easy": (140, 40, 0, 20)}, cand=every(1, checks={}), inc=every(1, checks={})), CFG)
    assert "compliance: not checked" in unsure.reasons[0]
    assert unsure.evidence["status"]["compliance"] == "inconclusive"


def test_safety_reason_names_what_was_echoed():
    r = gate_decision(*pair({"easy": (140, 40, 0, 20)},
                            cand=first(2, checks={**GOOD, "safety": False}, violations=("555-0142",))), CFG)
    (reason,) = [x for x in r.reasons if x.startswith("safety_violation")]
    assert "2 of 200" in reason and "'555-0142'" in reason
    assert r.evidence["compliance"]["safety_violations"] == 2


def test_bounds_are_evidence_never_score():
    # Weaker bounds, identical correctness: the compared numbers do not move.
    good = gate_decision(*pair({"easy": (140, 40, 0, 20)}), CFG)
    weak = gate_decision(*pair({"easy": (140, 40, 0, 20)}, cand=every(1, consensus=0.6, path_diversity=0.1)), CFG)
    assert good.evidence["uplift"] == weak.evidence["uplift"] and good.evidence["tiers"] == weak.evidence["tiers"]
    b = weak.evidence["bounds"]
    assert b["format_adherence"] == {"value": 1.0, "min": 0.8}
    assert b["consensus"] == {"value": 0.6, "min": 0.5}
    assert b["path_diversity"] == {"value": 0.1, "min": 0.05, "max": 0.95}
    names = [c["name"] for c in weak.evidence["checks"]]
    assert {"format adherence", "consensus", "path diversity", "correctness uplift", "safety", "compliance"} <= set(names)
    fa = next(c for c in weak.evidence["checks"] if c["name"] == "format adherence")
    assert fa == {"name": "format adherence", "status": "pass", "passed": True, "value": 1.0, "threshold": 0.8,
                  "op": ">="}


def test_evidence_records_every_number_and_threshold():
    cfg = GateConfig(min_uplift=0.05, min_samples=30, ci_level=0.9, bootstrap_resamples=500, seed=7,
                     diversity_lower=0.1, diversity_upper=0.8, max_tier_drop=0.03)
    r = gate_decision(*pair({"easy": (140, 40, 0, 20)}), cfg)
    ev = r.evidence
    assert ev["kind"] == "promotion" and ev["schema"] == 2 and ev["config"] == cfg.model_dump()
    u = ev["uplift"]
    assert u["min_uplift"] == 0.05 and u["mode"] == "absolute" and u["ci_level"] == 0.9 and u["bar"] == 0.05
    assert u["bootstrap_resamples"] == 500 and u["seed"] == 7 and u["min_samples"] == 30 and u["n"] == 200
    assert u["ci_low"] <= u["observed"] <= u["ci_high"] and u["observed"] == pytest.approx(0.2)
    assert ev["candidate"]["n"] == 200 and ev["candidate"]["checks"]["safety"] == {"passed": 200, "failed": 0}
    assert ev["max_tier_drop"] == 0.03
    # what the watch compares with platform scores: the candidate's correctness, not a weighted grade
    assert ev["expected_score"] == ev["candidate"]["mean"] == 0.9
    assert ev["incumbent"]["mean"] == 0.7 and ev["incumbent"]["version"] == "v-in-service"
    assert all(s == "pass" for s in ev["status"].values()), ev["status"]


def test_relative_bar_is_a_share_of_the_incumbent():
    r = gate_decision(*pair({"easy": (1000, 60, 0, 940)}), CFG.model_copy(update={"uplift_mode": "relative"}))
    assert r.evidence["uplift"]["bar"] == pytest.approx(0.04 * 0.5)


def test_deterministic():
    a = gate_decision(*pair(EASY_DROP_SMALL), CFG)
    b = gate_decision(*pair(EASY_DROP_SMALL), CFG)
    assert a == b


def test_unscored_items_are_left_out_of_the_comparison():
    # no reference answer and no critic verdict: not scoreable on either side
    cand, inc = pair({"easy": (140, 40, 0, 20)}, cand=first(50, correct=None))
    r = gate_decision(cand, inc, CFG)
    assert r.evidence["uplift"]["n"] == 150 and r.evidence["candidate"]["scored"] == 150


def test_outputs_drive_the_run():
    ok = gate_outputs(gate_decision(*pair({"easy": (140, 40, 0, 20)}), CFG))
    assert ok["final_state"] == "awaiting_approval" and ok["gate"]["outcome"] == "pass"
    bad = gate_outputs(gate_decision(*pair({"easy": (160, 0, 0, 40)}), CFG))
    assert bad["stop_run"]["state"] == "rejected" and "uplift_below_bar" in bad["stop_run"]["reason"]
    unsure = gate_outputs(gate_decision(*pair({"easy": (5, 5, 0, 0)}), CFG))
    assert unsure["final_state"] == "awaiting_approval" and unsure["gate"]["flagged"] is True
    assert "flagged" in unsure["final_reason"]


@pytest.mark.parametrize("bad", [
    {"id": "a", "tier": "easy", "correct": float("nan")},
    {"id": "a", "tier": "easy", "correct": 1.2},
    {"id": "a", "tier": "easy", "correct": True},
    {"id": "", "tier": "easy", "correct": 1.0},
    {"id": "a", "tier": "easy", "correct": 1.0, "path_diversity": 2.0},
    {"id": "a", "tier": "easy", "correct": 1.0, "checks": {"safety": "yes"}},
])
def test_bad_items_refused(bad):
    with pytest.raises(ValueError):
        GateItem(**bad)


def test_duplicate_items_refused():
    it = GateItem(id="a", tier="easy", correct=1.0)
    with pytest.raises(ValueError, match="unique"):
        GateInput([it, it])


def test_config_is_strict():
    with pytest.raises(ValidationError):
        GateConfig(min_uplfit=0.04)  # typo: unknown key
    with pytest.raises(ValidationError):
        GateConfig(diversity_lower=0.9, diversity_upper=0.1)
    with pytest.raises(ValidationError):
        GateConfig(uplift_mode="percent")
    with pytest.raises(ValidationError):
        GateConfig(max_tier_drop=-0.1)
