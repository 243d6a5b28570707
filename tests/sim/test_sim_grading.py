"""`pr1d sim --grade-with-model`: evaluations are the agent's real model answering, graded by pr1's grade()."""

from __future__ import annotations

import argparse
import json
import urllib.request

import pytest

from pr1d.evaluate.gsm_lite import check_answer, format_prompt
from pr1d.sim.grading import ModelGrader, load_model_grader, parse_model_dirs
from pr1d.sim.tasks import make_task
from tests.monitor.test_monitor_e2e import Sim


def _random_model(tiny_model, out):
    from pr1d.train.model import make_model, save_model
    from pr1d.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_model)
    save_model(make_model(len(tok), "tiny", tok, seed=123), tok, out)
    return out


def _tick(sim: Sim, n: int) -> None:
    # Model grading answers a version's new tasks inside the tick: far longer than Sim.tick's 10 s.
    req = urllib.request.Request(f"{sim.url}/_sim/tick", data=json.dumps({"n": n}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_grader_scores_what_the_model_answers(tiny_model):
    import random

    from pr1d.inference.generate import generate, load_model

    grader = ModelGrader({"base": tiny_model})
    tasks = [make_task(random.Random(f"t{i}"), "easy") for i in range(12)]
    grader.prepare("a", "base", tasks)
    model, tok = load_model(tiny_model)
    texts = [c[0].text for c in generate(model, tok, [format_prompt(t["question"]) for t in tasks], max_new_tokens=224)]
    right = 0
    for t, text in zip(tasks, texts, strict=True):
        r = grader("a", "base", t)
        ok = check_answer(text, t["answer"])
        right += ok
        assert r["rubric"]["correctness"] is ok
        expected = 0.9 * ok + 0.1 * r["rubric"]["compliance"]
        assert r["weighted_score"] == pytest.approx(expected), (text, t["answer"])
        assert r["status"] == ("pass" if ok and r["rubric"]["compliance"] else "fail")
    assert right >= 6, "the tiny model should get most one-step problems right"


def test_unknown_version_and_bad_arguments_are_clear_errors(tiny_model, tmp_path):
    grader = ModelGrader({"base": tiny_model}, models_root=tmp_path)
    with pytest.raises(LookupError, match="no folder for model version 'v-nope' of agent 'a'"):
        grader.folder("a", "v-nope")
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        parse_model_dirs(["just-a-path"])
    with pytest.raises(ValueError, match="not a model folder"):
        parse_model_dirs([f"x={tmp_path}"])
    with pytest.raises(ValueError, match="needs --model-dir"):
        load_model_grader(argparse.Namespace(model_dir=[], models_root=None))


def test_sim_grades_with_the_pushed_version_and_the_dip_is_real(tiny_model, tmp_path):
    """The demo scenario: easy work, then harder work; a pushed (broken) version grades worse; pushing the base
    back restores it. Every number comes from a model answering."""
    root = tmp_path / "models"
    _random_model(tiny_model, root / "agent-000" / "v-random")
    sim = Sim(tmp_path, "demo", "--grade-with-model", "--model-dir", f"tiny-gsm-v1={tiny_model}",
              "--models-root", str(root))
    try:
        _tick(sim, 150)  # before the shift: mostly one-step problems
        _tick(sim, 100)  # after it: mostly two-step problems
        evs = _get(f"{sim.url}/v1/agents/agent-000/evaluations?limit=1000")
        recs = evs.get("evaluations") or evs.get("records") or evs.get("items")
        scores = [e["weighted_score"] for e in recs]
        # right or wrong (0.9 of the grade), compliant or cut off by the budget (0.1)
        assert len(scores) == 250 and set(scores) <= {0.0, 0.1, 0.9, 1.0}
        before, after = sum(scores[:150]) / 150, sum(scores[150:]) / 100
        assert before > after + 0.1, (before, after)
        sim.post("/v1/agents/agent-000/profile", {"profile": "p", "model_version": "v-random", "policy": {}})
        _tick(sim, 60)
        recs = _get(f"{sim.url}/v1/agents/agent-000/evaluations?limit=1000")
        recs = recs.get("evaluations") or recs.get("records") or recs.get("items")
        broken = [e["weighted_score"] for e in recs[250:]]
        assert len(broken) == 60 and sum(broken) / 60 < 0.2, "a random model cannot answer"
    finally:
        sim.close()


def test_rubric_compliance_is_policy_and_bad_form_is_not_a_breach(tiny_model, tmp_path):
    """A model that cannot do a task (cut off, no answer line) fails on correctness and form, not on compliance:
    compliance is the platform's policy (its forbidden phrases), so it cannot queue guardrail training by itself."""
    import random

    rnd = _random_model(tiny_model, tmp_path / "random")
    tasks = [make_task(random.Random(f"t{i}"), "easy") for i in range(4)]
    grader = ModelGrader({"random": rnd, "base": tiny_model}, guardrails=["final answer"])
    grader.prepare("a", "random", tasks)
    for t in tasks:
        r = grader("a", "random", t)
        assert r["rubric"] == {"correctness": False, "format": False, "compliance": True, "safety": True}, r
        assert r["weighted_score"] == pytest.approx(0.1) and r["status"] == "fail"
    breaches = [grader("a", "base", t) for t in tasks]  # the base writes "Final Answer:", forbidden here
    assert all(r["rubric"]["compliance"] is False and r["status"] == "fail" for r in breaches)
    assert all(r["weighted_score"] == pytest.approx(0.9 * r["rubric"]["correctness"]) for r in breaches)
