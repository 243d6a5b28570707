"""The backtest replays every task family the agent serves, graded by the family's grader, with a report row per
family next to the GSM-lite benchmark; entries of families without a grader are named, not silently skipped."""

from __future__ import annotations

from types import SimpleNamespace

from pr1d.data.gradebook import LocalGradebook
from pr1d.evaluate.backtest import summarize
from pr1d.stages.backtest import grade_side, gradebook_tasks
from pr1d.tasks.families import Families

FAMS = Families.from_config({"store_facts": {"grader": {"kind": "exact"}}})


def entries():
    gsm = {"agent_id": "a1", "task_id": "gsm-easy-0001", "question": "Mia has 23 apples and buys 45 more. How many?",
           "transcript": "23 + 45 = 68\nFinal Answer: 68", "final_answer": "68", "score": 0.97, "ts": 1}
    kb = [{"agent_id": "a1", "task_id": f"kb-easy-{i:04d}", "family": "store_facts", "tier": "easy" if i else "",
           "question": f"Where does product {i} ship from?", "transcript": f"Page {i}.\nFinal Answer: Lyon",
           "final_answer": "Lyon", "score": 0.9, "ts": 10 + i} for i in range(3)]
    other = {"agent_id": "a1", "task_id": "tc-1", "family": "tool_calls", "question": "Call the API", "score": 1.0,
             "ts": 20}
    someone_else = {**kb[0], "agent_id": "a2", "task_id": "kb-easy-0099"}
    failed = {**kb[1], "task_id": "kb-easy-0050", "final_answer": "Porto", "score": 0.2, "ts": 30}  # no reference
    return [gsm, *kb, other, someone_else, failed]


def test_gradebook_replay_goes_through_the_families(tmp_path):
    LocalGradebook(tmp_path / "gradebook").append(entries(), "c1")
    tasks, stats = gradebook_tasks(str(tmp_path), "a1", 10, FAMS)
    by_id = {t["task_id"]: t for t in tasks}
    assert set(by_id) == {"gsm-easy-0001", "kb-easy-0000", "kb-easy-0001", "kb-easy-0002"}
    assert by_id["gsm-easy-0001"]["family"] == "gsm_lite" and by_id["gsm-easy-0001"]["answer"] == "68"
    assert by_id["kb-easy-0001"] | {} == {"id": "gb:kb-easy-0001", "task_id": "kb-easy-0001", "source": "gradebook",
                                         "question": "Where does product 1 ship from?", "answer": "Lyon",
                                         "tier": "easy", "family": "store_facts"}
    assert by_id["kb-easy-0000"]["tier"] == "store_facts"  # no platform tier: its own row, named by the family
    assert stats["unknown_families"] == {"tool_calls": 1}
    assert stats["dropped"] == {"unknown_family": 1, "wrong_answer": 1}  # the low-scored entry's answer is untrusted
    # GSM-lite only (no [tasks] families): the store entries are named, not lost in silence
    _, gsm_only = gradebook_tasks(str(tmp_path), "a1", 10)
    assert gsm_only["unknown_families"] == {"store_facts": 4, "tool_calls": 1}


def test_family_items_are_graded_by_their_grader_and_reported_per_family(tmp_path):
    LocalGradebook(tmp_path / "gradebook").append(entries(), "c1")
    tasks, _ = gradebook_tasks(str(tmp_path), "a1", 10, FAMS)
    right = SimpleNamespace(text="Page says so.\nFinal Answer: the Lyon.", finished=True)
    wrong = SimpleNamespace(text="Final Answer: Porto", finished=True)
    gsm_right = SimpleNamespace(text="23 + 45 = 68\nFinal Answer: 68", finished=True)
    cand = [gsm_right if t["family"] == "gsm_lite" else right for t in tasks]
    inc = [gsm_right if t["family"] == "gsm_lite" else wrong for t in tasks]
    replay: dict = {}
    grades = {"candidate": grade_side(cand, tasks, FAMS, (), replay), "incumbent": grade_side(inc, tasks, FAMS, (), replay)}
    assert replay["grader_unavailable"] == 0
    items = [{"id": t["id"], "task_id": t["task_id"], "source": t["source"], "tier": t["tier"],
              "question": t["question"], "answer": t["answer"], "family": t["family"],
              **{s: {**grades[s][i].to_dict(), "finished": True, "rubric": {}, "violations": []} for s in grades}}
             for i, t in enumerate(tasks)]
    summary = summarize(items, resamples=200)
    fam = summary["families"]
    assert set(fam) == {"gsm_lite", "store_facts"}
    assert fam["store_facts"]["n"] == 3 and fam["gsm_lite"]["n"] == 1
    acc = fam["store_facts"]["columns"]["correctness"]
    assert (acc["candidate"], acc["incumbent"], acc["diff"]) == (1.0, 0.0, 1.0)
    assert fam["gsm_lite"]["columns"]["correctness"]["diff"] == 0.0


def test_a_family_with_a_heldout_set_is_replayed_next_to_gsm_lite():
    """`[tasks.families.X] heldout` puts the family's own benchmark in the backtest (source heldout), like GSM-lite's,
    so the promotion gate sees the family even when every gradebook task of it was training data."""
    from pr1d.params import BacktestParams
    from pr1d.stages.backtest import heldout_tasks
    from pr1d.tasks.config import TasksConfig

    cfg = TasksConfig.model_validate({"families": {
        "kb_facts": {"grader": {"kind": "numeric"}, "heldout": "builtin:kb_facts"},
        "store_facts": {"grader": {"kind": "exact"}}}})
    w = SimpleNamespace(spec=SimpleNamespace(tasks=cfg))
    held = heldout_tasks(w, BacktestParams(n_per_tier=4), cfg.build())
    assert len(held) == 12 and {t["source"] for t in held} == {"heldout"} and {t["family"] for t in held} == {"kb_facts"}
    assert held[0]["id"].startswith("heldout:kb_facts:kb-") and held[0]["answer"].isdigit()
    assert heldout_tasks(w, BacktestParams(n_per_tier=0), cfg.build()) == []
