"""A task family's held-out set: the built-in store catalogue products or a JSON-lines file."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pr1d.config import Config
from pr1d.tasks.families import load_heldout


def test_builtin_kb_facts_is_the_held_out_products():
    tasks = load_heldout("builtin:kb_facts", per_tier=5)
    assert Counter(t["tier"] for t in tasks) == {"easy": 5, "medium": 5, "hard": 5}
    assert all(set(t) == {"id", "question", "answer", "tier"} for t in tasks)
    with pytest.raises(ValueError, match="unknown built-in set"):
        load_heldout("builtin:tool_calls")


def test_builtin_kb_facts_selection_split_is_other_held_out_products():
    from pr1d.tasks import kb_facts

    gate = load_heldout("builtin:kb_facts")
    select = load_heldout("builtin:kb_facts", split="select")
    assert Counter(t["tier"] for t in select) == Counter(t["tier"] for t in gate) == {"easy": 72, "medium": 48,
                                                                                      "hard": 24}
    products = {kb_facts.product_in(t["question"]) for t in select}
    assert all(p.split == "eval" for p in products) and len(products) == 24
    assert not products & {kb_facts.product_in(t["question"]) for t in gate}
    with pytest.raises(ValueError, match="unknown held-out split"):
        load_heldout("builtin:kb_facts", split="train")


def test_select_may_not_be_the_gates_own_file(tmp_path):
    from pr1d.tasks.config import TasksConfig

    f = str(tmp_path / "h.jsonl")
    with pytest.raises(ValueError, match="select and heldout name the same file"):
        TasksConfig.model_validate({"families": {"x": {"grader": {"kind": "exact"}, "heldout": f, "select": f}}}).build()


def test_jsonl_heldout_is_read_per_tier_and_bad_lines_are_named(tmp_path):
    f = tmp_path / "support.jsonl"
    rows = [{"question": f"q{i}", "answer": "Lyon", "tier": "easy" if i % 2 else "hard"} for i in range(6)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = load_heldout(str(f), per_tier=2)
    assert [t["question"] for t in got] == ["q0", "q1", "q2", "q3"] and got[0]["id"] == "support-1"
    f.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"support.jsonl:2: not JSON"):
        load_heldout(str(f))
    f.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"support.jsonl:1: expected an object with a string question and an answer"):
        load_heldout(str(f))
    with pytest.raises(ValueError, match="cannot read it"):
        load_heldout(str(tmp_path / "missing.jsonl"))


def test_heldout_and_kb_context_are_config_keys():
    cfg = Config.model_validate({"tasks": {"gsm_lite_kb_context": False, "families": {
        "kb_facts": {"grader": {"kind": "numeric"}, "heldout": "builtin:kb_facts", "kb_context": True},
        "support": {"grader": {"kind": "exact"}, "kb_context": False}}}})
    t = cfg.tasks
    assert (t.kb_context("gsm_lite"), t.kb_context("kb_facts"), t.kb_context("support"), t.kb_context("nope")) == (
        False, True, False, False)
    assert t.for_profile("any").gsm_lite_kb_context is False
    assert t.families["kb_facts"].heldout == "builtin:kb_facts"


def test_family_topup_draws_unseen_training_tasks_up_to_min_records():
    from pr1d.stages.dataset import family_topup
    from pr1d.tasks import kb_facts
    from pr1d.tasks.config import TasksConfig

    cfg = TasksConfig.model_validate({"families": {"kb_facts": {
        "grader": {"kind": "numeric"}, "train_tasks": "builtin:kb_facts", "min_records": 30}}})
    fams = cfg.build()
    seen = kb_facts.train_split()[:10]
    entries = [{"family": "kb_facts", "question": t["question"], "final_answer": t["answer"]} for t in seen]
    entries.append({"question": "Mia has 2 apples.", "final_answer": "2"})  # gsm_lite: not counted
    extra, counts = family_topup(cfg, entries, fams, seed=0)
    assert counts == {"kb_facts": 20} and len(extra) == 20
    assert not {e["question"] for e in extra} & {t["question"] for t in seen}
    assert all(kb_facts.product_in(e["question"]).split == "train" and e["family"] == "kb_facts" for e in extra)
    assert extra == family_topup(cfg, entries, fams, seed=0)[0]  # seeded
    with pytest.raises(ValueError, match="min_records needs train_tasks"):
        TasksConfig.model_validate({"families": {"x": {"grader": {"kind": "exact"}, "min_records": 5}}})
