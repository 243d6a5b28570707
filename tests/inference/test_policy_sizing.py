"""A candidate's policy is sized to what it was trained to write: budgets raised to fit, never lowered."""

from __future__ import annotations

import pytest

from pr1d.inference.policy import ParallelExecutionPolicy, PolicyError, min_block_tokens, sized_to_traces


def test_budgets_are_raised_to_fit_the_longest_trace_with_headroom():
    # the store catalogue's hard paths are ~78 tokens: the default 64 would cut every one of them
    p = sized_to_traces(78, 14, 176)
    assert p.max_path_tokens == 98 and p.summary_max_tokens == 48 and p.max_new_tokens == 256
    assert p.max_new_tokens >= min_block_tokens(p.branch_count) + p.branch_count * p.max_path_tokens
    longer = sized_to_traces(150, 60, 300)
    assert (longer.max_path_tokens, longer.summary_max_tokens) == (188, 75)
    assert longer.max_new_tokens == min_block_tokens(2) + 2 * 188 + 75  # 462 > 1.25 * 300: one block of full paths fits
    assert sized_to_traces(150, 60, 400).max_new_tokens == 500  # a longer answer than that: its own length


def test_short_traces_keep_the_defaults_and_the_sampling_settings():
    base = ParallelExecutionPolicy(branch_count=3, temperature=0.9)
    p = sized_to_traces(10, 5, 40, base=base)
    assert p == base


def test_headroom_below_one_is_refused():
    with pytest.raises(PolicyError, match="headroom is 0.5"):
        sized_to_traces(10, 5, 40, headroom=0.5)
