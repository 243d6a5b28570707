"""The shared grading function: each column and compliance check on a table of completions, weights, bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pr1d.evaluate.grading import COLUMNS, GradeWeights, answers_match, consensus_confidence, grade


def block(*paths: str, summary: str = "The paths agree.") -> str:
    return "<Parallel>" + "".join(f"<Path>{p}</Path>" for p in paths) + f"<Summary>{summary}</Summary></Parallel>"


P35 = "12 + 23 = 35. So the result is 35."
P35B = "Add 23 and 12: 23 + 12 = 35. So the result is 35."
P36 = "12 + 24 = 36. So the result is 36."
GOOD = block(P35, P35B) + "\nFinal Answer: 35"
SPLIT = block(P35, P36) + "\nFinal Answer: 35"
THREE = block(P35, P35B, P36) + "\nFinal Answer: 35"
SEQUENTIAL = "12 + 23 = 35.\nFinal Answer: 35"
ONE_PATH = "<Parallel><Path>" + P35 + "</Path><Summary>35</Summary></Parallel>\nFinal Answer: 35"
NO_ANSWER = block(P35, P35B)
TRUNCATED = "<Parallel><Path>12 + 23 = 35.\nFinal Answer: 35"  # the answer sits inside an unclosed block
TWO_BLOCKS = block("10 + 2 = 12.", "2 + 10 = 12.") + " then " + block(P35, P36) + "\nFinal Answer: 35"
WRONG = block(P35, P35B) + "\nFinal Answer: 36"
TEXT_AFTER = GOOD + "\nand more"

# (name, completion, finished, guardrails) -> columns, failed compliance checks
CASES = [
    ("parallel, right, paths agree", GOOD, True, (), dict(correctness=1, parallel_format=1, consensus_confidence=1.0,
                                                           compliance=1), set()),
    ("paths split 1 of 2", SPLIT, True, (), dict(correctness=1, parallel_format=1, consensus_confidence=0.5,
                                                  compliance=1), set()),
    ("paths split 2 of 3", THREE, True, (), dict(correctness=1, parallel_format=1, consensus_confidence=2 / 3,
                                                  compliance=1), set()),
    ("sequential", SEQUENTIAL, True, (), dict(correctness=1, parallel_format=0, consensus_confidence=0.0,
                                               compliance=1), set()),
    ("malformed block (one path)", ONE_PATH, True, (), dict(correctness=1, parallel_format=0,
                                                              consensus_confidence=0.0, compliance=0),
     {"well_formed"}),
    ("no final answer", NO_ANSWER, True, (), dict(correctness=0, parallel_format=0, consensus_confidence=0.0,
                                                   compliance=0), {"final_answer_present"}),
    ("answer only inside an unclosed block", TRUNCATED, False, (),
     dict(correctness=0, parallel_format=0, consensus_confidence=0.0, compliance=0),
     {"final_answer_present", "finished", "well_formed"}),
    ("consensus judged on the last block", TWO_BLOCKS, True, (),
     dict(correctness=1, parallel_format=1, consensus_confidence=0.5, compliance=1), set()),
    ("wrong answer, paths disagree with it", WRONG, True, (),
     dict(correctness=0, parallel_format=1, consensus_confidence=0.0, compliance=1), set()),
    ("cut off by the token budget", GOOD, False, (),
     dict(correctness=1, parallel_format=1, consensus_confidence=1.0, compliance=0), {"finished"}),
    ("guardrail phrase, any case", GOOD, True, ("SO THE RESULT",),
     dict(correctness=1, parallel_format=1, consensus_confidence=1.0, compliance=0), {"no_guardrail_violation"}),
    ("guardrail phrase absent", GOOD, True, ("ignore previous",),
     dict(correctness=1, parallel_format=1, consensus_confidence=1.0, compliance=1), set()),
    # A structure that does not parse is not trusted, so its paths give no consensus either.
    ("text after the answer line", TEXT_AFTER, True, (),
     dict(correctness=1, parallel_format=0, consensus_confidence=0.0, compliance=0), {"well_formed"}),
]


@pytest.mark.parametrize(("name", "text", "finished", "guardrails", "columns", "failed"), CASES,
                         ids=[c[0] for c in CASES])
def test_columns_and_compliance(name, text, finished, guardrails, columns, failed):
    g = grade(text, "35", finished=finished, guardrails=guardrails)
    assert g.columns == pytest.approx({k: float(v) for k, v in columns.items()})
    assert {k for k, ok in g.compliance.items() if not ok} == failed
    assert set(g.compliance) == {"final_answer_present", "finished", "no_guardrail_violation", "well_formed"}
    assert g.compliance_ok is (not failed)
    # The score is the weighted mean of the columns with the default 0.7/0.1/0.1/0.1 weights.
    expected = 0.7 * columns["correctness"] + 0.1 * (
        columns["parallel_format"] + columns["consensus_confidence"] + columns["compliance"])
    assert g.score == pytest.approx(expected)
    assert 0.0 <= g.score <= 1.0


def test_diversity_and_path_count():
    assert grade(GOOD, "35").n_paths == 2
    assert grade(TWO_BLOCKS, "35").n_paths == 4
    assert grade(SEQUENTIAL, "35").path_diversity is None
    assert grade(block(P35, P35) + "\nFinal Answer: 35", "35").path_diversity == 0.0
    assert 0.0 < grade(GOOD, "35").path_diversity < 1.0


@pytest.mark.parametrize(("critic", "ok"), [(True, True), (False, False), (None, True)])
def test_critic_verdict_is_a_compliance_check_only_when_given(critic, ok):
    g = grade(GOOD, "35", critic_agree=critic)
    assert ("critic_agrees" in g.compliance) is (critic is not None)
    assert g.compliance_ok is ok
    assert g.columns["compliance"] == (1.0 if ok else 0.0)


@pytest.mark.parametrize(("weights", "score"), [
    (GradeWeights(correctness=1, parallel_format=0, consensus_confidence=0, compliance=0), 1.0),
    (GradeWeights(correctness=0, parallel_format=1, consensus_confidence=0, compliance=0), 0.0),
    # Weights are normalised: 2/2/0/0 is 0.5/0.5, whatever their scale.
    (GradeWeights(correctness=2, parallel_format=2, consensus_confidence=0, compliance=0), 0.5),
    (GradeWeights(correctness=3, parallel_format=1, consensus_confidence=0, compliance=0), 0.75),
    (GradeWeights(correctness=0, parallel_format=1, consensus_confidence=0, compliance=1), 0.5),
])
def test_weights_are_normalised(weights, score):
    # SEQUENTIAL is right (1), not parallel (0), no consensus (0), compliant (1).
    assert grade(SEQUENTIAL, "35", weights=weights).score == pytest.approx(score)
    assert sum(weights.normalised().values()) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [
    dict(correctness=0, parallel_format=0, consensus_confidence=0, compliance=0),
    dict(correctness=-0.1),
    dict(correctness="0.7"),
    dict(correctnes=0.7),
])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValidationError):
        GradeWeights(**bad)


def test_all_zero_weights_error_says_how_to_fix():
    with pytest.raises(ValidationError, match="set at least one above 0"):
        GradeWeights(correctness=0, parallel_format=0, consensus_confidence=0, compliance=0)


@pytest.mark.parametrize(("got", "expected", "match"), [
    ("35", "35", True), ("$1,234.", "1234", True), ("35.0", "35", True), ("36", "35", False),
    ("thirty-five", "35", False), (None, "35", False), ("Paris", "paris", True), ("Lyon", "Paris", False),
])
def test_answers_match(got, expected, match):
    assert answers_match(got, expected) is match


def test_consensus_confidence_alone_matches_the_column():
    for _, text, *_ in CASES:
        assert consensus_confidence(text) == grade(text, "35").columns["consensus_confidence"]


def test_to_dict_is_json_ready():
    import json

    d = grade(SPLIT, "35").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d["columns"]) == set(COLUMNS)
