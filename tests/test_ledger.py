"""The run ledger: the state machine table, audit rows, idempotency, schema versions and migrations."""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from pr1d.ledger import store as store_mod
from pr1d.ledger.states import RUN_TRANSITIONS, IllegalTransition, RunState, check_run_transition
from pr1d.ledger.store import Conflict, Ledger, LedgerError, NotFound

LEGAL = {
    ("queued", "running"), ("queued", "cancelled"),
    ("running", "awaiting_approval"), ("running", "succeeded"), ("running", "rejected"), ("running", "failed"),
    ("running", "cancelled"), ("running", "interrupted"),
    ("interrupted", "queued"), ("interrupted", "running"), ("interrupted", "cancelled"), ("interrupted", "failed"),
    ("awaiting_approval", "promoted"), ("awaiting_approval", "rejected"), ("awaiting_approval", "cancelled"),
    ("promoted", "rolled_back"),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product([s.value for s in RunState], repeat=2)))
def test_run_transition_table(src, dst):
    if (src, dst) in LEGAL:
        check_run_transition(1, src, dst)
    else:
        with pytest.raises(IllegalTransition):
            check_run_transition(1, src, dst)


def test_table_matches_declared_transitions():
    declared = {(s.value, d.value) for s, ds in RUN_TRANSITIONS.items() for d in ds}
    assert declared == LEGAL


@pytest.fixture
def led(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.upsert_agents([{"id": "a1", "model": "m"}, {"id": "a2", "model": "m"}])
    yield ledger
    ledger.close()


def test_wal_mode_and_schema_version(led):
    con = sqlite3.connect(led.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert led.schema_version() == store_mod.SCHEMA_VERSION


def test_every_transition_writes_one_audit_row(led):
    run, created = led.create_run("a1", "sleep", "alice", stages=["sleep"], reason="manual")
    assert created
    led.transition_run(run["id"], "running", "daemon", "dispatched")
    led.transition_run(run["id"], "awaiting_approval", "daemon", "gate passed")
    led.transition_run(run["id"], "rejected", "bob", "not convinced")
    rows = led.audit_log("run", run["id"])
    assert [(r["actor"], r["from_state"], r["to_state"], r["reason"]) for r in rows] == [
        ("alice", None, "queued", "manual"),
        ("daemon", "queued", "running", "dispatched"),
        ("daemon", "running", "awaiting_approval", "gate passed"),
        ("bob", "awaiting_approval", "rejected", "not convinced"),
    ]
    assert all(r["ts"] > 0 for r in rows)


def test_illegal_transition_raises_and_changes_nothing(led):
    run, _ = led.create_run("a1", "sleep", "alice")
    with pytest.raises(IllegalTransition):
        led.transition_run(run["id"], "promoted", "eve", "skip the gate")
    assert led.get_run(run["id"])["state"] == "queued"
    assert len(led.audit_log("run", run["id"])) == 1


def test_idempotency_key_returns_the_first_run(led):
    a, c1 = led.create_run("a1", "sft", "alice", idempotency_key="k")
    b, c2 = led.create_run("a1", "sft", "alice", idempotency_key="k")
    assert c1 and not c2 and a["id"] == b["id"]
    with pytest.raises(Conflict, match="already used"):
        led.create_run("a2", "sft", "alice", idempotency_key="k")


def test_one_active_run_per_agent(led):
    led.create_run("a1", "sft", "alice")
    with pytest.raises(Conflict, match="already has run"):
        led.create_run("a1", "rl", "alice")
    led.create_run("a2", "rl", "alice")


def test_unknown_agent_and_run(led):
    with pytest.raises(NotFound, match="no such agent: zz"):
        led.create_run("zz", "sft", "alice")
    with pytest.raises(NotFound, match="no such run: 99"):
        led.get_run(99)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_meta SET value='999' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="schema version 999 is newer"):
        Ledger(path)


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE x (a)")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="not a pr1 ledger"):
        Ledger(path)


def test_migration_runs_in_order_with_backup(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    from sqlalchemy import text

    calls = []

    def v1_to_v2(conn):
        calls.append(1)
        conn.execute(text("ALTER TABLE agents ADD COLUMN note TEXT"))

    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_mod.MIGRATIONS, 1, v1_to_v2)
    led = Ledger(path)
    assert calls == [1] and led.schema_version() == 2
    assert (tmp_path / "l.sqlite.v1.bak").exists()
    led.close()
    Ledger(path).close()  # already current: no second migration
    assert calls == [1]


def test_missing_migration_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 3)
    with pytest.raises(LedgerError, match="no migration from ledger schema version 1"):
        Ledger(path)


def test_recover_after_restart_marks_running_interrupted(led):
    run, _ = led.create_run("a1", "sleep", "alice", stages=["sleep"])
    led.transition_run(run["id"], "running", "daemon")
    st = led.stages(run["id"])[0]
    led.transition_stage(st["id"], "running", pid=12345)
    orphans = led.recover_after_restart()
    assert [o["pid"] for o in orphans] == [12345]
    assert led.get_run(run["id"])["state"] == "interrupted"
    assert led.stages(run["id"])[0]["state"] == "interrupted"


def test_online_backup_is_a_consistent_copy(led, tmp_path):
    led.create_run("a1", "sft", "alice")
    out = led.backup(tmp_path / "b" / "copy.sqlite")
    copy = Ledger(out)
    assert len(copy.list_runs()) == 1 and copy.integrity_check() == "ok"
    copy.close()


def test_list_runs_keyset_paging(led):
    ids = []
    for _ in range(5):
        r, _ = led.create_run("a1", "sleep", "t")
        led.transition_run(r["id"], "cancelled", "t")
        ids.append(r["id"])
    page1 = led.list_runs(limit=2)
    page2 = led.list_runs(limit=2, before_id=page1[-1]["id"])
    assert [r["id"] for r in page1 + page2] == ids[::-1][:4]
