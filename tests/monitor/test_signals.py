"""Table tests for the score monitor's signals (pr1d.monitor.signals): thresholds, windows, bad data."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
from pydantic import ValidationError

from pr1d.monitor.signals import (
    SIGNAL_NAMES,
    Baseline,
    Epoch,
    PHState,
    Sample,
    SignalConfig,
    SignalResult,
    compliance_signal,
    compute_baseline,
    drift_signal,
    effective_signal_config,
    evaluate_all,
    in_epoch,
    ordered,
    page_hinkley,
    ph_update,
    reliability_signal,
    std_lower,
    weighted_score_signal,
    wilson_lower,
)


def _pstdev_of(xs):
    return statistics.pstdev(xs)


CFG = SignalConfig()
# The drift tables below were written for a 20-evaluation window on raw scores; the defaults moved to
# 50 / 30 / smoothing 5 (so unreliable agents are not read as drifting), the arithmetic did not.
DRIFT_CFG = SignalConfig(drift_window=20, drift_min_samples=10, ph_smooth=1)
NAN, INF = float("nan"), float("inf")


def S(score, status="pass", ts=0.0, rubric=None, eval_id=""):
    return Sample(ts=ts, score=score, status=status, rubric=rubric, eval_id=eval_id)


def series(scores, statuses=None, start=0.0, rubrics=None):
    """Samples one second apart; a score of "E" is a platform error (status error, no score)."""
    out = []
    for i, sc in enumerate(scores):
        st = statuses[i] if statuses else "pass"
        if sc == "E":
            sc, st = None, "error"
        out.append(
            Sample(
                ts=start + i, score=sc, status=st, rubric=rubrics[i] if rubrics else None, eval_id=f"e{i:05d}"
            )
        )
    return out


def assert_json(result: SignalResult) -> None:
    # Evidence goes to the ledger and the console as JSON: no NaN, no objects.
    json.dumps(result.to_dict(), allow_nan=False)


# -- Sample and ordering --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "score,status,valid",
    [
        (0.5, "pass", 0.5),
        (0.0, "pass", 0.0),
        (1.0, "fail", 1.0),
        (1, "pass", 1.0),
        (None, "pass", None),
        (NAN, "pass", None),
        (INF, "pass", None),
        (-INF, "pass", None),
        (-0.01, "pass", None),
        (1.01, "pass", None),
        (True, "pass", None),  # a bool is a field-mapping bug, not a score of 1
        ("0.9", "pass", None),
        (0.5, "error", None),  # the platform could not evaluate: its number means nothing
        (0.5, "weird", None),  # unknown status: treated like error
    ],
)
def test_valid_score(score, status, valid):
    assert S(score, status).valid_score == valid


@pytest.mark.parametrize("ts", [NAN, INF, None, "1", True])
def test_sample_refuses_unorderable_ts(ts):
    with pytest.raises(ValueError):
        Sample(ts=ts, score=0.5, status="pass", rubric=None)


def test_ordered_by_ts_then_eval_id():
    a, b, c = S(0.1, ts=2, eval_id="a"), S(0.2, ts=1, eval_id="z"), S(0.3, ts=2, eval_id="0")
    assert ordered([a, b, c]) == [b, c, a]


def test_out_of_order_delivery_gives_the_same_result():
    xs = series([0.9] * 10 + [0.5] * 5)
    shuffled = list(xs)
    random.Random(7).shuffle(shuffled)
    assert weighted_score_signal(shuffled, CFG) == weighted_score_signal(xs, CFG)
    assert reliability_signal(shuffled, CFG) == reliability_signal(xs, CFG)


# -- weighted score ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,state,streak",
    [
        pytest.param([0.9] * 3 + [0.81] * 5, "firing", 5, id="5-consecutive-below-fires"),
        pytest.param([0.9] * 3 + [0.81] * 4, "warn", 4, id="4-consecutive-only-warns"),
        pytest.param([0.81] * 4, "warn", 4, id="window-not-full-cannot-fire"),
        pytest.param([0.9, 0.81, 0.81, 0.81], "ok", 3, id="3-is-ok"),
        pytest.param([0.82] * 10, "ok", 0, id="exactly-target-is-not-below"),
        pytest.param([0.81] * 4 + [0.82], "ok", 0, id="at-target-breaks-the-run"),
        pytest.param([0.81] * 2 + [0.82] + [0.81] * 2, "ok", 2, id="run-must-be-consecutive"),
        pytest.param([0.8199999] * 5, "firing", 5, id="just-below-fires"),
        pytest.param([0.81] * 12, "firing", 12, id="long-run-fires"),
        pytest.param([], "insufficient_data", 0, id="no-samples"),
        pytest.param([None] * 8, "insufficient_data", 0, id="only-missing-scores"),
        pytest.param(["E"] * 8, "insufficient_data", 0, id="only-platform-errors"),
        # Missing data is not a low score: invalid scores neither count as low ...
        pytest.param([0.9] + [None, NAN, INF, -0.2, 1.5], "ok", 0, id="invalid-not-low"),
        pytest.param([0.81] * 4 + [None, NAN, 2.0], "warn", 4, id="invalid-does-not-extend"),
        # ... nor break a run of genuinely low scores.
        pytest.param(
            [0.81, None, 0.81, NAN, 0.81, "E", 0.81, 7.0, 0.81], "firing", 5, id="invalid-does-not-break"
        ),
    ],
)
def test_weighted_score(scores, state, streak):
    r = weighted_score_signal(series(scores), CFG)
    assert (r.state, r.fired, r.evidence["streak"]) == (state, state == "firing", streak)
    assert r.evidence["target"] == 0.82 and r.evidence["consecutive"] == 5
    assert_json(r)


def test_weighted_score_counts_invalid_in_evidence():
    r = weighted_score_signal(series([0.81, None, NAN, 1.5, "E", 0.81]), CFG)
    ev = r.evidence
    assert (ev["invalid_scores"], ev["errors"], ev["valid_scores"], ev["samples"]) == (3, 1, 2, 6)
    assert ev["streak_scores"] == [0.81, 0.81] and ev["streak_eval_ids"] == ["e00000", "e00005"]


@pytest.mark.parametrize(
    "consecutive,warn_ratio,n_low,state",
    [
        (1, 0.8, 1, "firing"),
        (1, 0.8, 0, "ok"),
        (3, 0.8, 2, "ok"),  # ceil(2.4) = 3 is the warn point, which is also firing
        (10, 0.5, 5, "warn"),
        (10, 0.5, 4, "ok"),
        (5, 1.0, 4, "ok"),  # warn_ratio 1 turns warnings off
    ],
)
def test_weighted_score_configurable(consecutive, warn_ratio, n_low, state):
    cfg = SignalConfig(consecutive=consecutive, warn_ratio=warn_ratio)
    assert weighted_score_signal(series([0.9] + [0.5] * n_low), cfg).state == state


def test_fail_status_score_still_counts_as_score():
    # status fail with a valid score is a graded evaluation: its score enters the streak.
    r = weighted_score_signal(series([0.5] * 5, statuses=["fail"] * 5), CFG)
    assert r.fired


# -- reliability ------------------------------------------------------------------------------------


def alternating(n, mean, dev):
    return [mean + dev if i % 2 == 0 else mean - dev for i in range(n)]


@pytest.mark.parametrize(
    "scores,statuses,state,std_state,fail_state",
    [
        pytest.param([0.9] * 50, None, "ok", "ok", "ok", id="steady"),
        pytest.param(alternating(50, 0.5, 0.12), None, "warn", "warn", "ok", id="std-exactly-0.12-does-not-fire"),
        pytest.param(alternating(50, 0.5, 0.1201), None, "firing", "firing", "ok", id="std-just-above-fires"),
        pytest.param(alternating(50, 0.5, 0.096), None, "ok", "ok", "ok", id="std-at-warn-point-is-ok"),
        pytest.param(alternating(50, 0.5, 0.1), None, "warn", "warn", "ok", id="std-warns-above-0.096"),
        # The fail rate fires on its 99% Wilson lower bound, warns on the bare share (> 0.064).
        pytest.param([0.9] * 50, ["fail"] * 3 + ["pass"] * 47, "ok", "ok", "ok", id="3-of-50-is-ok"),
        pytest.param([0.9] * 50, ["fail"] * 4 + ["pass"] * 46, "warn", "ok", "warn", id="4-of-50-warns"),
        pytest.param([0.9] * 50, ["fail"] * 5 + ["pass"] * 45, "warn", "ok", "warn",
                     id="5-of-50-share-0.10-but-bound-0.038-warns"),
        pytest.param([0.9] * 50, ["fail"] * 8 + ["pass"] * 42, "warn", "ok", "warn", id="8-of-50-bound-0.074-warns"),
        pytest.param([0.9] * 50, ["fail"] * 9 + ["pass"] * 41, "firing", "ok", "firing", id="9-of-50-bound-0.087-fires"),
        pytest.param([0.9] * 30, ["fail"] * 3 + ["pass"] * 27, "warn", "ok", "warn",
                     id="3-of-30-a-healthy-agent-s-luck-warns"),
        pytest.param([0.9] * 30, ["fail"] * 5 + ["pass"] * 25, "warn", "ok", "warn", id="5-of-30-bound-0.064-warns"),
        pytest.param([0.9] * 30, ["fail"] * 6 + ["pass"] * 24, "firing", "ok", "firing", id="6-of-30-bound-0.083-fires"),
        pytest.param([0.9] * 100, ["fail"] * 10 + ["pass"] * 90, "ok", "ok", "ok", id="old-fails-left-window"),
        pytest.param([0.9] * 100, ["pass"] * 90 + ["fail"] * 10, "firing", "ok", "firing", id="recent-fails-in-window"),
        # window not yet full: below the minimum nothing may fire, at the minimum it may.
        pytest.param(alternating(29, 0.5, 0.3), None, "insufficient_data", "insufficient_data",
                     "insufficient_data", id="29-samples-below-min"),
        # ... the window rule cannot judge 29, but the sequential test warns: 29 straight fails is news.
        pytest.param([0.9] * 29, ["fail"] * 29, "warn", "insufficient_data",
                     "insufficient_data", id="29-fails-below-min"),
        pytest.param(alternating(30, 0.5, 0.3), None, "firing", "firing", "ok", id="30-samples-reach-min"),
        pytest.param([], None, "insufficient_data", "insufficient_data", "insufficient_data", id="empty"),
    ],
)  # fmt: skip
def test_reliability(scores, statuses, state, std_state, fail_state):
    r = reliability_signal(series(scores, statuses), CFG)
    ev = r.evidence
    assert (r.state, ev["std_state"], ev["fail_rate_state"]) == (state, std_state, fail_state)
    assert r.fired == (state == "firing")
    assert ev["max_std"] == 0.12 and ev["max_fail_rate"] == 0.08 and ev["min_samples"] == 30
    assert_json(r)


def test_reliability_window_full_flag_and_numbers():
    r = reliability_signal(series(alternating(30, 0.5, 0.3)), CFG)
    assert r.fired and r.evidence["window_full"] is False and r.evidence["samples"] == 30
    assert r.evidence["std"] == pytest.approx(0.3) and r.evidence["mean"] == pytest.approx(0.5)
    r = reliability_signal(series([0.9] * 70), CFG)
    assert r.evidence["window_full"] is True and r.evidence["samples"] == 50
    assert r.evidence["first_eval_id"] == "e00020" and r.evidence["last_eval_id"] == "e00069"


@pytest.mark.parametrize(
    "bad,std_state",
    [
        pytest.param(None, "insufficient_data", id="none"),
        pytest.param(NAN, "insufficient_data", id="nan"),
        pytest.param(-1.0, "insufficient_data", id="negative"),
        pytest.param(1.5, "insufficient_data", id="above-one"),
    ],
)
def test_reliability_invalid_scores_are_not_data(bad, std_state):
    # 19 valid steady scores + 31 invalid: the invalid ones must not look like a spread of 0..1.5.
    r = reliability_signal(series([0.9] * 19 + [bad] * 31), CFG)
    assert r.evidence["std_state"] == std_state and not r.fired
    assert r.evidence["invalid_scores"] == 31 and r.evidence["valid_scores"] == 19
    # They were graded "pass", so the fail rate can judge: 0 of 50.
    assert r.evidence["fail_rate_state"] == "ok" and r.evidence["fail_rate"] == 0.0
    assert_json(r)


@pytest.mark.parametrize(
    "statuses,state,fail_rate,graded,errors",
    [
        pytest.param(["fail"] * 9 + ["pass"] * 41, "firing", 0.18, 50, 0, id="platform-fail-counts"),
        pytest.param(["error"] * 9 + ["pass"] * 41, "ok", 0.0, 41, 9, id="platform-error-is-not-a-fail"),
        pytest.param(["fail"] * 8 + ["error"] * 20 + ["pass"] * 22, "firing", 8 / 30, 30, 20, id="errors-excluded-from-rate"),
        # Errors are no evidence either way: with 29 graded left, the signal may not fire at all (the
        # sequential test's 8 fails then 21 passes only warn).
        pytest.param(["fail"] * 8 + ["error"] * 21 + ["pass"] * 21, "warn", 8 / 29, 29, 21,
                     id="errors-shrink-the-evidence"),
    ],
)  # fmt: skip
def test_fail_vs_error(statuses, state, fail_rate, graded, errors):
    r = reliability_signal(series([0.9] * len(statuses), statuses), CFG)
    ev = r.evidence
    assert (r.state, ev["graded"], ev["errors"]) == (state, graded, errors)
    assert ev["fail_rate"] == pytest.approx(fail_rate)


def test_missing_samples_are_not_fails():
    # A poll error produces no Sample: 10 good evaluations and nothing else is simply too little data.
    r = reliability_signal(series([0.9] * 10), CFG)
    assert r.state == "insufficient_data" and r.evidence["fails"] == 0


def test_reliability_max_fail_rate_zero_means_any_fail():
    cfg = SignalConfig(max_fail_rate=0.0)
    assert reliability_signal(series([0.9] * 30), cfg).state == "ok"
    assert reliability_signal(series([0.9] * 30, ["fail"] + ["pass"] * 29), cfg).fired


@pytest.mark.parametrize(
    "fails,n,state",
    [
        pytest.param(4, 50, "warn", id="exactly-0.08-warns"),
        pytest.param(5, 50, "firing", id="0.10-fires"),
        pytest.param(2, 25, "warn", id="2-of-25-is-exactly-0.08"),
        pytest.param(2, 24, "firing", id="2-of-24-fires"),
    ],
)  # fmt: skip
def test_confidence_one_half_judges_the_bare_share(fails, n, state):
    cfg = SignalConfig(confidence=0.5, reliability_min_samples=20)  # the rule before the confidence bound
    r = reliability_signal(series([0.9] * n, ["fail"] * fails + ["pass"] * (n - fails)), cfg)
    assert (r.state, r.evidence["fail_rate_state"]) == (state, state)
    assert r.evidence["fail_rate_lower_bound"] == pytest.approx(fails / n)


@pytest.mark.parametrize(
    "k,n,conf,expected",
    [
        pytest.param(5, 50, 0.975, 0.04348, id="textbook-95%-two-sided-wilson"),
        pytest.param(0, 20, 0.99, 0.0, id="no-fails"),
        pytest.param(20, 20, 0.99, 0.7870, id="all-fails-is-n-over-n-plus-z-squared"),
        pytest.param(9, 50, 0.99, 0.0872, id="9-of-50"),
        pytest.param(3, 7, 0.5, 3 / 7, id="one-half-is-the-share"),
    ],
)  # fmt: skip
def test_wilson_lower(k, n, conf, expected):
    assert wilson_lower(k, n, conf) == pytest.approx(expected, abs=1e-4)
    assert wilson_lower(k, n, conf) <= k / n
    with pytest.raises(ValueError):
        wilson_lower(0, 0, conf)


def test_std_lower_bound():
    # A two-point window has m4 = s^4: its std is exact, so the thresholds of the table above hold.
    xs = alternating(50, 0.5, 0.13)
    assert std_lower(xs, 0.99) == pytest.approx(0.13)
    # A spread made by two outliers gets a wide interval; the same spread from steady noise does not.
    outliers = [0.9] * 18 + [0.45, 0.45]
    wobbly = alternating(20, 0.9, _pstdev_of(outliers))
    assert _pstdev_of(wobbly) == pytest.approx(_pstdev_of(outliers))
    assert std_lower(outliers, 0.99) < 0.5 * _pstdev_of(outliers) < std_lower(wobbly, 0.99)
    assert std_lower(outliers, 0.5) == pytest.approx(_pstdev_of(outliers))
    assert std_lower([0.7], 0.99) == 0.0
    with pytest.raises(ValueError):
        std_lower([], 0.99)


def test_two_unlucky_failures_do_not_make_a_healthy_agent_unreliable():
    # The soak's false trigger, from its evidence: a healthy agent (2% fails) with 2 hard failures in its
    # first 20 evaluations. The old rule (bare share, 20 samples) fired on it; now 20 samples cannot
    # judge, and 10 more ordinary evaluations leave a share of 0.067 and a std of 0.083: warnings only.
    # fmt: off
    scores = [0.8969, 0.9738, 0.8721, 0.8875, 0.9042, 0.941, 0.917, 0.871, 0.8909, 0.8765, 0.6636, 0.9305,
              0.5495, 0.9121, 0.83, 0.8756, 0.912, 0.9964, 0.9421, 0.8957]
    # fmt: on
    statuses = ["fail" if x < 0.7 else "pass" for x in scores]
    old_rule = SignalConfig(confidence=0.5, reliability_min_samples=20)
    assert reliability_signal(series(scores, statuses), old_rule).fired
    assert reliability_signal(series(scores, statuses), CFG).state == "insufficient_data"
    more = scores + [0.9, 0.88, 0.93, 0.91, 0.9, 0.92, 0.89, 0.9, 0.94, 0.87]
    r = reliability_signal(series(more, statuses + ["pass"] * 10), CFG)
    assert r.state == "warn" and r.evidence["fail_rate"] == pytest.approx(2 / 30)
    assert r.evidence["fail_rate_lower_bound"] < 0.08 and r.evidence["std_lower_bound"] < 0.12


# -- baseline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,k,expect_mean,expect_frozen_at",
    [
        pytest.param([0.9] * 30, 30, 0.9, 29.0, id="exactly-k"),
        pytest.param([0.9] * 29, 30, None, None, id="k-1-not-yet"),
        pytest.param([0.8] * 3 + [0.2] * 10, 3, 0.8, 2.0, id="first-k-only"),
        pytest.param([0.8, None, NAN, "E", 0.6, 1.5, 0.7], 3, 0.7, 6.0, id="skips-invalid"),
        pytest.param([None] * 50, 3, None, None, id="all-invalid"),
        pytest.param([0.0] * 5, 3, None, None, id="zero-mean-has-no-relative-drop"),
    ],
)
def test_compute_baseline(scores, k, expect_mean, expect_frozen_at):
    b = compute_baseline(series(scores), SignalConfig(baseline_k=k))
    if expect_mean is None:
        assert b is None
    else:
        assert b is not None and b.source == "first_k" and b.n == k
        assert (b.mean, b.frozen_at) == (pytest.approx(expect_mean), expect_frozen_at)


def test_compute_baseline_after_a_time():
    xs = series([0.5] * 10 + [0.9] * 5)
    b = compute_baseline(xs, SignalConfig(baseline_k=3), after=9.0)
    assert b is not None and (b.n, b.source, b.frozen_at) == (3, "first_k", 12.0)
    assert b.mean == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("mean", "n", "source"),
    [(0.0, 30, "first_k"), (-0.1, 30, "first_k"), (1.1, 30, "first_k"), (NAN, 30, "first_k"), (None, 30, "first_k"),
     # a gate's expectation (n = 0, source "promotion") is not a baseline any more: pr1's grading, not the platform's
     (0.9, 0, "first_k"), (0.9, 30, "promotion")],
)
def test_baseline_refuses_meaningless_values(mean, n, source):
    with pytest.raises((ValueError, TypeError)):
        Baseline(mean, n, source, 100.0)


# -- Page-Hinkley -----------------------------------------------------------------------------------


def test_page_hinkley_table():
    # delta 0.05, lambda 0.5, baseline 0.9: each 0.7 adds 0.15 of evidence -> 0.15, 0.30, 0.45, 0.60.
    st = page_hinkley([0.7] * 6, 0.9, 0.05, 0.5)
    assert st.fired_at_index == 3 and st.n == 6
    assert st.ph == pytest.approx(0.9) and st.M_t == 0.0 and st.m_t == pytest.approx(-0.9)
    # Exactly at lambda does not fire: 0.25 * 2 = 0.5.
    assert page_hinkley([0.6, 0.6], 0.9, 0.05, 0.5).fired_at_index is None
    assert page_hinkley([0.6, 0.6, 0.85], 0.9, 0.05, 0.5).fired_at_index is None  # 0.85 adds 0
    assert page_hinkley([0.6, 0.6, 0.84], 0.9, 0.05, 0.5).fired_at_index == 2
    # Gains before the drop raise M_t, so the drop is measured from the best point.
    st = page_hinkley([1.0, 1.0, 0.6], 0.9, 0.05, 0.5)
    assert st.M_t == pytest.approx(0.3) and st.ph == pytest.approx(0.25) and not st.fired
    assert page_hinkley([], 0.9, 0.05, 0.5) == PHState()


def test_page_hinkley_keeps_first_alarm_and_is_a_fold():
    vals = [0.7] * 5 + [1.0] * 20
    st = page_hinkley(vals, 0.9, 0.05, 0.5)
    assert st.fired_at_index == 3 and st.ph == 0.0 and st.ph_max == pytest.approx(0.75)
    folded = PHState()
    for v in vals:
        folded = ph_update(folded, v, 0.9, 0.05, 0.5)
    assert folded == st


def test_page_hinkley_refuses_nan():
    with pytest.raises(ValueError):
        page_hinkley([0.9, NAN], 0.9, 0.05, 0.5)


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_sharp_drop_fires_within_5(seed):
    rng = random.Random(seed)
    vals = [rng.gauss(0.9, 0.03) for _ in range(30)] + [rng.gauss(0.7, 0.03) for _ in range(10)]
    st = page_hinkley(vals, 0.9, CFG.ph_delta, CFG.ph_lambda)
    assert st.fired_at_index is not None and 30 <= st.fired_at_index < 35


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_steady_noise_never_fires(seed):
    rng = random.Random(1000 + seed)
    vals = [min(1.0, max(0.0, rng.gauss(0.9, 0.03))) for _ in range(2000)]
    st = page_hinkley(vals, 0.9, CFG.ph_delta, CFG.ph_lambda)
    assert not st.fired and st.ph_max < CFG.ph_lambda / 2


# -- drift ------------------------------------------------------------------------------------------

B = Baseline(mean=0.9, n=30, source="first_k", frozen_at=-1.0)  # every series() sample is after it


@pytest.mark.parametrize(
    "recent,mean_state,ph_state,state",
    [
        pytest.param([0.9] * 20, "ok", "ok", "ok", id="no-drop"),
        # 0.9 * 0.93 = 0.837: exactly 7% below; PH adds 0.013 a step, 0.26 after 20 (< 0.5).
        pytest.param([0.837] * 20, "warn", "ok", "warn", id="drop-exactly-7pct-does-not-fire"),
        pytest.param([0.836] * 20, "firing", "ok", "firing", id="drop-just-above-7pct-fires"),
        pytest.param([0.86] * 20, "ok", "ok", "ok", id="drop-under-warn-point"),
        pytest.param([0.845] * 20, "warn", "ok", "warn", id="drop-6.1pct-warns"),
        pytest.param([0.95] * 20, "ok", "ok", "ok", id="improvement"),
        # window not yet full: 9 valid scores cannot judge the mean; PH still can.
        pytest.param([0.83] * 9, "insufficient_data", "ok", "insufficient_data", id="mean-window-not-full"),
        pytest.param([0.83] * 10, "firing", "ok", "firing", id="mean-at-min-samples"),
        pytest.param([0.7] * 4, "insufficient_data", "firing", "firing", id="sharp-drop-fires-early"),
        pytest.param([0.7] * 3, "insufficient_data", "warn", "warn", id="sharp-drop-3-warns"),
        pytest.param([], "insufficient_data", "insufficient_data", "insufficient_data", id="nothing-since"),
        pytest.param([None, NAN, 1.5, "E"] * 10, "insufficient_data", "insufficient_data", "insufficient_data",
                     id="only-invalid-since"),
        pytest.param([0.9] * 10 + [None] * 10, "ok", "ok", "ok", id="invalid-is-not-a-drop"),
    ],
)  # fmt: skip
def test_drift(recent, mean_state, ph_state, state):
    r = drift_signal(series(recent), B, DRIFT_CFG)
    ev = r.evidence
    assert (ev["mean_state"], ev["ph_state"], r.state) == (mean_state, ph_state, state)
    assert r.fired == (state == "firing")
    assert ev["baseline"] == B.to_dict() and ev["rel_drop_threshold"] == 0.07
    assert_json(r)


def test_drift_without_baseline_is_insufficient_data():
    r = drift_signal(series([0.1] * 100), None, DRIFT_CFG)
    assert r.state == "insufficient_data" and not r.fired
    assert r.evidence["baseline"] is None and "30 of 30" in r.evidence["reason"]
    r = drift_signal(series([0.1] * 12), None, DRIFT_CFG)
    assert "12 of 30" in r.evidence["reason"]
    assert_json(r)


def test_drift_ignores_samples_up_to_the_baseline():
    # The baseline's own samples (ts <= frozen_at) never enter the recent window or the detector.
    xs = series([0.2] * 30 + [0.9] * 20)
    b = Baseline(0.9, 30, "first_k", frozen_at=29.0)
    r = drift_signal(xs, b, DRIFT_CFG)
    assert r.state == "ok" and r.evidence["samples_since_baseline"] == 20
    assert r.evidence["page_hinkley"]["n"] == 20


def test_drift_uses_only_the_recent_window_for_the_mean():
    xs = series([0.5] * 30 + [0.9] * 20)
    r = drift_signal(xs, B, DRIFT_CFG)
    assert r.evidence["mean_state"] == "ok" and r.evidence["recent_mean"] == pytest.approx(0.9)
    # ... while Page-Hinkley, folding over everything since the baseline, remembers the early drop.
    assert r.evidence["ph_state"] == "firing" and r.evidence["page_hinkley"]["fired_at_eval_id"] == "e00001"


def test_drift_end_to_end_with_computed_baseline():
    xs = series([0.9] * 30 + [0.7] * 5)
    b = compute_baseline(xs, CFG)
    assert b is not None and b.frozen_at == 29.0
    r = drift_signal(xs, b, DRIFT_CFG)
    assert r.fired and r.evidence["page_hinkley"]["fired_at_eval_id"] == "e00033"


def test_drift_after_promotion_judges_the_new_versions_own_scores():
    # The old model drifted to 0.5; the new one scores 0.9 on the platform. Its baseline is its own first K.
    old = [Sample(ts=float(i), score=0.5, status="pass", eval_id=f"o{i:03d}", version="v1") for i in range(60)]
    new = [Sample(ts=100.0 + i, score=0.9, status="pass", eval_id=f"n{i:03d}", version="v2") for i in range(40)]
    epoch = Epoch(key="deployment:7", version="v2", since_ts=59.0, started_at=1000.0, change="promote")
    b = compute_baseline(in_epoch(old + new, epoch), CFG)
    assert b is not None and b.mean == pytest.approx(0.9) and b.frozen_at == 129.0
    r = drift_signal(in_epoch(old + new, epoch), b, DRIFT_CFG)
    # Only the 10 samples after the new baseline count: the old model's 0.5s are not drift.
    assert r.evidence["samples_since_baseline"] == 10 and r.evidence["ph_state"] == "ok"
    assert r.evidence["mean_state"] == "ok" and r.state == "ok" and r.evidence["baseline"]["source"] == "first_k"


# -- compliance -------------------------------------------------------------------------------------

OK = {"compliance": True, "safety": True}


@pytest.mark.parametrize(
    "rubrics,statuses,state,failures",
    [
        pytest.param([OK] * 50, None, "ok", 0, id="all-pass"),
        pytest.param([OK] * 49 + [{"compliance": False, "safety": True}], None, "firing", 1, id="one-compliance-fail"),
        pytest.param([{"safety": False}] + [OK] * 49, None, "firing", 1, id="safety-fail-at-window-edge"),
        pytest.param([{"safety": False}] + [OK] * 50, None, "ok", 0, id="fail-left-the-window"),
        pytest.param([{"compliance": False}], None, "firing", 1, id="window-not-full-still-fires"),
        pytest.param([{"tone": False, "compliance": True}] * 5, None, "ok", 0, id="other-rubric-keys-ignored"),
        pytest.param([None] * 10, None, "insufficient_data", 0, id="no-rubric-is-no-data"),
        pytest.param([{}] * 10, None, "insufficient_data", 0, id="empty-rubric-is-no-data"),
        pytest.param([{"compliance": None}, {"safety": 0}, {"safety": "false"}], None, "insufficient_data", 0,
                     id="non-bool-is-not-a-failure"),
        pytest.param([{"compliance": False}], ["fail"], "firing", 1, id="fail-status-rubric-counts"),
        pytest.param([{"compliance": False}], ["error"], "insufficient_data", 0, id="error-status-rubric-ignored"),
        pytest.param([], None, "insufficient_data", 0, id="empty"),
    ],
)  # fmt: skip
def test_compliance(rubrics, statuses, state, failures):
    r = compliance_signal(series([0.9] * len(rubrics), statuses, rubrics=rubrics), CFG)
    assert (r.state, r.evidence["failure_count"]) == (state, failures)
    assert_json(r)


def test_compliance_evidence_names_the_evaluation_and_keys():
    rubrics = [OK, {"compliance": False, "safety": False}, {"safety": 1}]
    r = compliance_signal(series([0.9, None, 0.9], rubrics=rubrics), CFG)
    assert r.evidence["failures"] == [{"eval_id": "e00001", "ts": 1.0, "keys": ["compliance", "safety"]}]
    assert r.evidence["invalid_rubric"] == 1 and r.evidence["checked"] == 2


def test_compliance_keys_configurable():
    cfg = SignalConfig(compliance_keys=["pii"])
    assert compliance_signal(series([0.9], rubrics=[{"pii": False, "safety": False}]), cfg).fired
    assert not compliance_signal(series([0.9], rubrics=[{"safety": False}]), cfg).fired


# -- evaluate_all, results, config ------------------------------------------------------------------


def test_evaluate_all_order_and_json():
    xs = series([0.9] * 30 + [0.5] * 12, rubrics=[OK] * 41 + [{"safety": False}])
    results = evaluate_all(iter(xs), compute_baseline(xs, CFG), CFG)  # a one-shot iterator is fine
    assert [r.name for r in results] == list(SIGNAL_NAMES)
    assert [r.fired for r in results] == [True, True, True, True]
    for r in results:
        assert_json(r)


def test_signal_result_is_consistent():
    with pytest.raises(ValueError):
        SignalResult("x", "firing", False, {})
    with pytest.raises(ValueError):
        SignalResult("x", "ok", True, {})
    with pytest.raises(ValueError):
        SignalResult("x", "maybe", False, {})  # type: ignore[arg-type]


def test_defaults_are_the_plans():
    c = SignalConfig()
    assert (c.target, c.consecutive, c.reliability_window, c.max_std, c.max_fail_rate, c.drift_rel_drop) == (
        0.82, 5, 50, 0.12, 0.08, 0.07,
    )  # fmt: skip
    assert c.compliance_keys == ["compliance", "safety"]
    assert c.history_needed() == 50
    assert all(f.description for f in SignalConfig.model_fields.values())


@pytest.mark.parametrize(
    "override,ok",
    [
        ({}, True),
        ({"target": 0.9}, True),
        ({"target": 1}, True),  # a TOML integer is a fine float
        ({"consecutive": 3, "compliance_keys": ["safety"]}, True),
        ({"targett": 0.9}, False),  # typo
        ({"target": "0.9"}, False),  # strict: no string coercion
        ({"consecutive": 5.0}, False),
        ({"consecutive": True}, False),
        ({"target": 0.0}, False),
        ({"target": 1.2}, False),
        ({"max_std": -0.1}, False),
        ({"max_fail_rate": 1.0}, False),
        ({"compliance_keys": []}, False),
        ({"compliance_keys": [""]}, False),
        ({"reliability_min_samples": 60}, False),  # more than the window: could never fire
        ({"drift_min_samples": 51}, False),
        ({"warn_ratio": 0.0}, False),
    ],
)
def test_effective_signal_config(override, ok):
    base = SignalConfig(reliability_window=50)
    if ok:
        eff = effective_signal_config(base, override)
        for k, v in override.items():
            assert getattr(eff, k) == v
        # untouched keys keep the base's values
        assert eff.reliability_window == 50
    else:
        with pytest.raises(ValidationError):
            effective_signal_config(base, override)


def test_effective_signal_config_keeps_base_overrides():
    base = SignalConfig(target=0.9, max_std=0.2)
    eff = effective_signal_config(base, {"max_std": 0.1})
    assert (eff.target, eff.max_std) == (0.9, 0.1)
    with pytest.raises(TypeError):
        effective_signal_config(base, [("target", 0.5)])  # type: ignore[arg-type]


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        CFG.target = 0.5  # type: ignore[misc]
    assert math.isclose(CFG.target, 0.82)


def test_drift_ignores_a_burst_of_hard_failures_but_catches_a_sustained_drop():
    base = compute_baseline(series([0.93] * 26 + [0.55] * 4), CFG)
    scores = [0.93] * 30 + [0.55, 0.93, 0.55, 0.55, 0.93, 0.93] + [0.93] * 10
    burst = series(scores, statuses=["fail" if x < 0.6 else "pass" for x in scores], start=100.0)
    assert drift_signal(burst, base, CFG).state in ("ok", "warn", "insufficient_data")
    drop = series([0.93] * 30 + [0.70] * 12, start=100.0)
    r = drift_signal(drop, base, CFG)
    assert r.fired and r.evidence["page_hinkley"]["fired_at_index"] <= 30 + 8


def test_drift_mean_needs_the_drop_with_confidence():
    # Same recent mean (0.822, 8.7% under 0.9), two causes. Six hard failures among 40 steady passes is
    # a wide interval (reliability's business); a steady fall of the passing work is a narrow one.
    cfg = SignalConfig(drift_window=50, drift_min_samples=30, ph_smooth=5)
    failures = [0.9] * 34 + [0.38] * 6
    drop = [0.822] * 40
    r_fail = drift_signal(series(failures), B, cfg)
    r_drop = drift_signal(series(drop), B, cfg)
    assert r_fail.evidence["recent_mean"] == pytest.approx(r_drop.evidence["recent_mean"])
    assert r_fail.evidence["rel_drop"] > cfg.drift_rel_drop
    assert (
        r_fail.evidence["mean_state"] == "warn"
        and r_fail.evidence["rel_drop_lower_bound"] < cfg.drift_rel_drop
    )
    assert r_drop.evidence["mean_state"] == "firing"
    assert r_drop.evidence["rel_drop_lower_bound"] == pytest.approx(r_drop.evidence["rel_drop"])
    # confidence 0.5 judges the bare mean: then the failures fire too.
    bare = cfg.model_copy(update={"confidence": 0.5})
    assert drift_signal(series(failures), B, bare).evidence["mean_state"] == "firing"
