"""The dataset stage run by the daemon against `pr1d sim`, with KB context from `pr1ctl kb ingest`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pr1d
from tests.monitor.test_monitor_e2e import Sim


def test_dataset_run_builds_a_versioned_dataset_with_kb_context(daemon_factory, tmp_path):
    sim = Sim(tmp_path, "steady")
    try:
        sim.tick(200)
        d = daemon_factory(extra_env={"PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url}).start()
        deadline = time.monotonic() + 30
        while not d.ctl_json("agents"):
            assert time.monotonic() < deadline, "the start-up poll did not register agents"
            time.sleep(0.2)
        d.ctl_json("kb", "ingest", str(Path(pr1d.__file__).parent / "kb" / "corpus"))
        rid = d.ctl_json("trigger", "agent-000", "--kind", "dataset")["run"]["id"]
        run = d.wait_run(rid, {"succeeded", "failed"}, timeout=240)
        assert run["state"] == "succeeded", run["reason"]
        art = next(a for a in run["artifacts"] if a["kind"] == "dataset")
        manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
        assert manifest["records"] > 100 and len(art["sha256"]) == 64
        assert manifest["stats"]["kb"]["status"] == "ok" and manifest["stats"]["kb"]["with_context"] > 0
        first = json.loads((Path(art["path"]) / "records.jsonl").read_text().splitlines()[0])
        assert first["prompt"].index("Question:") > 0  # KB context comes before the question
        assert "<Parallel>" in first["completion"] and "[1]" not in first["completion"]
        assert run["metrics_last"]["dataset.records"] == manifest["records"]
        shown = d.ctl("show", str(rid)).stdout
        assert "dataset" in shown and art["sha256"][:16] in shown
    finally:
        sim.close()


def test_gradebook_sync_keeps_a_deduplicated_local_copy(daemon_factory, tmp_path):
    from pr1d.data.gradebook import LocalGradebook

    sim = Sim(tmp_path, "steady")
    try:
        sim.tick(100)
        d = daemon_factory(extra_env={"PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url}).start()
        jobs = {j["id"] for j in d.ctl_json("status")["scheduler_jobs"]}
        assert "gradebook_sync" in jobs
        with d.client() as c:
            first = c.call("gradebook.sync")
            again = c.call("gradebook.sync")
            sim.tick(50)
            more = c.call("gradebook.sync")
        assert first["added"] > 0 and again["added"] == 0 and more["added"] > 0
        book = LocalGradebook(d.state_dir / "gradebook")
        held = book.load()
        assert len(held) == first["added"] + more["added"]
        assert len({(e["task_id"], e["question"], e["transcript"]) for e in held}) == len(held)
        assert book.cursor() == more["cursor"]
        rid = d.ctl_json("trigger", "agent-001", "--kind", "dataset", "--param", "kb=false")["run"]["id"]
        run = d.wait_run(rid, {"succeeded", "failed"}, timeout=120)
        assert run["state"] == "succeeded", run["reason"]
        art = next(a for a in run["artifacts"] if a["kind"] == "dataset")
        manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
        assert manifest["stats"]["fetch"]["from_local_copy"] == len(held)
    finally:
        sim.close()


def test_kb_family_dataset_from_the_sims_teacher_with_the_store_pages(daemon_factory, tmp_path):
    """kb-dip's store questions become verified Parallel records whose prompts hold the product's page (retrieved
    from the KB the daemon ingested); GSM-lite prompts stay without context (gsm_lite_kb_context = false)."""
    from pr1d import demo
    from pr1d.tasks import kb_facts

    sim = Sim(tmp_path, "kb-dip")
    try:
        sim.tick(500)
        cfg = tmp_path / "kb.toml"
        cfg.write_text(demo.KB_TOML.replace("min_records = 3000", "min_records = 150"))
        d = daemon_factory(config=cfg, extra_env={"PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url,
                                                  "PR1_DATASET__TEACHER_URL": sim.url,
                                                  "PR1_DATASET__MIN_SCORE": "0.7"}).start()
        deadline = time.monotonic() + 30
        while not d.ctl_json("agents"):
            assert time.monotonic() < deadline, "the start-up poll did not register agents"
            time.sleep(0.2)
        # 1,152 pages to embed: minutes on a busy 2-core machine, not the 30 s of a quick command.
        ingested = json.loads(d.ctl("kb", "ingest", str(demo.store_corpus()), "--json", timeout=600).stdout)
        assert ingested["files"] == len(kb_facts.PRODUCTS) + 1
        rid = d.ctl_json("trigger", "agent-000", "--kind", "dataset")["run"]["id"]
        run = d.wait_run(rid, {"succeeded", "failed"}, timeout=240)
        assert run["state"] == "succeeded", run["reason"]
        art = next(a for a in run["artifacts"] if a["kind"] == "dataset")
        manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
        fams = manifest["stats"]["families"]
        assert fams["kb_facts"]["records"] >= 140 and fams["gsm_lite"]["records"] >= 10
        # the gradebook's store questions (min_score 0: failed ones too), topped up from the catalogue's bank
        topped = manifest["stats"]["family_topup"]["kb_facts"]
        assert 0 < topped < 150 and fams["kb_facts"]["entries"] >= 150
        assert manifest["stats"]["generator"]["name"] == "teacher" and manifest["stats"]["generator"]["errors"] == 0
        records = [json.loads(x) for x in (Path(art["path"]) / "records.jsonl").read_text().splitlines()]
        kb = [r for r in records if r.get("family") == "kb_facts"]
        for r in kb:
            assert r["prompt"].startswith("[1] ") and r["answer"] == kb_facts.lookup(r["question"])["answer"]
        # The product's page is among the retrieved ones (sources are relative to the ingested folder); the
        # embedder ranks it first for nearly every question (benchmarks/kb_family.md measures how often).
        found = sum(f"] {kb_facts.product_in(r['question']).slug}.md\n" in r["prompt"] for r in kb)
        assert found >= 0.95 * len(kb), f"{found} of {len(kb)} prompts hold the product's page"
        assert all(r["prompt"].startswith("Question: ") for r in records if r.get("family") != "kb_facts")
    finally:
        sim.close()
