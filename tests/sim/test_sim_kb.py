"""The sim's second task family: KB-facts work in the gradebook, a critic that knows the catalogue, and the
teacher and sampler endpoints that make datasets for it (against a real `pr1d sim` on 127.0.0.1)."""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from collections import Counter

import httpx
import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import build_dataset
from pr1d.data.self_sample import SelfSampler
from pr1d.data.teacher import TeacherGenerator
from pr1d.sim.platform import Platform
from pr1d.sim.scenarios import ScenarioError, load_scenario, parse_scenario
from pr1d.tasks import kb_facts
from pr1d.tasks.families import Families
from tests.monitor.test_monitor_e2e import Sim

FAMS = Families.from_config({"kb_facts": {"grader": {"kind": "numeric"}}})


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    s = Sim(tmp_path_factory.mktemp("kbsim"), "kb-dip")
    s.tick(500)
    yield s
    s.close()


def _gradebook(sim: Sim) -> list[dict]:
    out, cursor = [], ""
    while True:
        page = httpx.get(f"{sim.url}/v1/gradebook", params={"since": cursor, "limit": 1000}, timeout=10).json()
        out += page["entries"]
        if not page["entries"]:
            return out
        cursor = page["next_cursor"]


def test_kb_work_arrives_at_the_shift_and_names_its_family(sim):
    evals = httpx.get(f"{sim.url}/v1/agents/agent-000/evaluations", params={"limit": 1000}, timeout=10).json()
    fams = [(i, e.get("family", "gsm_lite"), e["task_id"].split("-")[0]) for i, e in enumerate(evals["evaluations"])]
    assert all(f == "gsm_lite" and p == "gsm" for i, f, p in fams if i < 150)
    late = Counter(f for i, f, _ in fams if i >= 150)
    assert 0.4 < late["kb_facts"] / sum(late.values()) < 0.6
    assert all(p == "kb" for _, f, p in fams if f == "kb_facts")
    entries = _gradebook(sim)
    kb = [e for e in entries if e.get("family") == "kb_facts"]
    assert kb and all(kb_facts.product_in(e["question"]).split == "train" for e in kb)  # never a held-out product
    assert all("family" not in e for e in entries if e["task_id"].startswith("gsm-"))


def test_gsm_only_scenarios_draw_exactly_as_before():
    """A family mix of GSM-lite alone draws no extra random numbers: same seed, same bytes."""
    base = load_scenario("sudden-drift")
    data = {**base.spec.model_dump(exclude_defaults=True), "family_mix": {"gsm_lite": 1.0}}
    same = parse_scenario(data, name="x", source="x")
    a, b = Platform(base), Platform(same)
    a.tick(120), b.tick(120)
    assert a.gradebook_page(limit=1000).body() == b.gradebook_page(limit=1000).body()
    assert a.evaluations_page(a.agent_ids[0], limit=1000).body() == b.evaluations_page(b.agent_ids[0], limit=1000).body()


@pytest.mark.parametrize(("extra", "msg"), [
    ('family_mix = { tool_calls = 1.0 }', "family_mix.tool_calls: unknown task family"),
    ('family_mix = { gsm_lite = 0.0 }', "family_mix: at least one family needs a positive weight"),
    ('family_mix_after = { kb_facts = 1.0 }', "set family_shift_at too"),
])
def test_bad_family_mixes_are_refused(extra, msg):
    doc = tomllib.loads(f'{extra}\n[behaviours.b]\nmean = 0.9\n[[agents]]\nid = "a"\nbehaviour = "b"\n')
    with pytest.raises(ScenarioError, match=msg):
        parse_scenario(doc, name="bad", source="bad.toml")


def test_critic_knows_the_catalogue_held_out_products_too(sim):
    held = kb_facts.eval_split(per_tier=3)
    items = [{"question": t["question"], "answer": t["answer"]} for t in held]
    items += [{"question": t["question"], "answer": str(int(t["answer"]) + 2)} for t in held]
    res = sim.post("/v1/critic/verify", {"items": items})["results"]
    assert [r["agree"] for r in res] == [True] * len(held) + [False] * len(held)
    assert all(r["confidence"] >= 0.95 for r in res)


def test_the_teacher_makes_a_verified_dataset_from_kb_entries(sim):
    entries = [e for e in _gradebook(sim) if e["score"] >= 0.7]
    teacher = TeacherGenerator(sim.url, "sim-teacher")
    page = {e["question"]: kb_facts.product_in(e["question"]).document() for e in entries if e.get("family")}
    records, stats = build_dataset(entries, families=FAMS, generator=teacher, kb=lambda q: page.get(q, ""))
    teacher.close()
    kb = [r for r in records if r.get("family") == "kb_facts"]
    assert len(kb) >= 10 and stats["families"]["kb_facts"]["built"] == len(kb)
    assert stats["families"]["gsm_lite"]["built"] >= 10  # the teacher knows the platform's arithmetic too
    for r in kb:
        assert pf.check(r["completion"]) is None and r["paths"] == 2
        assert r["prompt"].startswith(page[r["question"]]) and r["answer"] == kb_facts.lookup(r["question"])["answer"]
    assert teacher.errors == 0 and teacher.requests >= len(records)


def test_the_teacher_refuses_what_it_does_not_know(sim):
    teacher = TeacherGenerator(sim.url, "sim-teacher")
    texts = teacher._ask("system", "Question: Where does the Orbit lamp ship from?\nAnswer:\n")
    teacher.close()
    assert texts and all("Larkfield" in t and pf.extract_final_answer(t) is None for t in texts)


def test_self_sampling_yields_records_only_with_the_page_in_the_prompt(sim):
    entries = [e for e in _gradebook(sim) if e.get("family") == "kb_facts" and e["score"] >= 0.7]
    sampler = SelfSampler(sim.url, "agent-000", samples=8)
    page = {e["question"]: kb_facts.product_in(e["question"]).document() for e in entries}
    with_kb, s_with = build_dataset(entries, families=FAMS, generator=sampler, kb=lambda q: page[q])
    without, s_without = build_dataset(entries, families=FAMS, generator=sampler)
    sampler.close()
    n = s_with["families"]["kb_facts"]["entries"]
    assert len(with_kb) >= 0.7 * n and all(r["paths"] == 2 for r in with_kb)
    assert without == [] and s_without["drops"]["too_few_strategies"] >= 0.9 * n


@pytest.mark.parametrize(("path", "body", "msg"), [
    ("/v1/chat/completions", {"model": "t"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "n": 0}, "'n' must be an integer"),
    ("/v1/completions", {"prompt": 3}, "prompt"),
])
def test_malformed_model_requests_get_a_clear_400(sim, path, body, msg):
    with pytest.raises(urllib.error.HTTPError) as e:
        sim.post(path, body)
    assert e.value.code == 400 and msg in json.loads(e.value.read())["error"]


def test_model_replies_are_deterministic(sim):
    body = {"model": "m", "prompt": kb_facts.PRODUCTS[2].document() + "\n\nQuestion: "
            + kb_facts.task_for(kb_facts.PRODUCTS[2], "member")["question"] + "\nAnswer:\n", "n": 6}
    a = httpx.post(f"{sim.url}/v1/completions", json=body, timeout=10).json()
    b = httpx.post(f"{sim.url}/v1/completions", json=body, timeout=10).json()
    assert a == b and len(a["choices"]) == 6
    req = urllib.request.Request(f"{sim.url}/_sim/state")
    assert json.loads(urllib.request.urlopen(req, timeout=10).read())["requests"]["sampler"] >= 2
