"""Backtest + gate through a real daemon on tiny models, with a real `pr1d sim` as gradebook and critic.

A candidate that learnt the Parallel format (a short Parallel SFT of the tiny model) against a model in
service that was pretrained far less: the run awaits approval, the candidate is registered (lineage
included) before that, and `pr1ctl approve` promotes it. The barely pretrained model as candidate
against that parallel model in service: rejected with the reasons, nothing registered.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from tests.conftest import add_agents  # noqa: E402
from tests.evaluate.test_backtest import check_report_picture  # noqa: E402
from tests.model_fixtures import TINY_CONFIG  # noqa: E402  (the tiny model's recipe, one place)
from tests.registry.registry_kit import Sim  # noqa: E402

AGENT = "agent-000"  # an agent of the sim's fleet: its gradebook entries are the history replayed
# Gate settings for a test-sized backtest: fewer items than production, fewer resamples.
GATE_ENV = {"PR1_GATE__MIN_SAMPLES": "30", "PR1_GATE__BOOTSTRAP_RESAMPLES": "400"}
# The 400-step parallel model below opens a block in ~70-85% of its greedy easy answers, but the backtest
# decodes it with the default execution policy (temperature 0.7) and on the wordier guardrail exemplars too:
# there 0.39-0.53 of its answers hold a strictly valid block (measured 2026-12-06 in CI and here; 0.39 failed
# the 0.5 this test used to set). Its paths often disagree. Bounds for a test-sized model, so the wiring test
# is about correctness, not about how parallel it is; the incumbent's 0.0 still fails this one.
LENIENT_BOUNDS = {"PR1_GATE__MIN_FORMAT_ADHERENCE": "0.25", "PR1_GATE__MIN_CONSENSUS": "0.0"}
BACKTEST = {"window": 12, "n_per_tier": 24, "tiers": ["easy"], "batch_size": 48, "seed": 3}
# A 400-step Parallel SFT writes blocks in ~70-85% of answers but costs the tiny model most of its
# arithmetic (measured: easy 0.93 -> 0.17; 1200 steps keep it, at 3x the cost): enough to beat a barely
# pretrained model in service, which is all the wiring test needs.
SFT_STEPS = 400
# "Pretrained less": after 30 steps the model repeats one digit and never writes an answer (score 0);
# after 100 it already writes "Final Answer:" every time and scores ~0.14 on compliance alone.
WEAK_STEPS = 30


@pytest.fixture(scope="session")
def parallel_model(tiny_model: Path, tmp_path_factory) -> Path:
    """The shared tiny model (tests/model_fixtures.py) after a short Parallel SFT: it writes blocks."""
    from pr1d.evaluate.gsm_lite import train_split
    from pr1d.params import SFTParams
    from pr1d.train.sft import make_records, save_candidate, train_sft

    tasks = train_split(4000, seed=0, mix={"easy": 1.0})
    random.Random(0).shuffle(tasks)
    work = tmp_path_factory.mktemp("parallel_model")
    cfg = SFTParams(max_steps=SFT_STEPS, batch_size=16, lr=1e-3, checkpoint_every=100_000, eval_per_tier=0)
    model, tok, _ = train_sft(tiny_model, make_records(tasks, parallel=True, branches=2), work / "ckpt", cfg)
    model.eval()
    save_candidate(model, tok, work / "candidate")
    return work / "candidate"


@pytest.fixture(scope="session")
def weak_model(tmp_path_factory) -> Path:
    """The same recipe stopped after WEAK_STEPS: a model in service that any real candidate beats."""
    from pr1d.train.model import PretrainConfig, bootstrap

    out = tmp_path_factory.mktemp("weak_model")
    bootstrap(out, size="tiny", cfg=PretrainConfig(**{**TINY_CONFIG, "max_steps": WEAK_STEPS}), eval_per_tier=0)
    return out


@pytest.fixture
def sim(tmp_path: Path):
    s = Sim(tmp_path, "steady")
    s.tick(40)  # some graded history, so the gradebook has entries of every agent
    yield s
    s.close()


def copy_gradebook(sim: Sim, state: Path) -> int:
    """Fill the daemon's local gradebook copy from the sim, through the same client and store its sync uses."""
    from pr1d.data.gradebook import LocalGradebook, fetch_gradebook

    entries, cursor = fetch_gradebook(sim.url, None, min_score=0.9)
    LocalGradebook(state / "gradebook").append(entries, cursor)
    return sum(1 for e in entries if e["agent_id"] == AGENT)


def start_daemon(daemon_factory, state: Path, sim: Sim, **env: str):
    return daemon_factory(state, extra_env={**GATE_ENV, "PR1_SCORING__BASE_URL": sim.url, **env}).start()


def trigger(d, **params) -> int:
    args = [f"--param={k}={json.dumps(v)}" for k, v in {**BACKTEST, **params}.items()]
    out = d.ctl_json("trigger", AGENT, "--kind", "backtest", *args)
    return out["run"]["id"]


def versions(state: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, run_id, parent_id, config_hash, meta FROM model_versions ORDER BY created_at").fetchall()
    finally:
        conn.close()


def test_better_candidate_is_registered_then_approved_and_promoted(daemon_factory, tmp_path, sim, weak_model,
                                                                  parallel_model):
    state = tmp_path / "state"
    state.mkdir()
    add_agents(state, AGENT)
    assert copy_gradebook(sim, state) >= BACKTEST["window"]
    # Compliance is a pass rate compared with the model in service (which never writes an answer here) and
    # safety must hold on every answer, the guardrail exemplars' included (table-tested in test_gate.py).
    d = start_daemon(daemon_factory, state, sim, **LENIENT_BOUNDS)
    t0 = time.monotonic()
    run_id = trigger(d, candidate=str(parallel_model), base=str(weak_model))
    run = d.wait_run(run_id, {"awaiting_approval", "rejected", "failed"}, timeout=240)
    elapsed = time.monotonic() - t0
    assert run["state"] == "awaiting_approval", (run["reason"], json.dumps(run.get("gate"))[:2000])
    gate = run["gate"]
    assert gate["outcome"] in ("pass", "inconclusive") and gate["status"]["path diversity"] == "pass"
    assert gate["status"]["safety"] == "pass" and gate["compliance"]["checked"] is True
    assert gate["candidate"]["n"] == gate["incumbent"]["n"] == gate["uplift"]["n"]

    # The report over the socket is the file the stage wrote, and its JSON, PNG and figures agree.
    full = d.ctl_json("backtest", str(run_id), "--items")
    report = full["report"]
    on_disk = json.loads(Path(full["path"]).read_text())
    assert report == on_disk
    check_report_picture(report, Path(full["figure"]))
    assert report["replay"]["gradebook"]["used"] == BACKTEST["window"]
    assert report["sources"]["gradebook"]["n"] == BACKTEST["window"]
    assert report["sources"]["gsm_lite"]["n"] == BACKTEST["n_per_tier"]
    # the shipped guardrail exemplars, replayed through both models and checked against the rubric keys
    assert report["schema"] == 2 and report["sources"]["guardrail"]["n"] == report["replay"]["guardrail"]["used"] > 0
    assert report["replay"]["excluded"]["by_id"] == report["replay"]["excluded"]["by_question"] == 0
    assert report["rubric"]["checked"] == ["compliance", "safety"]
    assert report["candidate"]["engine"] == "forked" and report["incumbent"]["engine"] == "plain greedy"
    assert report["incumbent"]["source"] == "params.base"
    assert report["critic"]["status"] == "ok" and report["critic"]["candidate"]["answered"] > 0
    # the gate decided on the items of this report, on correctness (platform terms), tier by tier
    assert gate["backtest"]["sha256"] == full["sha256"]
    assert gate["candidate"]["mean"] == report["tiers"]["overall"]["columns"]["correctness"]["candidate"]
    assert gate["expected_score"] == gate["candidate"]["mean"]
    # GSM-lite easy, the gradebook's tiers (the sim grades every tier), the guardrail exemplars
    assert {"easy", "guardrail", "overall"} <= set(gate["tiers"])
    # the candidate writes Parallel blocks, the model in service does not
    assert report["parallel_ratio"]["candidate"] > 0.5 and report["parallel_ratio"]["incumbent"] == 0.0
    assert report["tiers"]["overall"]["columns"]["parallel_format"]["ci_low"] > 0
    table = d.ctl("backtest", str(run_id)).stdout
    assert "overall" in table and "parallel_format" in table and "final_answer_present" in table
    small = d.ctl_json("backtest", str(run_id))
    assert "items" not in small["report"] and small["report"]["tiers"] == report["tiers"]

    # Registered before the run awaited approval: base (initial deployment) and candidate, with lineage.
    rows = versions(state)
    assert len(rows) == 2
    (base_id, base_run, _, _, base_meta), (cand_id, cand_run, parent, config_hash, cand_meta) = rows
    assert base_run is None and json.loads(base_meta)["served_as"] == "base-v0"
    assert cand_run == run_id and parent == base_id and len(config_hash) == 64
    assert json.loads(cand_meta)["policy"] == report["candidate"]["policy"]
    audit = d.ctl_json("show", str(run_id))
    reg = [a for a in audit["artifacts"] if a["kind"] == "model_version"]
    assert [a["meta"]["version_id"] for a in reg] == [cand_id]

    # pr1ctl approve promotes exactly that version.
    out = d.ctl_json("approve", str(run_id), "--reason", "backtest looks good")
    assert out["promoted"] is True and out["version_id"] == cand_id
    from pr1d.registry.deploy import read_pointer

    assert read_pointer(state / "models", AGENT) == cand_id
    assert d.ctl_json("show", str(run_id))["state"] == "promoted"
    print(f"better candidate: {elapsed:.1f} s to awaiting_approval; gate {gate['outcome']}: {gate['reasons']}")


def test_worse_candidate_is_rejected_with_reasons_and_nothing_registered(daemon_factory, tmp_path, sim, weak_model,
                                                                        parallel_model):
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import read_pointer, record_initial
    from pr1d.registry.versions import register_version

    state = tmp_path / "state"
    state.mkdir()
    add_agents(state, AGENT)
    copy_gradebook(sim, state)
    # In service: the parallel model, registered with its policy, as a promotion would have left it.
    led = Ledger(state / "ledger.sqlite")
    policy = {"branch_count": 2, "temperature": 0.7, "max_new_tokens": 224}
    served = register_version(led, state / "models", AGENT, parallel_model, policy=policy)
    record_initial(led, state / "models", AGENT, served["id"])
    led.close()
    before = versions(state)
    d = start_daemon(daemon_factory, state, sim)
    run_id = trigger(d, candidate=str(weak_model), policy={"branch_count": 2, "max_new_tokens": 224})
    run = d.wait_run(run_id, {"awaiting_approval", "rejected", "failed"}, timeout=240)
    assert run["state"] == "rejected", run["reason"]
    assert run["reason"].startswith("gate failed:")
    gate = run["gate"]
    assert gate["outcome"] == "fail"
    codes = {r.split(":", 1)[0] for r in gate["reasons"]}
    # the barely pretrained model never opens a block, and it scores below the parallel model in service
    assert {"no_parallel_paths", "format_adherence_too_low", "uplift_below_bar"} <= codes, gate["reasons"]
    report = d.ctl_json("backtest", str(run_id))["report"]
    assert report["incumbent"]["version"] == served["id"] and report["incumbent"]["engine"] == "forked"
    assert report["incumbent"]["policy"]["branch_count"] == 2
    assert report["tiers"]["overall"]["columns"]["score"]["ci_high"] < 0
    # nothing registered, the pointer untouched, approving is refused
    assert versions(state) == before
    assert not [a for a in d.ctl_json("show", str(run_id))["artifacts"] if a["kind"] == "model_version"]
    assert read_pointer(state / "models", AGENT) == served["id"]
    cp = d.ctl("approve", str(run_id), "--reason", "no", check=False)
    assert cp.returncode == 1 and "not awaiting_approval" in cp.stderr
    # a report edited after the stage recorded it is refused, not shown
    path = Path(d.ctl_json("backtest", str(run_id))["path"])
    path.write_text(path.read_text().replace('"incumbent"', '"in_service"', 1))
    cp = d.ctl("backtest", str(run_id), check=False)
    assert cp.returncode == 1 and "changed since the stage recorded it" in cp.stderr


def test_parallel_candidate_less_accurate_than_the_model_in_service_is_rejected(daemon_factory, tmp_path, sim,
                                                                               tiny_model, parallel_model):
    """Issue 15's case: a Parallel-format candidate stopped in SFT's "format first" phase (400 steps: blocks
    in most answers, most arithmetic lost) against the sequential model it was trained from. The old gate
    compared the weighted grade, where format and consensus columns start a parallel candidate ~0.2 ahead;
    the gate now compares correctness, so the candidate is rejected, naming the uplift and the easy tier."""
    state = tmp_path / "state"
    state.mkdir()
    add_agents(state, AGENT)
    copy_gradebook(sim, state)
    d = start_daemon(daemon_factory, state, sim, **LENIENT_BOUNDS)
    run_id = trigger(d, candidate=str(parallel_model), base=str(tiny_model))
    run = d.wait_run(run_id, {"awaiting_approval", "rejected", "failed"}, timeout=300)
    assert run["state"] == "rejected", (run["reason"], json.dumps(run.get("gate"))[:2000])
    gate = run["gate"]
    codes = {r.split(":", 1)[0] for r in gate["reasons"]}
    assert "uplift_below_bar" in codes, gate["reasons"]
    assert any(r.startswith("tier_dropped: easy") for r in gate["reasons"]), gate["reasons"]
    report = d.ctl_json("backtest", str(run_id))["report"]
    overall = report["tiers"]["overall"]["columns"]
    # The trap the old rule fell into: the candidate writes blocks the model in service never earns ...
    assert report["parallel_ratio"]["candidate"] > 0.5 and report["parallel_ratio"]["incumbent"] == 0.0
    assert overall["parallel_format"]["diff"] > 0
    # ... but answers fewer questions right, and that is what was compared: its correctness interval lies
    # below the bar (the gradebook's medium and hard tasks, which neither model solves, dilute the overall
    # difference; the easy tier shows the loss plainly).
    assert overall["correctness"]["ci_high"] < gate["uplift"]["bar"]
    easy = gate["tiers"]["easy"]["columns"]["correctness"]
    assert easy["status"] == "fail" and easy["ci_high"] < 0 and easy["diff"] < -0.02, easy
    assert gate["candidate"]["mean"] == overall["correctness"]["candidate"]
    assert not [a for a in d.ctl_json("show", str(run_id))["artifacts"] if a["kind"] == "model_version"]
    stages = {s["name"]: s["state"] for s in d.ctl_json("show", str(run_id))["stages"]}
    assert stages == {"backtest": "succeeded", "gate": "succeeded"}, stages


def test_candidate_that_cannot_be_registered_fails_the_run(daemon_factory, tmp_path, sim, weak_model,
                                                           parallel_model):
    import shutil

    state = tmp_path / "state"
    state.mkdir()
    add_agents(state, AGENT)
    # The gate lets it through (too few samples: inconclusive), but the folder carries a pickle, which the
    # registry refuses: the run must fail, not wait for an approval that could never promote anything.
    cand = tmp_path / "candidate"
    shutil.copytree(parallel_model, cand)
    (cand / "training_args.bin").write_bytes(b"\x80\x04not really a pickle")
    # (No format bound either: on 21 items the 400-step model's block share wobbles around one half.)
    d = start_daemon(daemon_factory, state, sim, PR1_GATE__MIN_SAMPLES="1000",
                     **{**LENIENT_BOUNDS, "PR1_GATE__MIN_FORMAT_ADHERENCE": "0.0"})
    run_id = trigger(d, candidate=str(cand), base=str(weak_model), window=0, n_per_tier=8)
    run = d.wait_run(run_id, {"awaiting_approval", "rejected", "failed"}, timeout=240)
    assert run["state"] == "failed", run["reason"]
    assert run["reason"].startswith("registering the candidate failed:") and "training_args.bin" in run["reason"]
    assert run["gate"]["outcome"] == "inconclusive"  # the evidence is kept with the failed run
    rows = versions(state)  # only the model in service (registered first, as the initial deployment)
    assert len(rows) == 1 and rows[0][1] is None
    assert not [a for a in d.ctl_json("show", str(run_id))["artifacts"] if a["kind"] == "model_version"]
