"""The task contract: prompts, answer reading and the four graders (exact, numeric, critic, rubric)."""

from __future__ import annotations

import pytest

from pr1d.tasks.contract import (
    CriticGrader,
    ExactMatch,
    NumericMatch,
    Task,
    format_prompt,
    grader_from_spec,
    normalise_text,
    path_answer,
)

T = Task("t1", "store_facts", "Where does the Orbit Lamp ship from?", "Lyon", "easy")


def test_prompt_puts_context_before_the_question():
    assert T.prompt() == "Question: Where does the Orbit Lamp ship from?\nAnswer:\n"
    with_ctx = T.with_context("Orbit Lamp: ships from Lyon.\n")
    assert with_ctx.prompt() == "Orbit Lamp: ships from Lyon.\n\nQuestion: Where does the Orbit Lamp ship from?\nAnswer:\n"
    assert format_prompt("q", "   ") == format_prompt("q")  # blank context is no context


@pytest.mark.parametrize(("text", "want"), [
    ("The Cedar Stool.", "cedar stool"), ('  "Lyon"  ', "lyon"), ("an  Orbit\tLamp!", "orbit lamp"),
    ("ＬＹＯＮ", "lyon"),  # NFKC: full-width letters
])
def test_normalise_text(text, want):
    assert normalise_text(text) == want


@pytest.mark.parametrize(("path", "want"), [
    ("The product page says Lyon.\nSo the answer is Lyon.", "Lyon"),
    ("23 + 45 = 68\nSo the result is 68.", "68"),
    ("Answer: Cedar Stool", "Cedar Stool"),
    ("just a line", "just a line"),
    ("   \n  ", None),
])
def test_path_answer(path, want):
    assert path_answer(path) == want


def test_exact_match_reads_numbers_as_numbers_and_text_normalised():
    g = ExactMatch()
    num = Task("n", "f", "q", "1234")
    got = g.grade_many([(T, "the lyon."), (T, "Porto"), (T, None), (num, "$1,234."), (num, "1235")])
    assert [v.passed for v in got] == [True, False, False, True, False]
    assert got[1].reason == "'Porto' is not 'Lyon'" and got[2].reason == "no answer"
    with pytest.raises(ValueError, match="needs a reference"):
        g.grade_many([(Task("x", "f", "q"), "a")])


def test_numeric_match_tolerance():
    t = Task("n", "f", "q", "3.5")
    assert [v.passed for v in NumericMatch(0.1).grade_many([(t, "3.56"), (t, "3.7"), (t, "three")])] == [True, False, False]
    with pytest.raises(ValueError, match="numeric reference"):
        NumericMatch().grade_many([(T, "1")])


def test_critic_grader_sends_one_batch_and_reports_outage_apart(tmp_path):
    """Against the sim's critic (it knows the store catalogue): one request for the batch, no answerless item
    sent; with the platform gone the verdict is "unavailable", never "wrong"."""
    import json
    import urllib.request

    from pr1d.tasks import kb_facts
    from pr1d.train.critic import CriticClient
    from tests.monitor.test_monitor_e2e import Sim

    raw = kb_facts.eval_split(per_tier=1)[0]
    task = Task(raw["task_id"], "kb_facts", raw["question"], tier=raw["tier"])
    sim = Sim(tmp_path, "kb-dip")
    try:
        client = CriticClient(sim.url)
        got = CriticGrader(client).grade_many([(task, raw["answer"]), (task, str(int(raw["answer"]) + 3)), (task, None)])
        assert [v.passed for v in got] == [True, False, False] and not any(v.unavailable for v in got)
        state = json.loads(urllib.request.urlopen(f"{sim.url}/_sim/state", timeout=10).read())
        assert state["requests"]["critic"] == 1
        client.close()
    finally:
        sim.close()
    gone = CriticClient(sim.url, timeout=2.0)
    down = CriticGrader(gone).grade_many([(task, raw["answer"])])
    gone.close()
    assert down[0].unavailable and not down[0].passed and down[0].reason


def test_rubric_named_checks_and_pass_share():
    spec = {"kind": "rubric", "pass_share": 0.75, "checks": [
        {"name": "names_city", "kind": "contains", "terms": ["lyon"]},
        {"name": "polite", "kind": "not_contains", "terms": ["stupid"]},
        {"name": "short", "kind": "max_words", "words": 6},
        {"name": "sku", "kind": "regex", "pattern": r"NW-\d{4}"},
    ]}
    g = grader_from_spec(spec)
    ok, partial, bad = g.grade_many([(T, "Ships from Lyon (NW-1042)"), (T, "It ships from Lyon"),
                                     (T, "stupid question, it is Porto, not anywhere else")])
    assert ok.passed and ok.score == 1.0 and ok.checks == {"names_city": True, "polite": True, "short": True, "sku": True}
    assert partial.passed and partial.score == 0.75 and partial.reason == "failed: sku"
    assert not bad.passed and bad.checks["polite"] is False and bad.checks["short"] is False


@pytest.mark.parametrize(("spec", "msg"), [
    ({"kind": "fuzzy"}, "grader"),
    ({"kind": "numeric", "tolerance": -1}, "tolerance"),
    ({"kind": "rubric", "checks": []}, "checks"),
    ({"kind": "exact", "extra": 1}, "extra"),
    ({"kind": "critic"}, "needs the platform's critic"),
])
def test_bad_grader_specs_are_named(spec, msg):
    with pytest.raises(ValueError, match=msg) as e:
        grader_from_spec(spec, where="[tasks.families.x] grader")
    assert "[tasks.families.x] grader" in str(e.value)
