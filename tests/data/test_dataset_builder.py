"""The Parallel dataset builder (issue 4 §2) against a real `pr1d sim`: fetch, build, verify, write, stage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pr1d.data import parallel_format as pf
from pr1d.data.builder import (
    DROP_REASONS,
    DropReason,
    build_dataset,
    build_record,
    seed_to_task,
    write_dataset,
)
from pr1d.data.gradebook import fetch_gradebook
from pr1d.evaluate import gsm_lite
from tests.conftest import BIN, pr1_env

TOKEN = "dataset-test-token"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    port_file = tmp / "port"
    log = open(tmp / "sim.log", "ab")
    proc = subprocess.Popen(
        [str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(port_file), "--scenario", "steady",
         "--seed", "1", "--time-scale", "0", "--token", TOKEN],
        stdout=subprocess.DEVNULL, stderr=log, env=pr1_env())
    deadline = time.monotonic() + 15
    while not port_file.exists():
        assert proc.poll() is None, (tmp / "sim.log").read_text()
        assert time.monotonic() < deadline, "sim did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    req = urllib.request.Request(url + "/_sim/tick", data=json.dumps({"n": 300}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req, timeout=30).read()
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def entries(sim):
    stats: dict = {}
    got, cursor = fetch_gradebook(sim, TOKEN, min_score=0.9, limit=200, stats=stats)
    assert got and cursor and stats["pages"] >= 2
    return got


def _paths(completion: str) -> tuple[str, ...]:
    (block,) = pf.parse(completion).blocks
    return block.paths


def test_every_record_valid_diverse_and_agreeing(entries):
    records, stats = build_dataset(entries, branches=2, mode="parallel", seed=1)
    assert len(records) >= 50
    for rec in records:
        assert pf.check(rec["completion"]) is None
        paths = _paths(rec["completion"])
        assert len(paths) >= 2
        assert pf.path_diversity(paths) > 0
        agree = pf.consensus(paths)
        assert agree.rate == 1.0 and agree.majority == rec["answer"]
        assert gsm_lite.check_answer(rec["completion"], rec["answer"])
        seed = next(e for e in entries if e["task_id"] == rec["task_id"])
        # The first path is the left-to-right solution: the seed transcript's own facts.
        assert gsm_lite.facts_used(paths[0]) == gsm_lite.facts_used(seed["transcript"])
        assert rec["prompt"] == gsm_lite.format_prompt(seed["question"])
    assert stats["records"] == len(records) and set(stats["drops"]) == set(DROP_REASONS)
    assert set(stats["tiers"]) <= set(gsm_lite.TIERS)


def test_three_branches_and_summary():
    task = gsm_lite.train_split(1, seed=7, mix={"medium": 1.0})[0]
    rec = build_record(task, branches=3)
    paths = _paths(rec["completion"])
    assert len(paths) == 3 and paths[0] == gsm_lite.solution_strategies(task)[0]
    assert pf.parse(rec["completion"]).blocks[0].summary == f"All 3 paths give {task['answer']}."
    assert rec["completion"].endswith(f"</Parallel>\nFinal Answer: {task['answer']}")
    two = build_record(task, branches=2, kb_context="Fact: 2 + 2 = 4")
    assert pf.parse(two["completion"]).blocks[0].summary == f"Both paths give {task['answer']}."
    assert two["prompt"].startswith("Fact: 2 + 2 = 4\n\n") and "Fact" not in two["completion"]


def test_rebuild_gives_same_hash(entries, tmp_path):
    shuffled = list(reversed(entries))
    a = write_dataset(*build_dataset(entries, branches=2, mode="parallel", seed=3), tmp_path / "a", {"until": "x"})
    b = write_dataset(*build_dataset(shuffled, branches=2, mode="parallel", seed=3), tmp_path / "b", {"until": "x"})
    assert a["content_hash"] == b["content_hash"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    lines = (tmp_path / "a" / "records.jsonl").read_text().splitlines()
    assert len(lines) == a["records"]
    assert set(json.loads(lines[0])) == {"id", "prompt", "completion", "tier", "task_id", "answer"}


def test_drop_reasons_counted(entries):
    good = [e for e in entries if gsm_lite.check_answer(e["transcript"], e["final_answer"])][:5]
    base = good[0]
    wrong = dict(base, task_id="bad-wrong", final_answer="1",
                 transcript=base["transcript"].rsplit("Final Answer:", 1)[0] + "Final Answer: 1")
    garbage = dict(base, task_id="bad-garbage", transcript="I think it is a lot.\nFinal Answer: many")
    bad_math = dict(base, task_id="bad-math", transcript="10 + 10 = 21\nFinal Answer: 21", final_answer="21")
    dup = dict(good[1], agent_id="someone-else")  # same task, same work, another agent
    records, stats = build_dataset([*good, wrong, garbage, bad_math, dup], branches=2, mode="parallel")
    assert len(records) == 5
    assert stats["drops"]["wrong_answer"] == 2
    assert stats["drops"]["unparseable_transcript"] == 1
    assert stats["drops"]["duplicate"] == 1
    assert stats["dropped"] == 4
    with pytest.raises(DropReason) as err:
        seed_to_task(garbage)
    assert err.value.code == "unparseable_transcript"


def test_sequential_mode(entries):
    records, stats = build_dataset(entries, mode="sequential", seed=1, max_records=20)
    assert len(records) == 20 and stats["branches"] == 1
    for rec in records:
        assert pf.check(rec["completion"]) is None and not pf.parse(rec["completion"]).blocks
        assert gsm_lite.check_answer(rec["completion"], rec["answer"])


def test_mix_keeps_proportions(entries):
    records, stats = build_dataset(entries, mix={"easy": 0.5, "medium": 0.5}, seed=2)
    tiers = stats["tiers"]
    assert set(tiers) <= {"easy", "medium"} and tiers.get("easy") == tiers.get("medium")


def test_stage_end_to_end(sim, tmp_path):
    from pr1d.pipeline.spec import Scoring, StageSpec

    (tmp_path / "stage").mkdir()
    spec_path = StageSpec(run_id=1, stage="dataset", stage_dir=tmp_path / "stage", run_dir=tmp_path,
                          checkpoint_dir=tmp_path / "ckpt", agent_id="agent-000", heartbeat_s=60,
                          scoring=Scoring(url=sim, token_env="DATASET_TEST_TOKEN"),
                          params={"branches": 2, "mode": "parallel", "min_score": 0.9}).dump(tmp_path / "spec.json")
    env = pr1_env(DATASET_TEST_TOKEN=TOKEN)
    env.pop("PR1_EVENT_FD", None)
    cp = subprocess.run([sys.executable, "-m", "pr1d.stages.dataset", str(spec_path)], capture_output=True,
                        text=True, timeout=60, env=env, cwd=Path(__file__).resolve().parents[2])
    assert cp.returncode == 0, cp.stderr
    events = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    types = [e["type"] for e in events]
    assert types[-1] == "result" and "artifact" in types and "progress" in types
    result = events[-1]["outputs"]
    metrics = {e["name"]: e["value"] for e in events if e["type"] == "metric"}
    assert metrics["dataset.records"] == result["records"] > 0
    manifest = json.loads((tmp_path / "stage" / "dataset" / "manifest.json").read_text())
    assert manifest["content_hash"] == result["dataset_version"]
    assert manifest["source"]["until"] and manifest["source"]["agent_id"] is None
    artifact = next(e for e in events if e["type"] == "artifact")
    assert artifact["kind"] == "dataset" and artifact["meta"]["content_hash"] == result["dataset_version"]
    print("stage result:", json.dumps(result), "stats:", json.dumps(manifest["stats"]))
