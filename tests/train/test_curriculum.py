"""Curriculum decisions as tables: tier promotion, the scheduler's transition records, explore/verify, stop criteria."""

from __future__ import annotations

import pytest

from pr1d.params import CurriculumParams, params_from
from pr1d.train.curriculum import (
    Phase,
    TierScheduler,
    TrainingHistory,
    explore_verify_phase,
    plateaued,
    stop_decision,
    tier_move,
)

CFG = CurriculumParams(promote_accuracy=0.8, tier_plateau_windows=3, tier_min_improvement=0.01, accuracy_window=10)

# --- plateau and tier_move --------------------------------------------------------------------------

PLATEAU = [
    # (scores, windows, min_improvement, plateaued)
    ([], 3, 0.01, False),
    ([0.5, 0.5, 0.5], 3, 0.01, False),  # 3 windows but no baseline before them
    ([0.5, 0.5, 0.5, 0.5], 3, 0.01, True),
    ([0.5, 0.50, 0.505, 0.509], 3, 0.01, True),  # under 1 point better
    ([0.5, 0.5, 0.5, 0.51], 3, 0.01, False),  # exactly 1 point counts (float rounding tolerated)
    ([0.5, 0.6, 0.4, 0.4, 0.4], 3, 0.01, True),  # compared with the best earlier window, not the last
    ([0.5, 0.6, 0.55, 0.58, 0.605], 3, 0.01, True),  # half a point over the best earlier window
    ([0.5, 0.6, 0.55, 0.58, 0.615], 3, 0.01, False),
    ([0.7, 0.6, 0.5, 0.4], 3, 0.01, True),  # a decline is no improvement
    ([0.3, 0.3, 0.3], 2, 0.01, True),
]


@pytest.mark.parametrize(("scores", "windows", "delta", "expected"), PLATEAU)
def test_plateau_table(scores, windows, delta, expected):
    assert plateaued(scores, windows, delta) is expected


TIER_MOVE = [
    ([], None),
    ([0.5], None),
    ([0.79], None),
    ([0.8], "threshold"),
    ([0.3, 0.5, 0.95], "threshold"),
    ([0.3, 0.4, 0.5, 0.6], None),  # improving
    ([0.6, 0.6, 0.6, 0.6], "plateau"),
    ([0.6, 0.55, 0.6, 0.605], "plateau"),
    ([0.6, 0.6, 0.6, 0.85], "threshold"),  # threshold wins over a plateau
]


@pytest.mark.parametrize(("accs", "expected"), TIER_MOVE)
def test_tier_move_table(accs, expected):
    assert tier_move(accs, CFG) == expected


# --- TierScheduler -----------------------------------------------------------------------------------

def outcomes(right: int, n: int = 10) -> list[bool]:
    return [True] * right + [False] * (n - right)


def test_scheduler_walks_easy_medium_hard_with_records():
    s = TierScheduler(CFG)
    assert s.tier == "easy" and s.rolling_accuracy is None
    assert s.observe(1, outcomes(5)) is None
    assert s.observe(2, outcomes(7)) is None
    t = s.observe(3, outcomes(9))
    assert t.to_dict() == {"from_tier": "easy", "to_tier": "medium", "step": 3, "reason": "threshold",
                           "rolling_accuracy": 0.9, "windows": 3}
    assert s.tier == "medium" and s.window_accuracies == []  # the new tier starts with no history
    # Medium stalls at 40%: after a baseline and 3 flat windows it moves up anyway.
    got = [s.observe(10 + k, outcomes(4)) for k in range(4)]
    assert got[:3] == [None, None, None]
    assert (got[3].from_tier, got[3].to_tier, got[3].reason, got[3].rolling_accuracy) == ("medium", "hard", "plateau",
                                                                                         0.4)
    # Hard is the last tier: never a transition, however good or flat.
    assert all(s.observe(20 + k, outcomes(10)) is None for k in range(5))
    assert s.tier == "hard" and [t.reason for t in s.transitions] == ["threshold", "plateau"]


def test_scheduler_windows_span_observations():
    s = TierScheduler(CFG)
    # 25 outcomes in uneven chunks: two full windows (10 + 10), five pending.
    s.observe(0, [True] * 7)
    s.observe(1, [True] * 3 + [False] * 10)
    s.observe(2, [True] * 5)
    assert s.window_accuracies == [1.0, 0.0]


def test_scheduler_start_tier_for_resume():
    s = TierScheduler(CFG, start_tier="medium")
    assert s.tier == "medium"
    with pytest.raises(ValueError, match="not one of the curriculum tiers"):
        TierScheduler(CFG, start_tier="expert")


# --- explore / verify ---------------------------------------------------------------------------------

PHASES = [
    # (explore_segments, verify_segments, segment, name)
    (1, 1, 0, "explore"), (1, 1, 1, "verify"), (1, 1, 2, "explore"), (1, 1, 7, "verify"),
    (2, 1, 0, "explore"), (2, 1, 1, "explore"), (2, 1, 2, "verify"), (2, 1, 3, "explore"),
    (1, 3, 1, "verify"), (1, 3, 3, "verify"), (1, 3, 4, "explore"),
]


@pytest.mark.parametrize(("explore", "verify", "segment", "name"), PHASES)
def test_explore_verify_table(explore, verify, segment, name):
    cfg = CurriculumParams(explore_segments=explore, verify_segments=verify, explore_temperature=1.2,
                           explore_generations=8, verify_temperature=0.6, verify_generations=4)
    expected = Phase("explore", 1.2, 8) if name == "explore" else Phase("verify", 0.6, 4)
    assert explore_verify_phase(segment, cfg) == expected


def test_explore_samples_wider_than_verify_by_default():
    e, v = explore_verify_phase(0, CurriculumParams()), explore_verify_phase(1, CurriculumParams())
    assert e.temperature > v.temperature and e.num_generations > v.num_generations


# --- stop criteria ------------------------------------------------------------------------------------

STOP_CFG = CurriculumParams(plateau_windows=3, stop_min_improvement=0.01, reward_window=5, reward_variance=0.02,
                            min_steps=10, max_steps=100, max_seconds=600)
NOISY = [0.1, 0.9, 0.2, 0.8, 0.3]  # variance 0.1
FLAT = [0.50, 0.52, 0.49, 0.51, 0.50]  # variance 0.0001
RISING = [0.40, 0.42, 0.44, 0.46, 0.48]  # variance 0.0008, but +0.06 from the first half to the second
STOP = [
    ("nothing yet", TrainingHistory(step=20, rewards=NOISY, eval_scores=[0.4, 0.5]), None),
    ("step budget", TrainingHistory(step=100, rewards=NOISY), "step_budget"),
    ("step budget beats the others", TrainingHistory(step=150, rewards=FLAT, eval_scores=[0.5] * 4), "step_budget"),
    ("time budget", TrainingHistory(step=20, elapsed_s=600.0, rewards=NOISY), "time_budget"),
    ("under the time budget", TrainingHistory(step=20, elapsed_s=599.0, rewards=NOISY), None),
    ("plateau", TrainingHistory(step=40, rewards=NOISY, eval_scores=[0.50, 0.50, 0.505, 0.509]), "plateau"),
    ("1 point better is progress", TrainingHistory(step=40, rewards=NOISY, eval_scores=[0.5, 0.5, 0.5, 0.51]), None),
    ("plateau needs 3 windows after a baseline", TrainingHistory(step=40, rewards=NOISY, eval_scores=[0.5] * 3), None),
    ("reward stable", TrainingHistory(step=40, rewards=NOISY + FLAT), "reward_stable"),
    ("reward noisy", TrainingHistory(step=40, rewards=FLAT + NOISY), None),
    ("steady but still rising is not stable", TrainingHistory(step=40, rewards=NOISY + RISING), None),
    ("steady and falling is stable (no longer rising)", TrainingHistory(step=40, rewards=RISING[::-1]),
     "reward_stable"),
    ("too few rewards for the window", TrainingHistory(step=40, rewards=FLAT[:4]), None),
    ("a NaN reward in the window is not stability", TrainingHistory(step=40, rewards=FLAT[:4] + [float("nan")]), None),
    ("plateau before min_steps does not stop", TrainingHistory(step=9, rewards=FLAT, eval_scores=[0.5] * 4), None),
    ("plateau beats reward stable", TrainingHistory(step=40, rewards=FLAT, eval_scores=[0.5] * 4), "plateau"),
]


@pytest.mark.parametrize(("name", "history", "reason"), STOP, ids=[c[0] for c in STOP])
def test_stop_criteria_table(name, history, reason):
    d = stop_decision(history, STOP_CFG)
    assert (d.reason if d else None) == reason
    if d:
        assert d.step == history.step and d.detail and d.to_dict()["reason"] == reason


def test_budgets_and_variance_can_be_turned_off():
    cfg = CurriculumParams(max_steps=0, max_seconds=0, reward_variance=0, min_steps=0, reward_window=5)
    assert stop_decision(TrainingHistory(step=10**6, elapsed_s=10**6, rewards=FLAT), cfg) is None


# --- config --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tiers": ()}, "non-empty"),
    ({"tiers": ("easy", "easy")}, "distinct"),
    ({"promote_accuracy": 80}, "0..1"),
    ({"accuracy_window": 0}, "accuracy_window must be >= 1"),
    ({"verify_generations": 1}, "GRPO's advantage"),
    ({"explore_temperature": 0.5, "verify_temperature": 0.7}, "explore samples wider"),
    ({"max_steps": -1}, ">= 0"),
])
def test_config_errors_say_how_to_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurriculumParams(**kwargs)


def test_config_fields_are_documented_and_mapping_is_strict():
    assert all(f.description for f in CurriculumParams.model_fields.values())
    assert params_from(CurriculumParams, {"max_steps": 5, "tiers": ["easy", "hard"]}, "curriculum").tiers == (
        "easy", "hard")
    with pytest.raises(ValueError, match="unknown key.*max_step"):
        params_from(CurriculumParams, {"max_step": 5}, "curriculum")
