"""Datasets for any task family: every path graded on its own, self-sampled traces, unknown families reported."""

from __future__ import annotations

import json

import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import DropReason, build_dataset, build_family_record, write_dataset
from pr1d.data.self_sample import compose
from pr1d.tasks.contract import Task
from pr1d.tasks.families import Families

FAMS = Families.from_config({"store_facts": {"grader": {"kind": "exact"}}})
FAM = FAMS.family("store_facts")
TASK = Task("kb-easy-0001", "store_facts", "Where does the Orbit Lamp ship from?", "Lyon", "easy")

SAMPLES = [
    "The Orbit Lamp's product page lists its warehouse as Lyon.\nFinal Answer: Lyon",
    "The lighting price list marks the Orbit Lamp as shipped from Lyon.\nFinal Answer: Lyon",
    "The Orbit Lamp ships from Porto.\nFinal Answer: Porto",  # wrong: rejected
    "The Orbit Lamp's product page lists its warehouse as Lyon.\nFinal Answer: lyon",  # same reasoning: counted once
    "<Parallel><Path>a Lyon</Path><Path>b Lyon</Path><Summary>Lyon</Summary></Parallel>\nFinal Answer: Lyon",
    "no answer line at all",
]


def test_compose_keeps_accepted_distinct_samples_as_paths():
    (trace,) = compose(TASK, FAM, SAMPLES, branches=2)
    sol = pf.parse(trace)
    (block,) = sol.blocks
    assert sol.final_answer == "Lyon" and len(block.paths) == 2
    assert all(p.endswith("So the answer is Lyon.") for p in block.paths)
    assert "Porto" not in trace and block.summary == "Both paths give Lyon."


@pytest.mark.parametrize("samples", [SAMPLES[2:], [SAMPLES[0], SAMPLES[3]], []])
def test_compose_needs_two_distinct_accepted_samples(samples):
    with pytest.raises(DropReason) as e:
        compose(TASK, FAM, samples, branches=2)
    assert e.value.code == "too_few_strategies"


class Traces:
    """A trace source answering fixed completions (the builder's verification is what is under test)."""

    name, requests, errors = "fixed", 0, 0

    def __init__(self, *completions):
        self.out = list(completions)

    def family_completions(self, task, family, branches):
        return self.out


GOOD = ("<Parallel><Path>The product page says Lyon.\nSo the answer is Lyon.</Path><Path>The Lyon warehouse list "
        "names the Orbit Lamp.\nSo the answer is Lyon.</Path><Summary>Both paths give Lyon.</Summary></Parallel>\n"
        "Final Answer: Lyon")


@pytest.mark.parametrize(("completion", "code"), [
    (GOOD.replace("warehouse list names the Orbit Lamp.\nSo the answer is Lyon.",
                  "warehouse list does not list it.\nSo the answer is Porto."), "path_rejected"),
    (GOOD.replace("Final Answer: Lyon", "Final Answer: Porto"), "wrong_answer"),
    (GOOD.replace("The Lyon warehouse list names the Orbit Lamp.", "The product page says Lyon."), "paths_identical"),
    (GOOD.replace("</Parallel>", ""), "format_invalid"),
])
def test_every_path_is_graded_on_its_own(completion, code):
    with pytest.raises(DropReason) as e:
        build_family_record(TASK, FAM, generator=Traces(completion))
    assert e.value.code == code


def test_a_good_trace_becomes_a_record_with_context_and_family():
    rec = build_family_record(TASK, FAM, kb_context="Orbit Lamp: ships from Lyon.", generator=Traces("junk", GOOD))
    assert rec["completion"] == GOOD and rec["paths"] == 2 and rec["family"] == "store_facts"
    assert rec["prompt"] == "Orbit Lamp: ships from Lyon.\n\nQuestion: Where does the Orbit Lamp ship from?\nAnswer:\n"
    with pytest.raises(DropReason, match="no trace source for family 'store_facts'"):
        build_family_record(TASK, FAM)


def _entry(i, family="store_facts", answer="Lyon"):
    return {"task_id": f"kb-easy-{i:04d}", "family": family, "tier": "easy", "score": 0.95,
            "question": f"Where does product {i} ship from?",
            "transcript": f"Product {i}'s page says {answer}.\nFinal Answer: {answer}", "final_answer": answer}


def test_unknown_families_are_counted_and_named(tmp_path):
    entries = [_entry(1), _entry(2), _entry(3, family="tool_calls"), _entry(4, family="tool_calls"),
               _entry(5, family="summaries")]
    records, stats = build_dataset(entries, families=FAMS, generator=Traces(GOOD))
    assert len(records) == 2 and stats["drops"]["unknown_family"] == 3
    assert stats["unknown_families"] == {"summaries": 1, "tool_calls": 2}
    assert stats["families"]["store_facts"] == {"entries": 2, "built": 2, "records": 2, "drops": {}}
    assert stats["families"]["tool_calls"]["drops"] == {"unknown_family": 2}
    manifest = write_dataset(records, stats, tmp_path)
    assert manifest["stats"]["unknown_families"] == {"summaries": 1, "tool_calls": 2}
    lines = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert {r["family"] for r in lines} == {"store_facts"} and all("question" in r for r in lines)


def test_sequential_records_are_the_graded_transcripts():
    records, stats = build_dataset([_entry(1), _entry(2, answer="Porto")], mode="sequential", families=FAMS)
    assert sorted(r["completion"] for r in records) == sorted(e["transcript"] for e in (_entry(1), _entry(2, answer="Porto")))
    assert stats["families"]["store_facts"]["records"] == 2


def test_gsm_only_build_without_families_drops_other_families_as_unknown():
    records, stats = build_dataset([_entry(1)])
    assert records == [] and stats["unknown_families"] == {"store_facts": 1}


def test_the_tier_mix_applies_per_family_and_keeps_untiered_records():
    """A mix of tiers keeps each family's proportions on its own; a family's untiered records (tiers then come
    from pass rates) and a family whose tiers the mix does not name are kept, not dropped by the mix."""
    fams = Families.from_config({"store_facts": {"grader": {"kind": "exact"}},
                                 "support": {"grader": {"kind": "exact"}, "tiers": ["basic", "expert"]}})
    entries = [{**_entry(i), "tier": "easy" if i < 4 else "medium" if i < 8 else ""} for i in range(10)]
    entries += [{**_entry(20 + i, family="support"), "tier": "basic"} for i in range(3)]
    records, stats = build_dataset(entries, families=fams, generator=Traces(GOOD), mix={"easy": 1.0})
    by = {(r["family"], r["tier"]) for r in records}
    assert by == {("store_facts", "easy"), ("store_facts", ""), ("support", "basic")}
    assert sum(r["tier"] == "easy" for r in records) == 4 and sum(r["tier"] == "" for r in records) == 2
    assert stats["excluded_by_mix_or_cap"] == 4  # the medium ones
    capped, _ = build_dataset(entries, families=fams, generator=Traces(GOOD), mix={"easy": 1.0}, max_records=5)
    assert len(capped) == 5
