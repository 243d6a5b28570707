"""The paired bootstrap of pr1d.stats: degenerate cases, seeding, level and size, and the numbers it always gave."""

from __future__ import annotations

import random

import pytest

from pr1d.stats import bootstrap_ci, bootstrap_draws, mean, paired_bootstrap_ci, quantile

# 37 paired differences (random.Random(7) choosing from -1, 0, 0, 1, 0.5).
DIFFS = [0.0, 0.0, 1.0, -1.0, -1.0, 0.5, -1.0, 0.0, 0.5, -1.0, 0.5, 0.0, -1.0, -1.0, 1.0, 1.0, -1.0, 0.0, -1.0,
         0.5, 1.0, -1.0, 0.5, -1.0, 0.0, 0.5, -1.0, 0.5, 0.5, 1.0, -1.0, 0.0, -1.0, 0.5, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(("diffs", "expect"), [
    ([], None),
    ([0.25], (0.25, 0.25)),                 # one item: nothing to resample
    ([0.5] * 40, (0.5, 0.5)),               # no spread, no width
    ([-1.0] * 40, (-1.0, -1.0)),
])
def test_bootstrap_degenerate(diffs, expect):
    got = paired_bootstrap_ci(diffs, resamples=200)
    assert got == (pytest.approx(expect) if expect else None)


def test_bootstrap_contains_mean_narrows_with_n_widens_with_level():
    rng = random.Random(7)
    small = [rng.gauss(0.1, 0.3) for _ in range(40)]
    big = small * 10  # same distribution, 10x the items
    lo, hi = paired_bootstrap_ci(small, seed=1)
    m = sum(small) / len(small)
    assert lo < m < hi
    blo, bhi = paired_bootstrap_ci(big, seed=1)
    assert (bhi - blo) < (hi - lo) / 2  # ~1/sqrt(10) of the width
    l90, h90 = paired_bootstrap_ci(small, level=0.90, seed=1)
    assert lo <= l90 and h90 <= hi
    assert paired_bootstrap_ci(small, seed=1) == (lo, hi)  # seeded: the same every time
    assert paired_bootstrap_ci(small, seed=2) != (lo, hi)


@pytest.mark.parametrize(("kw", "match"), [({"level": 0.4}, "level"), ({"level": 1.0}, "level"),
                                           ({"resamples": 0}, "resamples")])
def test_bootstrap_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci([0.1, 0.2], **kw)


# The intervals the backtest's and the gate's two former implementations both gave for DIFFS (exact floats):
# gate and backtest reports recorded before the two were merged keep recomputing to the same numbers.
@pytest.mark.parametrize(("kw", "expect"), [
    ({"resamples": 500, "seed": "0/tier/overall/correctness"}, (-0.28378378378378377, 0.14864864864864866)),
    ({"level": 0.9, "resamples": 300, "seed": 3}, (-0.2702702702702703, 0.12229729729729746)),
])
def test_bootstrap_numbers_are_the_recorded_ones(kw, expect):
    assert paired_bootstrap_ci(DIFFS, **kw) == expect


def test_resampling_indices_equals_resampling_values():
    # The gate used to resample the values (rng.choices(diffs)); the backtest resamples indices so that
    # the columns of a row share draws. Same seed, same picks, same interval.
    rng = random.Random("s")
    by_value = sorted(sum(rng.choices(DIFFS, k=len(DIFFS))) / len(DIFFS) for _ in range(400))
    expect = (quantile(by_value, 0.025), quantile(by_value, 0.975))
    assert bootstrap_ci(DIFFS, bootstrap_draws(len(DIFFS), 400, "s"), 0.95) == expect


@pytest.mark.parametrize(("xs", "q", "expect"), [
    ([1.0], 0.5, 1.0),
    ([0.0, 1.0], 0.25, 0.25),               # linear interpolation, numpy's default
    ([0.0, 1.0, 2.0, 3.0], 0.5, 1.5),
    ([0.0, 1.0, 2.0, 3.0], 1.0, 3.0),
])
def test_quantile(xs, q, expect):
    assert quantile(xs, q) == expect


def test_mean_of_nothing_is_none():
    assert mean([]) is None and mean([1.0, 2.0]) == 1.5
