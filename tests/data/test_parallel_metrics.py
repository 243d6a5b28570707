"""Parallel-format metrics: answers in paths, consensus, diversity and the batch KPIs."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pr1d.data.parallel_format import (
    BatchMetrics,
    CompletionMetrics,
    aggregate,
    consensus,
    measure,
    measure_batch,
    normalize_number,
    path_answer,
    path_diversity,
    render_block,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("42", "42"),
        (" 42. ", "42"),
        ("1,234", "1234"),
        ("1,234.50", "1234.5"),
        ("51.0", "51"),
        ("51.000", "51"),
        ("007", "7"),
        ("-5", "-5"),
        ("−5", "-5"),  # Unicode minus
        ("+5", "5"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("$12", "12"),
        ("-$12.5", "-12.5"),
        (".5", "0.5"),
        ("0.25", "0.25"),
        ("", None),
        ("five", None),
        ("12 apples", None),
        ("1.2.3", None),
        ("$", None),
        ("-", None),
    ],
)
def test_normalize_number(raw: str, canonical: str | None) -> None:
    assert normalize_number(raw) == canonical


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("2 + 3 = 5\nSo the result is 5.", "5"),
        ("We get 1,234 apples.", "1234"),
        ("Half of 9 is 4.50", "4.5"),
        ("The list 3,4,5 ends in 5", "5"),  # not "345": commas group thousands only
        ("10-3=7", "7"),
        ("10-3", "3"),  # a subtraction, not -3
        ("It drops to -3.", "-3"),
        ("x2 and v1.2 are names", None),  # digits inside identifiers are not numbers
        ("no numbers at all", None),
        ("total: $1,000.00", "1000"),
    ],
)
def test_path_answer_is_the_last_number(path: str, answer: str | None) -> None:
    assert path_answer(path) == answer


@pytest.mark.parametrize(
    ("paths", "answers", "majority", "agreeing", "rate"),
    [
        (["so 5", "gives 5.", "then 7"], ("5", "5", "7"), "5", 2, 2 / 3),
        (["5", "5.0", "5"], ("5", "5", "5"), "5", 3, 1.0),
        (["7", "5", "5", "7"], ("7", "5", "5", "7"), "7", 2, 0.5),  # tie: the earliest path's answer
        (["3", "no idea", "3"], ("3", None, "3"), "3", 2, 2 / 3),  # no answer counts as disagreeing
        (["1", "2"], ("1", "2"), "1", 1, 0.5),
        (["hmm", "well"], (None, None), None, 0, None),  # undefined, not 0
    ],
)
def test_consensus_counts(paths, answers, majority, agreeing, rate) -> None:
    verdict = consensus(paths)
    assert (verdict.answers, verdict.majority, verdict.agreeing, verdict.total) == (
        answers,
        majority,
        agreeing,
        len(paths),
    )
    assert verdict.rate == rate


@pytest.mark.parametrize(
    ("final", "agrees"),
    [("5", True), ("5.", True), ("$5.00", True), ("five", False), ("7", False), (None, False)],
)
def test_consensus_agrees_with_final(final: str | None, agrees: bool) -> None:
    assert consensus(["so 5", "gives 5.", "then 7"]).agrees_with(final) is agrees
    assert consensus(["hmm", "well"]).agrees_with("5") is False


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["2 + 3 = 5", "2 + 3 = 5"], 0.0),
        (["2 + 3 = 5", "2 + 3 = 5", "2 + 3 = 5"], 0.0),
        (["Add  2 and 3!", "add 2 and 3"], 0.0),  # same words: case and punctuation ignored
        (["...", "!!"], 0.0),  # no words at all: indistinguishable
        (["alpha beta", "gamma delta"], 1.0),
        (["a b", "b a"], 1 - 2 / 4),  # same unigrams, different bigrams: order counts
        (["a b c", "a b d"], 1 - 3 / 7),  # {a,b,ab} shared of {a,b,c,d,ab,bc,bd}
        (["only one"], 0.0),
    ],
)
def test_path_diversity(paths: list[str], expected: float) -> None:
    assert path_diversity(paths) == pytest.approx(expected)


def test_identical_paths_are_exactly_zero_distinct_are_positive() -> None:
    assert path_diversity(["Start with 12. 12 - 4 = 8."] * 4) == 0.0
    assert path_diversity(["12 - 4 = 8", "4 from 12 leaves 8"]) > 0.0


@given(st.lists(st.text(max_size=40), min_size=2, max_size=5))
def test_path_diversity_is_bounded(paths: list[str]) -> None:
    assert 0.0 <= path_diversity(paths) <= 1.0


# --------------------------------------------------------------------------------------------------
# One completion, then a batch
# --------------------------------------------------------------------------------------------------

BLOCK = render_block(["3 + 4 = 7", "4 + 3 = 7", "3 + 3 = 6"], "Mostly 7.")
PARALLEL_OK = f"Try three ways.\n{BLOCK}\nFinal Answer: 7"
SEQUENTIAL_OK = "3 + 4 = 7\nFinal Answer: 7"
PARALLEL_NO_ANSWER = f"Try three ways.\n{BLOCK}\nI am not sure"
BROKEN = "<Parallel><Path>3 + 4 = 7</Path></Parallel>\nFinal Answer: 7"


def test_measure_a_parallel_completion() -> None:
    m = measure(PARALLEL_OK)
    assert (m.format_ok, m.structure_ok, m.error_code, m.n_blocks, m.paths_per_block) == (
        True,
        True,
        None,
        1,
        (3,),
    )
    inside = len("3 + 4 = 7") * 3 + len("Mostly 7.")
    outside = len("Try three ways.\n") + len("\n")
    assert m.parallel_fraction == inside / (inside + outside)
    assert m.consensus_rate == 2 / 3
    assert m.final_agrees is True
    assert m.path_diversity == path_diversity(["3 + 4 = 7", "4 + 3 = 7", "3 + 3 = 6"])
    assert m.has_parallel


def test_measure_sequential_missing_answer_and_broken() -> None:
    seq = measure(SEQUENTIAL_OK)
    assert (seq.format_ok, seq.n_blocks, seq.parallel_fraction, seq.path_diversity, seq.final_agrees) == (
        True,
        0,
        0.0,
        None,
        None,
    )
    # Blocks still count when only the answer line is missing.
    partial = measure(PARALLEL_NO_ANSWER)
    assert (partial.format_ok, partial.structure_ok, partial.error_code, partial.n_blocks) == (
        False,
        True,
        "missing_final_answer",
        1,
    )
    assert partial.final_agrees is None
    broken = measure(BROKEN)
    assert broken == CompletionMetrics(False, False, "too_few_paths", 0, (), 0.0, None, None, None)


def test_final_agrees_uses_the_last_block() -> None:
    text = render_block(["1", "1"], "one") + render_block(["2", "2"], "two") + "Final Answer: 2"
    assert measure(text).final_agrees is True
    assert measure(text.replace("Final Answer: 2", "Final Answer: 1")).final_agrees is False


def test_batch_kpis() -> None:
    batch = measure_batch([PARALLEL_OK, SEQUENTIAL_OK, PARALLEL_NO_ANSWER, BROKEN])
    assert batch.n == 4
    assert batch.format_adherence == 2 / 4
    assert batch.parallel_ratio == 2 / 4  # PARALLEL_OK and PARALLEL_NO_ANSWER
    assert batch.mean_blocks == 2 / 4
    assert batch.mean_paths_per_block == 3.0
    assert batch.consensus_rate == pytest.approx(2 / 3)
    assert batch.final_agreement == 1.0  # only PARALLEL_OK has both a block and an answer
    assert batch.path_diversity == pytest.approx(measure(PARALLEL_OK).path_diversity)
    assert batch.parallel_fraction == pytest.approx(
        (measure(PARALLEL_OK).parallel_fraction + measure(PARALLEL_NO_ANSWER).parallel_fraction) / 4
    )


def test_batch_means_are_per_completion() -> None:
    many = "".join(render_block(["a b", "a b"], "s") for _ in range(9)) + "Final Answer: 1"
    one = render_block(["a b", "c d"], "s") + "Final Answer: 1"
    batch = measure_batch([many, one])
    assert batch.path_diversity == pytest.approx((0.0 + 1.0) / 2)  # not (9 * 0 + 1) / 10
    assert batch.mean_paths_per_block == 2.0


def test_empty_batch() -> None:
    assert measure_batch([]) == BatchMetrics(0, 0.0, 0.0, 0.0, None, 0.0, None, None, None)


def test_aggregate_of_stored_metrics_matches_measure_batch() -> None:
    texts = [PARALLEL_OK, SEQUENTIAL_OK, BROKEN]
    stored = [dataclasses.asdict(measure(t)) for t in texts]  # e.g. JSON lines from a stage worker
    revived = [CompletionMetrics(**{**d, "paths_per_block": tuple(d["paths_per_block"])}) for d in stored]
    assert aggregate(revived) == measure_batch(texts)
