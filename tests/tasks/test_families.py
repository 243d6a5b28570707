"""Task families: entries become tasks per family, unknown families are named, [tasks] config is checked at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pr1d.config import Config
from pr1d.tasks.config import TasksConfig
from pr1d.tasks.contract import DropReason
from pr1d.tasks.families import (
    Configured,
    Families,
    FamilySpec,
    GsmLite,
    family_pass_rates,
    tier_from_pass_rate,
)

GSM_ENTRY = {"task_id": "gsm-easy-0001", "question": "Mia has 23 apples and buys 45 more. How many apples now?",
             "transcript": "23 + 45 = 68\nFinal Answer: 68", "final_answer": "68", "score": 0.97}
KB_ENTRY = {"task_id": "kb-easy-0003", "family": "store_facts", "question": "Where does the Orbit Lamp ship from?",
            "transcript": "The Orbit Lamp page says it ships from Lyon.\nFinal Answer: Lyon", "final_answer": "Lyon",
            "tier": "easy", "score": 0.95}


def test_gsm_lite_family_verifies_the_chain():
    task = GsmLite().task_from_entry(GSM_ENTRY)
    assert (task.family, task.reference, task.tier, task.meta["steps"]) == ("gsm_lite", "68", "easy", ["23 + 45 = 68"])
    assert GsmLite().sequential(task) == "23 + 45 = 68\nFinal Answer: 68"
    with pytest.raises(DropReason, match="wrong_answer"):
        GsmLite().task_from_entry({**GSM_ENTRY, "transcript": "23 + 45 = 69\nFinal Answer: 69", "final_answer": "69"})


def test_configured_family_takes_the_graded_answer_as_reference():
    fam = Configured("store_facts", FamilySpec(grader={"kind": "exact"}))
    task = fam.task_from_entry(KB_ENTRY)
    assert (task.id, task.family, task.reference, task.tier) == ("kb-easy-0003", "store_facts", "Lyon", "easy")
    assert fam.sequential(task) == KB_ENTRY["transcript"]  # the graded work itself is the sequential record
    # no final_answer field: read from the transcript
    assert fam.task_from_entry({**KB_ENTRY, "final_answer": None}).reference == "Lyon"
    for bad, why in (({"question": "  "}, "missing question"),
                     ({"final_answer": None, "transcript": "no answer line"}, "no final answer"),
                     ({"tier": "extreme"}, "tier 'extreme'")):
        with pytest.raises(DropReason, match=why):
            fam.task_from_entry({**KB_ENTRY, **bad})
    # a transcript in Parallel format is not a sequential record
    par = "<Parallel><Path>a Lyon</Path><Path>b Lyon</Path><Summary>Lyon</Summary></Parallel>\nFinal Answer: Lyon"
    assert fam.sequential(fam.task_from_entry({**KB_ENTRY, "transcript": par})) is None


def test_critic_family_needs_no_reference_and_a_reference_grader_needs_one():
    fam = Configured("support", FamilySpec(grader={"kind": "critic"}, reference_from_entry=False), critic=object())
    assert fam.task_from_entry({"question": "Reset my password?", "score": 1.0}).reference is None
    with pytest.raises(ValueError, match="needs a reference answer"):
        Configured("x", FamilySpec(grader={"kind": "exact"}, reference_from_entry=False))
    with pytest.raises(ValueError, match="lowercase"):
        Configured("Bad Name", FamilySpec(grader={"kind": "exact"}))


def test_families_route_entries_and_name_the_unknown():
    fams = Families.from_config({"store_facts": {"grader": {"kind": "exact"}}})
    assert fams.for_entry(GSM_ENTRY).name == "gsm_lite"  # no family field: the default
    assert fams.for_entry(KB_ENTRY).name == "store_facts"
    assert fams.for_entry({**KB_ENTRY, "family": "tool_calls"}) is None
    assert fams.name_of({**KB_ENTRY, "family": "tool_calls"}) == "tool_calls"
    with pytest.raises(ValueError, match=r"'tool_calls' is not configured .*\[tasks.families.tool_calls\]"):
        fams.family("tool_calls")


def test_families_grade_batches_per_family(tmp_path):
    """Each family's items are graded together: one critic request for the critic-graded family (the sim's
    critic, which knows the store catalogue), none for the others."""
    import json
    import urllib.request

    from pr1d.tasks import kb_facts
    from pr1d.train.critic import CriticClient
    from tests.monitor.test_monitor_e2e import Sim

    q1, q2 = (t["question"] for t in kb_facts.eval_split(per_tier=1)[:2])
    a1, a2 = (kb_facts.lookup(q)["answer"] for q in (q1, q2))
    sim = Sim(tmp_path, "kb-dip")
    try:
        critic = CriticClient(sim.url)
        fams = Families.from_config({"store_facts": {"grader": {"kind": "exact"}},
                                     "kb_facts": {"grader": {"kind": "critic"}, "reference_from_entry": False}},
                                    critic=critic)
        got = fams.grade([("store_facts", "q1", "Lyon", "lyon"), ("kb_facts", q1, None, a1),
                          ("gsm_lite", "q3", "68", "68.0"), ("kb_facts", q2, None, str(int(a2) + 1)),
                          ("store_facts", "q5", "Lyon", "Porto")])
        critic.close()
        assert [v.passed for v in got] == [True, True, True, False, False]
        state = json.loads(urllib.request.urlopen(f"{sim.url}/_sim/state", timeout=10).read())
        assert state["requests"]["critic"] == 1  # one request for the family's items
    finally:
        sim.close()


def test_tasks_config_is_checked_at_load():
    cfg = Config.model_validate({"tasks": {"default_family": "store_facts",
                                           "families": {"store_facts": {"grader": {"kind": "numeric", "tolerance": 0.5}}}}})
    assert cfg.tasks.build().default == "store_facts"
    for bad, msg in (({"families": {"gsm_lite": {"grader": {"kind": "exact"}}}}, "built in"),
                     ({"default_family": "nope"}, "default_family 'nope'"),
                     ({"families": {"x": {"grader": {"kind": "fuzzy"}}}}, "grader"),
                     ({"families": {"x": {"grader": {"kind": "exact"}, "reference_from_entry": False}}}, "needs a reference"),
                     ({"families": {"x": {"grader": {"kind": "exact"}, "typo": 1}}}, "typo")):
        with pytest.raises(ValidationError, match=msg):
            TasksConfig.model_validate(bad)
    assert TasksConfig.model_validate({"families": {"s": {"grader": {"kind": "critic"},
                                                          "reference_from_entry": False}}}).needs_critic()


def test_tiers_from_pass_rates():
    entries = [{"family": "store_facts", "score": s} for s in (0.9, 0.2, 0.3, 0.1)] + [{"score": 0.95}] * 3
    rates = family_pass_rates(entries)
    assert rates == {"gsm_lite": 1.0, "store_facts": 0.25}
    assert [tier_from_pass_rate(r) for r in (0.95, 0.8, 0.6, 0.49)] == ["easy", "easy", "medium", "hard"]
    assert tier_from_pass_rate(0.4, ("easy", "hard")) == "hard" and tier_from_pass_rate(0.1, ("only",)) == "only"


PROFILED = {
    "families": {"store_facts": {"grader": {"kind": "exact"}},
                 "support": {"grader": {"kind": "critic"}, "reference_from_entry": False}},
    "profiles": {"helpdesk": {"families": ["support"], "default_family": "support",
                              "teacher_url": "http://127.0.0.1:1/", "teacher_model": "t"},
                 "shop": {"families": ["store_facts", "gsm_lite"]}},
}


def test_profiles_pick_the_families_an_agent_serves_and_its_teacher(tmp_path):
    from pr1d.pipeline.spec import build_stage_spec

    cfg = Config.model_validate({"tasks": PROFILED, "dataset": {"teacher_url": "http://127.0.0.1:2/",
                                                                "teacher_model": "global"}})

    def spec(profile):
        return build_stage_spec(cfg, run={"id": 1, "agent_id": "a", "kind": "dataset", "params": {}},
                                stage={"id": 1, "seq": 1, "name": "dataset"}, state_dir=tmp_path, models_root=tmp_path,
                                model_in_service=None, heartbeat_s=5, profile=profile)

    help_spec = spec("helpdesk")
    fams = help_spec.tasks.build(critic=object())
    assert sorted(fams.by_name) == ["support"] and fams.default == "support"
    assert fams.for_entry(GSM_ENTRY) is not None  # no family field: the profile's default (support)
    assert fams.for_entry({**KB_ENTRY}) is None  # store_facts: not served by helpdesk, reported as ungraded
    assert (help_spec.dataset.teacher_url, help_spec.dataset.teacher_model) == ("http://127.0.0.1:1/", "t")
    shop = spec("shop").tasks.build()
    assert sorted(shop.by_name) == ["gsm_lite", "store_facts"] and shop.for_entry(GSM_ENTRY).name == "gsm_lite"
    other = spec("unlisted")
    assert sorted(other.tasks.build(critic=object()).by_name) == ["gsm_lite", "store_facts", "support"]
    assert other.dataset.teacher_model == "global"
    # the spec round-trips through its JSON file as the worker reads it
    assert type(help_spec).model_validate_json(help_spec.model_dump_json()).tasks.build(critic=object()).default == "support"


@pytest.mark.parametrize(("tasks", "msg"), [
    ({**PROFILED, "profiles": {"p": {"families": ["nope"]}}}, r"profiles.p.families: \['nope'\]"),
    ({**PROFILED, "profiles": {"p": {"families": ["support"]}}}, "default family 'gsm_lite' is not one it serves"),
    ({**PROFILED, "serves": ["support"]}, "default_family 'gsm_lite' is not one of serves"),
    ({**PROFILED, "profiles": {"p": {"colour": "red"}}}, "colour"),
])
def test_bad_profiles_are_refused_at_load(tasks, msg):
    with pytest.raises(ValidationError, match=msg):
        TasksConfig.model_validate(tasks)
