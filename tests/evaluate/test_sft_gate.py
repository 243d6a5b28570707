"""Table tests of the pure SFT gate (no torch)."""

from __future__ import annotations

import math

import pytest

from pr1d.evaluate.sft_gate import REASON_BELOW, REASON_OK, sft_gate

B = {"easy": 0.80, "medium": 0.20, "hard": 0.05}


@pytest.mark.parametrize(
    ("base", "cand", "n", "threshold", "mode", "proceed", "uplift_abs"),
    [
        # +0.06 on every tier: overall +0.06 >= 0.05.
        (B, {"easy": 0.86, "medium": 0.26, "hard": 0.11}, 100, 0.05, "absolute", True, 0.06),
        # exactly at the threshold proceeds
        (B, {"easy": 0.85, "medium": 0.25, "hard": 0.10}, 100, 0.05, "absolute", True, 0.05),
        # +0.04 overall: below
        (B, {"easy": 0.84, "medium": 0.24, "hard": 0.09}, 100, 0.05, "absolute", False, 0.04),
        # format learnt, accuracy unchanged: below
        (B, dict(B), 50, 0.05, "absolute", False, 0.0),
        # a regression: below
        (B, {"easy": 0.60, "medium": 0.20, "hard": 0.05}, 50, 0.05, "absolute", False, -0.2 / 3),
        # one tier up a lot, others flat: the mean decides (+0.3/3 = 0.1)
        (B, {"easy": 0.80, "medium": 0.50, "hard": 0.05}, 50, 0.05, "absolute", True, 0.1),
        # sample weighting: 200 easy, 100 medium, 100 hard; +0.1 on easy only -> 0.1*200/400 = 0.05
        (
            B,
            {"easy": 0.90, "medium": 0.20, "hard": 0.05},
            {"easy": 200, "medium": 100, "hard": 100},
            0.05,
            "absolute",
            True,
            0.05,
        ),
        # same numbers, equal weights -> 0.1/3 < 0.05
        (B, {"easy": 0.90, "medium": 0.20, "hard": 0.05}, 100, 0.05, "absolute", False, 0.1 / 3),
        # relative: base overall 0.35, cand 0.385 -> +10% relative
        (B, {"easy": 0.835, "medium": 0.235, "hard": 0.085}, 100, 0.10, "relative", True, 0.035),
        (B, {"easy": 0.83, "medium": 0.23, "hard": 0.08}, 100, 0.10, "relative", False, 0.03),
        # zero threshold: no regression is enough
        (B, dict(B), 50, 0.0, "absolute", True, 0.0),
    ],
)
def test_gate_table(base, cand, n, threshold, mode, proceed, uplift_abs):
    d = sft_gate(base, cand, n, threshold=threshold, mode=mode)
    assert d.proceed is proceed
    assert d.reason == (REASON_OK if proceed else REASON_BELOW)
    assert math.isclose(d.evidence["uplift_abs"], uplift_abs, abs_tol=1e-9)
    ev = d.evidence
    assert ev["threshold"] == threshold and ev["mode"] == mode
    assert set(ev["base"]) == set(ev["candidate"]) == set(base)
    assert ev["candidate_overall"] - ev["base_overall"] == pytest.approx(uplift_abs)
    if ev["base_overall"] > 0:
        assert ev["uplift_rel"] == pytest.approx(uplift_abs / ev["base_overall"])


def test_gate_zero_base_relative():
    d = sft_gate({"easy": 0.0}, {"easy": 0.1}, 20, threshold=0.5, mode="relative")
    assert d.proceed and d.evidence["uplift_rel"] is None


def test_gate_skips_unmeasured_tiers():
    d = sft_gate({"easy": 0.5, "hard": None}, {"easy": 0.6}, 10)
    assert d.proceed and list(d.evidence["base"]) == ["easy"]


@pytest.mark.parametrize(
    ("base", "cand", "n", "kw", "match"),
    [
        ({"easy": 0.5}, {"medium": 0.5}, 10, {}, "same tiers"),
        ({"easy": 1.5}, {"easy": 0.5}, 10, {}, r"\[0, 1\]"),
        ({"easy": 0.5}, {"easy": 0.5}, 0, {}, "positive"),
        ({"easy": 0.5}, {"easy": 0.5}, {"medium": 3}, {}, "one per tier"),
        ({"easy": 0.5}, {"easy": 0.5}, 10, {"mode": "percent"}, "mode"),
        ({}, {}, 10, {}, "at least one tier"),
    ],
)
def test_gate_rejects_bad_input(base, cand, n, kw, match):
    with pytest.raises(ValueError, match=match):
        sft_gate(base, cand, n, **kw)


# --- task families with a held-out set -------------------------------------------------------------

from pr1d.evaluate.sft_gate import REASON_REGRESSION, family_gate  # noqa: E402

KB0 = {"easy": 0.0, "medium": 0.0, "hard": 0.0}
KBN = {"easy": 72, "medium": 48, "hard": 24}


@pytest.mark.parametrize(("gsm_cand", "kb_cand", "proceed", "reason", "carried", "regressed"), [
    # the KB family carries the run, GSM-lite stays where it was (within 2 points)
    ({"easy": 0.80, "medium": 0.19, "hard": 0.05}, {"easy": 0.5, "medium": 0.2, "hard": 0.1}, True, REASON_OK,
     ["kb_facts"], []),
    # the KB family improves but arithmetic paid for it: refused
    ({"easy": 0.60, "medium": 0.15, "hard": 0.05}, {"easy": 0.5, "medium": 0.2, "hard": 0.1}, False,
     REASON_REGRESSION, ["kb_facts"], ["gsm_lite"]),
    # GSM-lite carries it, the KB family flat: as before families
    ({"easy": 0.90, "medium": 0.30, "hard": 0.10}, KB0, True, REASON_OK, ["gsm_lite"], []),
    # neither moves: below threshold
    (B, {"easy": 0.02, "medium": 0.0, "hard": 0.0}, False, REASON_BELOW, [], []),
])
def test_family_gate(gsm_cand, kb_cand, proceed, reason, carried, regressed):
    gsm = sft_gate(B, gsm_cand, 50)
    d = family_gate(gsm, {"kb_facts": (KB0, kb_cand, KBN)}, threshold=0.05, max_regression=0.02)
    assert (d.proceed, d.reason, d.evidence["carried_by"], d.evidence["regressed"]) == (proceed, reason, carried,
                                                                                         regressed)
    row = d.evidence["families"]["kb_facts"]
    assert row["n_per_tier"] == KBN and row["base_overall"] == 0.0
    assert d.evidence["uplift_abs"] == gsm.evidence["uplift_abs"]  # GSM-lite's own figures stay as they were


def test_family_gate_without_families_is_gsm_lite_alone():
    gsm = sft_gate(B, B, 50)
    assert family_gate(gsm, {}) is gsm
