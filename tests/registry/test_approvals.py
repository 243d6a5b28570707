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

from pr1d.inference.policy import ParallelExecutionPolicy
from pr1d.ledger.store import Conflict, NotFound
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


# -- an inconclusive gate needs a deliberate act ------------------------------------------------------
INCONCLUSIVE = {
    "outcome": "inconclusive", "flagged": True, "expected_score": 0.9,
    "reasons": ["ci_straddles_bar: candidate 0.8600 vs bar 0.8400", "no_compliance_checks: none recorded"],
    "uplift": {"observed": 0.06, "ci_low": -0.012, "ci_high": 0.05, "bar": 0.84, "ci_level": 0.95},
}


@pytest.mark.parametrize(("gate", "accept", "refused"), [
    (INCONCLUSIVE, False, True),
    (INCONCLUSIVE, True, False),
    ({"outcome": "inconclusive"}, False, True),  # outcome alone is enough
    ({"flagged": True}, False, True),  # and so is the flag alone
    ({"outcome": "pass", "flagged": False}, False, False),
    ({"outcome": "pass", "flagged": False}, True, False),  # the flag on a passed run: harmless
    (None, False, False),  # no evidence (diagnostic kinds, older gates): nothing to accept
    ({}, False, False),
    ("not a dict", False, False),
])
def test_inconclusive_refusal_table(gate, accept, refused):
    from pr1d.registry.approvals import InconclusiveNotAccepted, inconclusive_refusal

    err = inconclusive_refusal(7, gate, accept)
    assert (err is not None) == refused
    if err is not None:
        assert isinstance(err, InconclusiveNotAccepted) and isinstance(err, Conflict)
        assert err.data["run"] == 7 and err.data["needs"] == "accept_inconclusive"
        assert "pr1ctl approve 7 --accept-inconclusive --reason" in str(err)


def test_refusal_names_the_run_the_reasons_the_ci_and_the_bar():
    from pr1d.registry.approvals import inconclusive_refusal

    msg = str(inconclusive_refusal(12, INCONCLUSIVE, False))
    assert msg.startswith("run 12: the promotion gate was inconclusive")
    assert "ci_straddles_bar: candidate 0.8600 vs bar 0.8400; no_compliance_checks: none recorded" in msg
    assert "uplift: observed +0.0600, 95% CI [-0.0120, +0.0500], bar 0.8400" in msg
    bare = str(inconclusive_refusal(12, {"flagged": True, "reasons": "odd"}, False))
    assert "gate reasons: odd" in bare and "uplift:" not in bare  # no CI known: none invented


@pytest.mark.parametrize(("uplift", "text"), [
    (INCONCLUSIVE["uplift"], "observed +0.0600, 95% CI [-0.0120, +0.0500], bar 0.8400"),
    ({"ci_low": -0.01, "ci_high": 0.02}, "CI [-0.0100, +0.0200]"),  # level unknown: not guessed
    ({"observed": None, "bar": 0.8}, "bar 0.8000"),
    ({"ci_low": -0.01}, None),  # half an interval is no interval
    ({"observed": True, "bar": "0.8"}, None),  # wrong types are ignored, not shown
    ("0.01", None),
    (None, None),
])
def test_gate_uplift_text_reads_whatever_is_there(uplift, text):
    from pr1d.rpc.schema import gate_uplift_text

    assert gate_uplift_text({"uplift": uplift}) == text


def _approve_audits(ledger, run_id) -> list[dict]:
    return [r for r in ledger.audit_log("run", run_id) if r["action"] == "approve"]


def test_inconclusive_run_is_refused_without_the_flag_and_promoted_with_it(ledger, models, tmp_path):
    from pr1d.registry.approvals import InconclusiveNotAccepted

    run_id, v = _setup(ledger, models, tmp_path, gate=INCONCLUSIVE)
    with pytest.raises(InconclusiveNotAccepted, match=f"run {run_id}: the promotion gate was inconclusive"):
        approve(ledger, models, run_id, "alice", "looks fine to me")
    # refused whole: nothing recorded, the run still waits for a deliberate approval
    assert count(ledger, "SELECT count(*) FROM approvals WHERE run_id = ?", run_id) == 0
    assert _approve_audits(ledger, run_id) == [] and ledger.get_run(run_id)["state"] == "awaiting_approval"
    res = approve(ledger, models, run_id, "alice", "CI straddles by a hair; accepted", accept_inconclusive=True)
    assert res.promoted and res.accept_inconclusive and read_pointer(models, AGENT) == v["id"]
    (row,) = _approve_audits(ledger, run_id)
    assert row["actor"] == "alice" and row["details"]["accept_inconclusive"] is True
    assert row["details"]["gate_outcome"] == "inconclusive"
    assert res.deployment["reason"] == "approved by alice (inconclusive gate accepted): CI straddles by a hair; accepted"


def test_two_person_rule_each_approver_must_accept_an_inconclusive_gate(ledger, models, tmp_path):
    from pr1d.registry.approvals import InconclusiveNotAccepted

    cfg = ApprovalConfig(approvals_required=2)
    run_id, v = _setup(ledger, models, tmp_path, gate=INCONCLUSIVE)
    with pytest.raises(InconclusiveNotAccepted):
        approve(ledger, models, run_id, "alice", "ok", cfg)
    first = approve(ledger, models, run_id, "alice", "accepting the doubt", cfg, accept_inconclusive=True)
    assert not first.promoted and first.accept_inconclusive
    # the second approver is not carried by the first one's acceptance
    with pytest.raises(InconclusiveNotAccepted, match="--accept-inconclusive"):
        approve(ledger, models, run_id, "bob", "agreed", cfg)
    assert pending_approvals(ledger, cfg)[0]["approved_by"] == ["alice"]  # bob's refused approval left no trace
    second = approve(ledger, models, run_id, "bob", "agreed, doubt accepted", cfg, accept_inconclusive=True)
    assert second.promoted and read_pointer(models, AGENT) == v["id"]
    rows = _approve_audits(ledger, run_id)
    assert [(r["actor"], r["details"]["accept_inconclusive"]) for r in rows] == [("alice", True), ("bob", True)]
    assert second.deployment["reason"].startswith("approved by alice, bob (inconclusive gate accepted): ")


def test_passed_run_needs_no_flag_and_records_it_false(ledger, models, tmp_path):
    run_id, _v = _setup(ledger, models, tmp_path)  # gate passed
    res = approve(ledger, models, run_id, "alice", "gate passed", accept_inconclusive=True)
    assert res.promoted and res.accept_inconclusive is False  # nothing to accept: the flag is ignored
    (row,) = _approve_audits(ledger, run_id)
    assert row["details"]["accept_inconclusive"] is False and row["details"]["gate_outcome"] == "pass"
    assert "inconclusive" not in res.deployment["reason"]
