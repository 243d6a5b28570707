"""RL on any task family: the grade term is the family's grader, paths agree by the family's reading, the problems
come from the run's dataset records with tiers (their own, or from the agent's pass rate)."""

from __future__ import annotations

import pytest

from pr1d.params import RewardParams
from pr1d.tasks.families import Families
from pr1d.train.grpo import question_of, record_pools
from pr1d.train.rewards import make_reward_funcs

FAMS = Families.from_config({"store_facts": {"grader": {"kind": "exact"}}})
Q = "Which ships from Lyon, the Orbit Lamp or the Cedar Stool?"
RIGHT = ("<Parallel><Path>The Orbit Lamp page says Lyon.\nSo the answer is Orbit Lamp.</Path><Path>The Lyon list names "
         "the Orbit Lamp.\nSo the answer is the Orbit Lamp.</Path><Summary>Both paths give Orbit Lamp.</Summary>"
         "</Parallel>\nFinal Answer: Orbit Lamp")
HALF = RIGHT.replace("So the answer is the Orbit Lamp.", "So the answer is Cedar Stool.")
WRONG = RIGHT.replace("Final Answer: Orbit Lamp", "Final Answer: Cedar Stool")


def _grade(funcs, completions, family):
    (grade_fn,) = [f for f in funcs if f.__name__ == "reward_grade"]
    n = len(completions)
    return grade_fn(["p"] * n, completions, answer=["Orbit Lamp"] * n, question=[Q] * n, family=[family] * n)


def test_grade_term_uses_the_family_grader_and_its_path_reading():
    cfg = RewardParams(format_weight=0, diversity_weight=0)
    funcs = make_reward_funcs(cfg, None, families=FAMS)
    right, half, wrong = _grade(funcs, [RIGHT, HALF, WRONG], "store_facts")
    w = cfg.grading.normalised()
    # right: every column; half: one of two paths reaches the answer; wrong: no correctness and no consensus
    assert right == pytest.approx(cfg.grade_weight * 1.0)
    assert half == pytest.approx(cfg.grade_weight * (1.0 - 0.5 * w["consensus_confidence"]))
    assert wrong == pytest.approx(cfg.grade_weight * (w["parallel_format"] + w["compliance"]))
    # Without the families the text answer is still compared as text, but the paths' last *numbers* decide
    # consensus, and these paths have none: the family's reading is what credits them.
    plain = make_reward_funcs(cfg, None)
    (g,) = [f for f in plain if f.__name__ == "reward_grade"]
    assert g(["p"], [RIGHT], answer=["Orbit Lamp"], question=[Q])[0] < right


def test_a_family_without_a_verdict_gets_no_grade_term():
    from pr1d.train.critic import CriticClient

    down = CriticClient("http://127.0.0.1:9", timeout=2.0)  # nothing listens on port 9: every verdict is None
    fams = Families.from_config({"support": {"grader": {"kind": "critic"}, "reference_from_entry": False}},
                                critic=down)
    funcs = make_reward_funcs(RewardParams(), None, families=fams)
    (g,) = [f for f in funcs if f.__name__ == "reward_grade"]
    assert g(["p", "p"], [RIGHT, RIGHT], answer=["", ""], question=[Q, Q], family=["support", "gsm_lite"]) == [
        None, pytest.approx(g(["p"], [RIGHT], answer=[""], question=[Q], family=["gsm_lite"])[0])]


def _rec(i, family="store_facts", tier="easy", answer="Lyon"):
    return {"id": f"t{i}:parallel", "task_id": f"t{i}", "family": family, "tier": tier, "answer": answer,
            "question": f"q{i}?", "prompt": f"ctx {i}\n\nQuestion: q{i}?\nAnswer:\n", "completion": "x"}


def test_record_pools_tiers_own_then_pass_rate_then_borrowed():
    recs = [_rec(1), _rec(2, tier="hard"), _rec(3, family="support", tier=""), _rec(4, family="other", tier="")]
    pools = record_pools(recs, ("easy", "medium", "hard"), family_tiers={"support": "hard"})
    assert [r["question"] for r in pools["easy"]] == ["q1?"]
    assert [r["question"] for r in pools["hard"]] == ["q2?", "q3?"]  # q4: no tier and no pass rate: left out
    assert [(r["question"], r["tier"]) for r in pools["medium"]] == [("q1?", "medium")]  # borrowed from easy
    assert pools["easy"][0] == {"prompt": "ctx 1\n\nQuestion: q1?\nAnswer:\n", "answer": "Lyon", "question": "q1?",
                                "tier": "easy", "family": "store_facts"}
    with pytest.raises(ValueError, match="no dataset task has one of the tiers"):
        record_pools([_rec(5, tier="")], ("easy", "hard"))


def test_question_of_a_rendered_prompt():
    assert question_of("Some context.\n\nQuestion: Where is it?\nAnswer:\n") == "Where is it?"


def _family_records(n=16):
    return [{"id": f"kb-easy-{i:04d}:parallel", "task_id": f"kb-easy-{i:04d}", "family": "store_facts",
             "tier": "easy", "answer": "Lyon", "question": f"Where does product {i} ship from?",
             "prompt": f"Product {i} ships from Lyon.\n\nQuestion: Where does product {i} ship from?\nAnswer:\n",
             "completion": "x"} for i in range(n)]


@pytest.mark.parametrize(("grader", "accurate"), [
    ({"kind": "exact"}, False),  # the arithmetic-only tiny model never answers "Lyon"
    ({"kind": "rubric", "checks": [{"name": "any", "kind": "regex", "pattern": "."}]}, True),  # any final answer passes
])
def test_grpo_draws_the_dataset_tasks_and_grades_them_by_their_family(tiny_model, tmp_path, grader, accurate):
    torch = pytest.importorskip("torch")
    from pr1d.params import RLParams
    from pr1d.train.grpo import build_trainer

    torch.set_num_threads(2)
    fams = Families.from_config({"store_facts": {"grader": grader}})
    cfg = RLParams(max_steps=1, lr=1e-6, explore_verify=False, max_completion_length=20, checkpoint_every=1000,
                   eval_per_tier=0, tasks="dataset", curriculum={"tiers": ["easy"]})
    events = []
    trainer, _ = build_trainer(tiny_model, tmp_path / "ckpt", cfg, use_cpu=True, task_records=_family_records(),
                               families=fams, on_event=lambda k, f: events.append((k, f)))
    trainer.train()
    drawn = trainer.curriculum.pools["easy"]
    assert {r["family"] for r in drawn} == {"store_facts"} and drawn[0]["prompt"].startswith("Product 0 ships")
    acc = [f["value"] for k, f in events if k == "metric" and f["name"] == "rl.accuracy"]
    # (a completion cut off before its answer line has no answer to grade, so "any answer" is not 100%)
    assert len(acc) == 1 and (acc[0] > 0.2 if accurate else acc[0] == 0.0)
    with pytest.raises(ValueError, match="no dataset tasks were given"):
        build_trainer(tiny_model, tmp_path / "ckpt2", cfg, use_cpu=True)


def test_the_grade_term_asks_the_critic_for_a_family_without_a_reference(tmp_path):
    """A family graded by the platform's critic has no reference answer: the RL grade term sends the batch's final
    answers to the real critic (the sim's, which knows the store catalogue) in one request, and credits the
    completions it calls right."""
    import json
    import urllib.request

    from pr1d.tasks import kb_facts
    from pr1d.train.critic import CriticClient
    from tests.monitor.test_monitor_e2e import Sim

    task = kb_facts.eval_split(per_tier=1)[0]
    right = kb_facts.parallel_trace(task)
    truth = str(kb_facts.lookup(task["question"])["answer"])
    wrong = right.replace(f"Final Answer: {truth}", f"Final Answer: {int(truth) + 1}")
    assert wrong != right
    sim = Sim(tmp_path, "kb-dip")
    try:
        critic = CriticClient(sim.url)
        fams = Families.from_config({"kb_facts": {"grader": {"kind": "critic"}, "reference_from_entry": False}},
                                    critic=critic)
        cfg = RewardParams(format_weight=0, diversity_weight=0)
        (g,) = [f for f in make_reward_funcs(cfg, None, families=fams) if f.__name__ == "reward_grade"]
        got = g(["p", "p"], [right, wrong], answer=["", ""], question=[task["question"]] * 2, family=["kb_facts"] * 2)
        critic.close()
        state = json.loads(urllib.request.urlopen(f"{sim.url}/_sim/state", timeout=10).read())
    finally:
        sim.close()
    assert state["requests"]["critic"] == 1  # one request for the batch
    w = cfg.grading.normalised()
    assert got[0] == pytest.approx(cfg.grade_weight * 1.0)  # the critic agrees: every column
    # the answer it refuses: no correctness, and the paths (which give the true figure) do not back the final answer
    assert got[1] == pytest.approx(cfg.grade_weight * (w["parallel_format"] + w["compliance"]))
