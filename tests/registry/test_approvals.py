"""Approvals against a real `pr1d sim`: the race, the two-person rule, expiry, reject."""

from __future__ import annotations

import threading
import time

import pytest
from registry_kit import (  # noqa: F401 (fixtures)
    BASE_MODEL,
    awaiting_run,
    count,
    ledger_fixture,
    make_model,
    models_fixture,
    sim_fixture,
)

from pr1d.ledger.store import Conflict, NotFound
from pr1d.policy import ParallelExecutionPolicy
from pr1d.registry.approvals import ApprovalConfig, approve, expire_approvals, pending_approvals, reject
from pr1d.registry.deploy import read_pointer, record_initial
from pr1d.registry.push import HttpPusher
from pr1d.registry.versions import register_version

AGENT = "agent-001"


def _setup(ledger, models, tmp_path, gate=None):
    base = register_version(ledger, models, AGENT, make_model(tmp_path / "base", 0), served_as=BASE_MODEL)
    record_initial(ledger, models, AGENT, base["id"])
    run_id = awaiting_run(ledger, AGENT, gate=gate)
    v = register_version(ledger, models, AGENT, make_model(tmp_path / "cand", 5), run_id=run_id, parent_id=base["id"],
                         policy={"branch_count": 3, "temperature": 0.8})
    return run_id, v


def _race(ledger, models, run_id, cfg, sim, n=20) -> tuple[list, list]:
    barrier = threading.Barrier(n)
    results, errors = [], []
    lock = threading.Lock()

    def one(i: int) -> None:
        pusher = HttpPusher(sim.url)
        barrier.wait()
        try:
            r = approve(ledger, models, run_id, f"user{i:02d}", f"lgtm #{i}", cfg, pusher=pusher)
            with lock:
                results.append(r)
        except Conflict as e:
            with lock:
                errors.append(e)
        finally:
            pusher.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_twenty_concurrent_approvals_make_exactly_one_promotion(sim, ledger, models, tmp_path):
    run_id, v = _setup(ledger, models, tmp_path)
    results, errors = _race(ledger, models, run_id, ApprovalConfig(), sim)
    promoted = [r for r in results if r.promoted]
    assert len(promoted) == 1 and len(results) + len(errors) == 20
    assert all("not awaiting_approval" in str(e) for e in errors)
    assert count(ledger, "SELECT count(*) FROM deployments WHERE agent_id = ? AND action = 'promote'", AGENT) == 1
    assert count(ledger, "SELECT count(*) FROM approvals WHERE run_id = ?", run_id) == 1
    assert count(ledger, "SELECT count(*) FROM audit WHERE entity = 'run' AND to_state = 'promoted'") == 1
    assert ledger.get_run(run_id)["state"] == "promoted"
    assert read_pointer(models, AGENT) == v["id"]
    # the platform got exactly one profile, the promoted one
    assert [h["model_version"] for h in sim.history(AGENT)] == [v["id"]]
    winner = promoted[0]
    assert winner.deployment["actor"] == winner.approvals[0]["user"]
    assert winner.deployment["profile"]["policy"] == ParallelExecutionPolicy(branch_count=3, temperature=0.8).to_dict()


def test_two_person_rule(sim, ledger, models, tmp_path):
    cfg = ApprovalConfig(approvals_required=2)
    run_id, v = _setup(ledger, models, tmp_path)
    first = approve(ledger, models, run_id, "alice", "looks right", cfg)
    assert not first.promoted and first.state == "awaiting_approval" and first.required == 2
    again = approve(ledger, models, run_id, "alice", "really, it is fine", cfg)
    assert again.already_approved and not again.promoted  # the same person twice is still one person
    assert count(ledger, "SELECT count(*) FROM approvals WHERE run_id = ?", run_id) == 1
    assert pending_approvals(ledger, cfg)[0]["approved_by"] == ["alice"]
    second = approve(ledger, models, run_id, "bob", "agreed", cfg, pusher=HttpPusher(sim.url))
    assert second.promoted and [a["user"] for a in second.approvals] == ["alice", "bob"]
    assert "alice, bob" in second.deployment["reason"] and second.deployment["actor"] == "bob"
    assert sim.history(AGENT)[-1]["model_version"] == v["id"]
    assert pending_approvals(ledger, cfg) == []


def test_two_person_rule_under_a_race(sim, ledger, models, tmp_path):
    run_id, _v = _setup(ledger, models, tmp_path)
    results, errors = _race(ledger, models, run_id, ApprovalConfig(approvals_required=2), sim)
    assert sum(r.promoted for r in results) == 1
    assert len(results) == 2 and len(errors) == 18  # the first approves, the second promotes, the rest are late
    assert count(ledger, "SELECT count(*) FROM approvals WHERE run_id = ?", run_id) == 2
    assert count(ledger, "SELECT count(*) FROM deployments WHERE action = 'promote'") == 1
    assert len(sim.history(AGENT)) == 1


def test_approval_expires(sim, ledger, models, tmp_path):
    cfg = ApprovalConfig(ttl_s=60)
    run_id, _v = _setup(ledger, models, tmp_path)
    later = time.time() + 61
    with pytest.raises(Conflict, match="approval window"):
        approve(ledger, models, run_id, "alice", "too late", cfg, now=later)
    run = ledger.get_run(run_id)
    assert run["state"] == "rejected" and run["reason"].startswith("approval_expired")
    last = ledger.audit_log("run", run_id)[-1]
    assert (last["actor"], last["to_state"]) == ("daemon", "rejected")
    assert count(ledger, "SELECT count(*) FROM deployments WHERE action = 'promote'") == 0
    assert sim.history(AGENT) == []


def test_expire_approvals_job(sim, ledger, models, tmp_path):
    cfg = ApprovalConfig(ttl_s=60)
    old_run, _v = _setup(ledger, models, tmp_path)
    with ledger.engine.begin() as conn:  # this one has waited two minutes
        conn.exec_driver_sql("UPDATE runs SET finished_at = finished_at - 120 WHERE id = ?", (old_run,))
    fresh, _ = ledger.create_run("agent-002", "full", "tester", stages=[])
    ledger.transition_run(fresh["id"], "running", "daemon")
    ledger.transition_run(fresh["id"], "awaiting_approval", "daemon")
    assert expire_approvals(ledger, cfg) == [old_run]
    assert ledger.get_run(old_run)["reason"].startswith("approval_expired")
    assert ledger.get_run(fresh["id"])["state"] == "awaiting_approval"
    assert expire_approvals(ledger, cfg) == []


def test_reject_and_refusals(sim, ledger, models, tmp_path):
    gate = {"outcome": "inconclusive", "flagged": True, "expected_score": 0.9}
    run_id, _v = _setup(ledger, models, tmp_path, gate=gate)
    (p,) = pending_approvals(ledger)
    assert p["flagged"] and p["gate_outcome"] == "inconclusive"
    assert reject(ledger, run_id, "carol", "not convinced")["state"] == "rejected"
    with pytest.raises(Conflict, match="rejected, not awaiting_approval"):
        approve(ledger, models, run_id, "alice", "ok")
    with pytest.raises(Conflict):
        reject(ledger, run_id, "carol", "again")
    with pytest.raises(NotFound):
        approve(ledger, models, 9999, "alice", "ok")
    no_version = awaiting_run(ledger, "agent-002")
    with pytest.raises(NotFound, match="no registered model version"):
        approve(ledger, models, no_version, "alice", "ok")
    assert sim.history(AGENT) == []
