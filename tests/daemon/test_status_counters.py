"""What makes `status` cheap: run counts and a registry change counter kept by the ledger's triggers, and the
registry status cached until that counter moves."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pr1d.ledger import store
from pr1d.ledger.store import Ledger
from pr1d.registry import status as status_mod
from pr1d.registry.approvals import ApprovalConfig
from pr1d.registry.status import RegistryStatusCache, open_watch, registry_status


@pytest.fixture
def led(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.upsert_agents([{"id": f"a{i}", "model": "m"} for i in range(3)])
    yield led
    led.close()


def _group_by(led: Ledger) -> dict[str, int]:
    con = sqlite3.connect(led.path)
    try:
        return dict(con.execute("SELECT state, count(*) FROM runs GROUP BY state"))
    finally:
        con.close()


def _sql(led: Ledger, sql: str, params: tuple = ()) -> None:
    """A write behind the ledger API's back (the registry's raw SQL, an operator's sqlite3 shell)."""
    con = sqlite3.connect(led.path)
    con.execute(sql, params)
    con.commit()
    con.close()


def test_run_counts_follow_every_writer(led):
    r0, _ = led.create_run("a0", "sft", "me")
    r1, _ = led.create_run("a1", "rl", "me")
    assert led.count_runs_by_state() == {"queued": 2} == _group_by(led)
    led.transition_run(r0["id"], "running", "me")
    led.transition_run(r0["id"], "awaiting_approval", "me")
    led.transition_run(r1["id"], "cancelled", "me")
    led.update_run_fields(r0["id"], current_stage="eval")  # not a state change
    assert led.count_runs_by_state() == {"awaiting_approval": 1, "cancelled": 1} == _group_by(led)
    _sql(led, "UPDATE runs SET state = 'promoted' WHERE id = ?", (r0["id"],))
    _sql(led, "DELETE FROM runs WHERE id = ?", (r1["id"],))
    assert led.count_runs_by_state() == {"promoted": 1} == _group_by(led)  # a state at 0 is left out


def test_counters_are_made_and_seeded_for_a_ledger_without_them(led):
    for i in range(3):
        led.create_run(f"a{i}", "sft", "me")
    con = sqlite3.connect(led.path)
    for name in store.COUNTER_TRIGGERS:
        con.execute(f"DROP TRIGGER {name}")
    con.execute("DROP TABLE run_state_counts")
    con.execute("INSERT INTO runs (agent_id, kind, state, created_by, created_at, updated_at) "
                "VALUES ('a0', 'sft', 'failed', 'x', 1.0, 1.0)")
    con.commit()
    con.close()
    before = store.change_count(led, "registry")
    again = Ledger(led.path)  # an older release's ledger, or a restored backup: made and seeded at open
    try:
        assert again.count_runs_by_state() == {"queued": 3, "failed": 1} == _group_by(again)
        assert store.change_count(again, "registry") > before  # what was cached without triggers is not trusted
        again.transition_run(1, "running", "me")
        assert again.count_runs_by_state() == {"queued": 2, "running": 1, "failed": 1} == _group_by(again)
    finally:
        again.close()


def _watch(complete: bool, state: str) -> dict:
    return {"complete": complete, "state": state}


# (complete, state, listed by status)
WATCHES = [
    (False, "insufficient", True),   # just promoted: the watch is running
    (False, "ok", True),
    (False, "short", True),
    (True, "short", True),           # finished short: stays in view with its alert
    (True, "ok", False),             # finished and held: history
    (True, "insufficient", False),   # window full, nothing to compare with: history
]


@pytest.mark.parametrize("complete, state, listed", WATCHES)
def test_open_watch(complete, state, listed):
    assert open_watch(_watch(complete, state)) is listed


def _deploy(led: Ledger, agent: str, version: str, *, pushed: bool, watch: dict | None = None) -> int:
    con = sqlite3.connect(led.path)
    dep = con.execute("INSERT INTO deployments (agent_id, version_id, action, ts, actor, profile_pushed) "
                      "VALUES (?, ?, 'promote', 1.0, 'me', ?)", (agent, version, int(pushed))).lastrowid
    con.execute("INSERT INTO deployment_state (deployment_id, agent_id, version_id, body, push_attempts, watch) "
                "VALUES (?, ?, ?, ?, 0, ?)", (dep, agent, version, json.dumps({"model_version": version}),
                                             json.dumps(watch) if watch else None))
    con.commit()
    con.close()
    return dep


def test_registry_status_lists_open_watches_and_counts_the_rest(led):
    _deploy(led, "a0", "v0", pushed=True, watch={"state": "ok", "complete": True, "evidence": {"n": 50}})
    _deploy(led, "a1", "v1", pushed=True, watch={"state": "short", "complete": True, "alert": "a1 fell short"})
    _deploy(led, "a2", "v2", pushed=False)
    st = registry_status(led)
    assert [(w["agent"], w["state"]) for w in st["watches"]] == [("a1", "short"), ("a2", "insufficient")]
    assert st["watches_closed"] == 1
    assert [a["kind"] for a in st["alerts"]] == ["profile_push_pending", "watch_short"]


# (a write, whether the registry status must be computed again)
WRITES = [
    ("UPDATE deployment_state SET push_attempts = push_attempts + 1, push_error = 'refused'", True),
    ("UPDATE deployments SET profile_pushed = 1", True),
    ("INSERT INTO approvals (run_id, user, reason, ts) VALUES (1, 'bob', 'ok', 1.0)", True),
    ("UPDATE runs SET state = 'awaiting_approval' WHERE id = 1", True),
    ("UPDATE agents SET hold = 1", False),
    ("INSERT INTO score_samples (agent_id, eval_id, ts, status, ingested_at) VALUES ('a0', 'e1', 1.0, 'pass', 1.0)",
     False),
    ("UPDATE runs SET current_stage = 'sft' WHERE id = 2", False),  # a run not awaiting approval
]


@pytest.mark.parametrize("sql, recomputed", WRITES, ids=[w[0][:40] for w in WRITES])
def test_registry_status_is_computed_again_only_after_a_registry_write(led, monkeypatch, sql, recomputed):
    led.create_run("a0", "full", "me")
    led.create_run("a1", "full", "me")
    _deploy(led, "a2", "v2", pushed=False)
    calls = []
    monkeypatch.setattr(status_mod, "registry_status", lambda *a: calls.append(a) or registry_status(*a))
    cache = RegistryStatusCache()
    first = cache.get(led)
    assert cache.get(led) == first and len(calls) == 1
    _sql(led, sql)
    again = cache.get(led)
    assert len(calls) == 1 + recomputed
    assert again == registry_status(led)  # never stale
    cache.get(led, ApprovalConfig(approvals_required=2))  # another config: computed again
    assert len(calls) == 2 + recomputed


def test_callers_may_add_alerts_without_touching_the_cache(led):
    _deploy(led, "a0", "v0", pushed=False)
    cache = RegistryStatusCache()
    cache.get(led)["alerts"].append({"kind": "agent_manager_drift"})
    assert [a["kind"] for a in cache.get(led)["alerts"]] == ["profile_push_pending"]


def test_a_ledger_missing_a_counted_table_still_opens(led):
    con = sqlite3.connect(led.path)
    con.execute("DROP TABLE approvals")  # and its triggers with it
    con.commit()
    con.close()
    again = Ledger(led.path)
    try:
        again.create_run("a0", "sft", "me")
        assert again.count_runs_by_state() == {"queued": 1}
    finally:
        again.close()
