"""The KB-facts family: a fixed store catalogue, its shipped documents, tasks split by product, and answers
that only the product's page can give."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import build_family_record
from pr1d.tasks import kb_facts
from pr1d.tasks.families import Families


def test_the_committed_corpus_is_what_the_catalogue_writes(tmp_path):
    written = {p.name: p.read_text() for p in kb_facts.write_corpus(tmp_path)}
    shipped = {p.name: p.read_text() for p in kb_facts.corpus_dir().iterdir()}
    assert shipped == written, "run `python -m pr1d.tasks.kb_facts --write` and commit pr1d/kb/catalogue"
    assert len(written) == len(kb_facts.PRODUCTS) + 1  # one page per product and the README


def test_splits_are_by_product_and_tiers_are_balanced():
    train, held = kb_facts.train_split(), kb_facts.eval_split()
    assert {t["product"] for t in train}.isdisjoint({t["product"] for t in held})
    assert len({t["product"] for t in held}) == 24 and len(train) == 864 * 6 * 2
    assert len(kb_facts.catalogue("eval")) == 288 and {p.kind for p in kb_facts.catalogue("eval")} == {
        p.kind for p in kb_facts.PRODUCTS}
    assert Counter(t["tier"] for t in held) == {"easy": 72, "medium": 48, "hard": 24}
    assert Counter(t["tier"] for t in kb_facts.eval_split(per_tier=10)) == {"easy": 10, "medium": 10, "hard": 10}
    assert len({t["task_id"] for t in train}) == len(train)
    rng = random.Random(0)
    assert all(kb_facts.generate_task(rng, "hard")["split"] == "train" for _ in range(50))
    with pytest.raises(ValueError, match="unknown tier"):
        kb_facts.generate_task(rng, "extreme")


def test_answers_are_the_facts_on_the_page():
    for task in kb_facts.train_split() + kb_facts.eval_split():
        page = kb_facts.product_in(task["question"]).document()
        facts = {line.split(":")[0]: int(line.split()[-2]) for line in page.splitlines()
                 if line.split(":")[0] in ("Price", "Delivery", "Member discount", "Warranty")}
        facts["Returns"] = int(page.split("within ")[1].split()[0])
        want = {"price": facts["Price"], "warranty": facts["Warranty"], "returns": facts["Returns"],
                "delivered": facts["Price"] + facts["Delivery"], "member": facts["Price"] - facts["Member discount"],
                "member_delivered": facts["Price"] - facts["Member discount"] + facts["Delivery"]}[task["kind"]]
        assert task["answer"] == str(want) and 0 < want < 100
        assert kb_facts.lookup(task["question"])["answer"] == task["answer"]
        assert kb_facts.render_sequential(task).endswith(f"Final Answer: {want}")
        assert kb_facts.answer_matches(task, kb_facts.render_sequential(task)) and kb_facts.answer_matches(task, want)
        assert not kb_facts.answer_matches(task, want + 1)
    assert kb_facts.lookup("How much does the Orbit lamp cost, in dollars?") is None


def test_the_teacher_trace_passes_the_family_grader_path_by_path():
    fams = Families.from_config({"kb_facts": {"grader": {"kind": "numeric"}}})
    fam = fams.family("kb_facts")
    for kind in ("price", "member", "member_delivered"):
        raw = kb_facts.task_for(kb_facts.PRODUCTS[7], kind)
        task = fam.task_from_entry({**raw, "transcript": kb_facts.render_sequential(raw), "final_answer": raw["answer"]})
        trace = kb_facts.parallel_trace(raw)
        assert pf.check(trace) is None
        rec = build_family_record(task, fam, kb_context=kb_facts.PRODUCTS[7].document(),
                                  generator=type("G", (), {"family_completions": lambda *a, t=trace: [t]})())
        assert rec["paths"] == 2 and rec["answer"] == raw["answer"] and rec["prompt"].startswith("# ")


def test_retrieval_finds_the_products_page():
    """With the real embedder, every held-out question's page is the best match among all KB documents."""
    np = pytest.importorskip("numpy")
    from pr1d.kb.embed import Embedder

    emb = Embedder()
    names = list(kb_facts.documents())
    docs = np.array(emb.embed(list(kb_facts.documents().values())))
    held = kb_facts.eval_split()
    q = np.array(emb.embed([t["question"] for t in held]))
    best = (q @ docs.T).argmax(axis=1)
    hits = sum(names[b] == f"{kb_facts.product_in(t['question']).slug}.md" for b, t in zip(best, held, strict=True))
    assert hits / len(held) >= 0.95, f"{hits}/{len(held)} held-out questions retrieve their page first"
