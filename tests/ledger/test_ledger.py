"""The run ledger: the state machine table, audit rows, idempotency, schema versions and migrations."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from pr1d.ledger import samples
from pr1d.ledger import store as store_mod
from pr1d.ledger.states import (
    RUN_TRANSITIONS,
    STAGE_TRANSITIONS,
    IllegalTransition,
    RunState,
    StageState,
    check_run_transition,
    check_stage_transition,
)
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


STAGE_LEGAL = {
    ("pending", "running"), ("pending", "cancelled"), ("pending", "skipped"),
    ("running", "succeeded"), ("running", "failed"), ("running", "interrupted"), ("running", "cancelled"),
    ("interrupted", "running"), ("interrupted", "cancelled"), ("interrupted", "failed"),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product([s.value for s in StageState], repeat=2)))
def test_stage_transition_table(src, dst):
    if (src, dst) in STAGE_LEGAL:
        check_stage_transition(1, src, dst)
    else:  # skipped is terminal: a skipped stage never runs later
        with pytest.raises(IllegalTransition):
            check_stage_transition(1, src, dst)


def test_stage_table_matches_declared_transitions():
    assert {(s.value, d.value) for s, ds in STAGE_TRANSITIONS.items() for d in ds} == STAGE_LEGAL


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

    current = store_mod.SCHEMA_VERSION
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, current, v1_to_v2)
    led = Ledger(path)
    assert calls == [1] and led.schema_version() == current + 1
    assert (tmp_path / f"l.sqlite.v{current}.bak").exists()
    led.close()
    Ledger(path).close()  # already current: no second migration
    assert calls == [1]


def test_missing_migration_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    current = store_mod.SCHEMA_VERSION
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", current + 2)
    monkeypatch.setitem(store_mod.MIGRATIONS, current, lambda conn: None)
    with pytest.raises(LedgerError, match=f"no migration from ledger schema version {current + 1}"):
        Ledger(path)


def _schema(path) -> dict:
    """Columns (name, type) of every table and the indexes of score_samples, as SQLite reports them."""
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out = {t: sorted((r[1], r[2]) for r in con.execute(f"PRAGMA table_info({t})")) for t in tables}
        out["indexes"] = sorted(r[1] for r in con.execute("PRAGMA index_list(score_samples)"))
        return out
    finally:
        con.close()


def _as_v1(path) -> None:
    """Turn a fresh ledger into one as version 1 wrote it (no agents.monitor, no per-version sample index,
    no registry tables: the v1 -> v2 step made those until v3 took them over)."""
    con = sqlite3.connect(path)
    con.execute("DROP TABLE approvals")
    con.execute("DROP TABLE deployment_state")
    con.execute("DROP INDEX ix_samples_agent_version_ts")
    con.execute("ALTER TABLE agents DROP COLUMN monitor")
    con.execute("UPDATE schema_meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()


def test_v1_ledger_migrates_to_the_current_version(tmp_path):
    fresh = tmp_path / "fresh.sqlite"
    Ledger(fresh).close()
    path = tmp_path / "old.sqlite"
    led = Ledger(path)
    led.upsert_agents([{"id": "a1", "model": "m"}, {"id": "a2", "model": "m"}])
    led.close()
    _as_v1(path)
    con = sqlite3.connect(path)
    # a v1 sample (no version: v1 never wrote one), a gate-expectation baseline and a platform one
    con.execute("INSERT INTO score_samples (agent_id, eval_id, ts, weighted_score, status, ingested_at) "
                "VALUES ('a1', 'e1', 1.0, 0.9, 'pass', 1.0)")
    con.execute("""UPDATE agents SET baseline = '{"mean": 0.92, "n": 0, "source": "promotion", "frozen_at": 1.0}'
                   WHERE id = 'a1'""")
    con.execute("""UPDATE agents SET baseline = '{"mean": 0.9, "n": 30, "source": "first_k", "frozen_at": 1.0}'
                   WHERE id = 'a2'""")
    con.commit()
    con.close()
    assert "monitor" not in dict(_schema(path)["agents"])

    led = Ledger(path)
    assert led.schema_version() == store_mod.SCHEMA_VERSION == 3  # v1 -> v2 -> v3 in one open
    assert (tmp_path / "old.sqlite.v1.bak").exists()
    assert _schema(path) == _schema(fresh)  # the migrated ledger is the schema a new one gets
    a1, a2 = led.get_agent("a1"), led.get_agent("a2")
    assert a1["baseline"] is None and a1["monitor"] is None  # pr1's grading is no platform baseline
    assert a2["baseline"]["source"] == "first_k"  # a platform baseline survives (the monitor re-keys it)
    with led.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT model_version FROM score_samples").all() == [(None,)]  # unknown
    led.close()
    Ledger(path).close()  # already current: opens without migrating again


V2_FIXTURE = Path(__file__).parents[1] / "fixtures" / "ledger" / "v2_with_registry.sql"
# Tables whose every row a migration must keep (the counters are derived; schema_meta changes on purpose).
DATA_TABLES = ("agents", "score_samples", "triggers", "runs", "stages", "metrics", "artifacts", "model_versions",
               "deployments", "audit", "approvals", "deployment_state")


def _v2_ledger(path: Path, *, without: tuple[str, ...] = ()) -> None:
    """A v2 ledger from the literal SQL of one as pr1d wrote it (optionally without some tables)."""
    con = sqlite3.connect(path)
    con.executescript(V2_FIXTURE.read_text())
    for table in without:
        con.execute(f"DROP TABLE {table}")
    con.commit()
    con.close()


def _rows(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in DATA_TABLES}
    finally:
        con.close()


def test_v2_ledger_migrates_to_v3_keeping_every_row(tmp_path):
    path = tmp_path / "l.sqlite"
    _v2_ledger(path)
    before = _rows(path)
    assert all(before[t] for t in DATA_TABLES)  # the fixture has rows everywhere
    fresh = tmp_path / "fresh.sqlite"
    Ledger(fresh).close()

    led = Ledger(path)
    assert led.schema_version() == store_mod.SCHEMA_VERSION == 3
    assert (tmp_path / "l.sqlite.v2.bak").exists()
    assert _rows(path) == before
    assert _schema(path) == _schema(fresh)
    # The ledger reads the registry's rows through its own models now, and keeps the counters right.
    assert [d["version_id"] for d in led.deployments("a1")] == ["v-00000000000000b1", "v-00000000000000a0"]
    assert led.count_runs_by_state() == {"promoted": 1, "awaiting_approval": 1}
    with led.write() as tx:
        assert tx.one("SELECT push_error, expected_score FROM deployment_state WHERE deployment_id = 2") == \
            ("HTTP 503 from the agent manager", 0.93)
        assert tx.transition_run(2, "rejected", "bob", "no", src="awaiting_approval")["state"] == "rejected"
    assert led.get_run(2)["state"] == "rejected" and led.count_runs_by_state()["rejected"] == 1
    led.close()
    Ledger(path).close()  # already current: opens without migrating again


def test_v2_ledger_without_registry_tables_gets_them(tmp_path):
    """A v2 ledger whose daemon never started the registry (it made its tables at start until v3)."""
    path = tmp_path / "l.sqlite"
    _v2_ledger(path, without=("approvals", "deployment_state"))
    fresh = tmp_path / "fresh.sqlite"
    Ledger(fresh).close()
    led = Ledger(path)
    assert led.schema_version() == 3 and _schema(path) == _schema(fresh)
    led.close()


def test_v2_registry_table_of_another_shape_stops_the_migration(tmp_path):
    path = tmp_path / "l.sqlite"
    _v2_ledger(path, without=("approvals",))
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE approvals (id INTEGER PRIMARY KEY, run_id INTEGER, note TEXT)")  # a hand edit
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=r"approvals lacks columns \['reason', 'ts', 'user'\]"):
        Ledger(path)
    con = sqlite3.connect(path)
    try:  # rolled back whole: still v2, nothing half-made
        assert con.execute("SELECT value FROM schema_meta").fetchone() == ("2",)
        assert con.execute("SELECT name FROM sqlite_master WHERE name = 'deployment_state'").fetchone()
    finally:
        con.close()


def test_newer_than_v3_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "l.sqlite"
    _v2_ledger(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = _rows(path)
    with pytest.raises(LedgerError, match=r"ledger schema version 4 is newer than this pr1d understands \(3\)"):
        Ledger(path)
    assert _rows(path) == before and not list(tmp_path.glob("*.bak"))


def test_write_transaction_is_atomic_with_the_ledger_transition_and_audit(led):
    run, _ = led.create_run("a1", "sft", "alice", stages=["sft", "gate"])
    led.transition_run(run["id"], "running", "daemon")
    audit_before = len(led.audit_log(limit=1000))
    with pytest.raises(RuntimeError, match="boom"), led.write() as tx:
        assert tx.transition_run(run["id"], "cancelled", "bob", "stop")["state"] == "cancelled"
        tx.audit("bob", "note", "run", run["id"], reason="inside")
        raise RuntimeError("boom")
    assert led.get_run(run["id"])["state"] == "running"  # rolled back whole
    assert len(led.audit_log(limit=1000)) == audit_before
    with led.write() as tx:
        assert tx.transition_run(run["id"], "cancelled", "bob", "stop", src="queued") is None  # not in src
        moved = tx.transition_run(run["id"], "cancelled", "bob", "stop", src="running", now=123.0)
        tx.audit("bob", "note", "run", run["id"], ts=124.0, reason="after")
    assert moved["state"] == "cancelled" and moved["finished_at"] == 123.0
    # The ledger's own transition code ran: pending stages skipped, audit rows in order.
    assert [s["state"] for s in led.stages(run["id"])] == ["skipped", "skipped"]
    rows = [(a["action"], a["entity"], a["to_state"], a["ts"]) for a in led.audit_log(limit=1000)][audit_before:]
    assert rows[0] == ("transition", "run", "cancelled", 123.0) and rows[-1] == ("note", "run", None, 124.0)
    with pytest.raises(IllegalTransition), led.write() as tx:
        tx.transition_run(run["id"], "running", "bob", src="cancelled")


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


def _run_with_stages(led, *, ran: int, agent: str = "a1") -> dict:
    """A running run of four stages whose first `ran` stages succeeded (the rest pending)."""
    run, _ = led.create_run(agent, "full", "alice", stages=["dataset", "sft", "sft_gate", "rl"])
    led.transition_run(run["id"], "running", "daemon", "dispatched")
    for st in led.stages(run["id"])[:ran]:
        led.transition_stage(st["id"], "running")
        led.transition_stage(st["id"], "succeeded")
    return run


@pytest.mark.parametrize(("path", "ran", "current", "expected"), [
    # a gate stage (sft_gate) said no: the stages after it never run
    ([("rejected", "daemon", "SFT gate failed: uplift below the bar")], 3, None,
     ["succeeded", "succeeded", "succeeded", "skipped"]),
    # a stage failed: it stays failed, the later ones are skipped
    ([("failed", "daemon", "stage sft: exit 1")], 1, "failed", ["succeeded", "failed", "skipped", "skipped"]),
    # cancelled while a stage ran: that stage keeps its own state
    ([("cancelled", "bob", "not needed")], 1, "cancelled", ["succeeded", "cancelled", "skipped", "skipped"]),
    # cancelled before it ever started
    ([("cancelled", "bob", "not needed")], None, None, ["skipped", "skipped", "skipped", "skipped"]),
    # interrupted (the daemon stopped) does not end the run: its stages wait to be resumed
    ([("interrupted", "daemon", "daemon restarted mid-stage")], 1, "interrupted",
     ["succeeded", "interrupted", "pending", "pending"]),
    # every stage ran: nothing is left to skip
    ([("awaiting_approval", "daemon", "gate passed"), ("rejected", "carol", "no")], 4, None, ["succeeded"] * 4),
])
def test_ending_a_run_skips_its_pending_stages_in_the_same_transaction(led, path, ran, current, expected):
    if ran is None:  # still queued
        run, _ = led.create_run("a1", "full", "alice", stages=["dataset", "sft", "sft_gate", "rl"])
    else:
        run = _run_with_stages(led, ran=ran)
    if current is not None:  # the stage that was running when the run ended
        st = led.stages(run["id"])[ran]
        led.transition_stage(st["id"], "running")
        led.transition_stage(st["id"], current)
    for dst, actor, reason in path:
        led.transition_run(run["id"], dst, actor, reason)
    assert [s["state"] for s in led.stages(run["id"])] == expected
    detail = led.run_detail(run["id"])
    assert [s["state"] for s in detail["stages"]] == expected
    dst, actor, reason = path[-1]
    run_row = [r for r in led.audit_log("run", run["id"]) if r["to_state"] == dst][-1]
    for s in (s for s in detail["stages"] if s["state"] == "skipped"):
        assert s["finished_at"] is None and s["started_at"] is None and s["attempt"] == 0  # it never ran
        (row,) = [r for r in led.audit_log("stage", s["id"]) if r["to_state"] == "skipped"]
        assert (row["actor"], row["from_state"], row["reason"]) == (actor, "pending", f"run {dst}: {reason}")
        assert row["details"] == {"run": run["id"], "stage": s["name"]}
        assert row["id"] > run_row["id"]  # written with the run's transition, right after its audit row


def test_a_failed_run_transition_skips_nothing(led):
    """The skip is part of the run's transaction: an illegal run transition leaves the stages pending."""
    run = _run_with_stages(led, ran=0)
    led.transition_run(run["id"], "awaiting_approval", "daemon", "odd, but legal from running")
    with pytest.raises(IllegalTransition):
        led.transition_run(run["id"], "failed", "daemon", "not from awaiting_approval")
    assert {s["state"] for s in led.stages(run["id"])} == {"pending"}


def test_a_skipped_stage_is_terminal(led):
    run = _run_with_stages(led, ran=0)
    led.transition_run(run["id"], "failed", "daemon", "boom")
    st = led.stages(run["id"])[0]
    assert st["state"] == "skipped"
    with pytest.raises(IllegalTransition, match="cannot go from skipped to running"):
        led.transition_stage(st["id"], "running")


def test_old_ledgers_stranded_pending_stages_are_repaired_at_start(led):
    """Ledgers written before `skipped` existed left the pending stages of ended runs pending forever:
    the daemon's start-up repair marks them skipped, once, and leaves live runs alone."""
    ended = {}
    for dst in ("rejected", "failed", "cancelled"):
        run = _run_with_stages(led, ran=2, agent="a1")
        ended[dst] = run["id"]
        with led.engine.begin() as conn:  # as an older pr1d left it: the run ended, its stages did not move
            conn.exec_driver_sql("UPDATE runs SET state = ? WHERE id = ?", (dst, run["id"]))
    live = _run_with_stages(led, ran=1, agent="a2")  # running: its pending stages will still run
    fixed = led.skip_stranded_stages()
    assert sorted((s["run_id"], s["name"]) for s in fixed) == sorted(
        (rid, name) for rid in ended.values() for name in ("sft_gate", "rl"))
    for dst, rid in ended.items():
        assert [s["state"] for s in led.stages(rid)] == ["succeeded", "succeeded", "skipped", "skipped"]
        rows = [r for s in led.stages(rid)[2:] for r in led.audit_log("stage", s["id"])]
        assert [(r["actor"], r["to_state"]) for r in rows] == [("daemon", "skipped")] * 2
        assert rows[0]["reason"].startswith(f"run {dst}: ended before this stage ran")
    assert [s["state"] for s in led.stages(live["id"])] == ["succeeded", "pending", "pending", "pending"]
    assert led.skip_stranded_stages() == []  # idempotent: the next start finds nothing


# -- backup destinations and compaction figures (on-call fixes) ---------------------------------------
@pytest.mark.parametrize(("setup", "dest", "expect"), [
    (None, "new.sqlite", None),
    (None, "sub/dir/new.sqlite", None),
    (None, "state/ledger.sqlite", "live ledger"),
    (None, "state/ledger.sqlite-wal", "live ledger"),
    (None, "state/ledger.sqlite-shm", "live ledger"),
    (None, "state/../state/ledger.sqlite", "live ledger"),
    ("link", "alias/ledger.sqlite", "live ledger"),  # the state dir reached through a symlink
    ("dir", "taken", "is a directory"),
    ("file", "taken", "already exists"),
    ("file", "taken/x.sqlite", "is not a directory"),
])
def test_backup_refusal(tmp_path, setup, dest, expect):
    live = tmp_path / "state" / "ledger.sqlite"
    live.parent.mkdir()
    live.write_bytes(b"")
    if setup == "link":
        (tmp_path / "alias").symlink_to(tmp_path / "state")
    elif setup == "dir":
        (tmp_path / "taken").mkdir()
    elif setup == "file":
        (tmp_path / "taken").write_text("old copy")
    why = store_mod.backup_refusal(tmp_path / dest, live)
    assert (why is None) if expect is None else (expect in why), why


def test_backup_refuses_before_writing_anything(led, tmp_path):
    (tmp_path / "d").mkdir()
    for dest in (tmp_path / "d", led.path, tmp_path / "ledger.sqlite-wal"):
        with pytest.raises(ValueError):
            led.backup(dest)
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
    assert list((tmp_path / "d").iterdir()) == []
    assert led.integrity_check() == "ok"


@pytest.mark.parametrize(("files", "expect"), [
    ({}, 0),
    ({"": 4096}, 4096),
    ({"": 4096, "-wal": 163872}, 4096 + 163872),
    ({"": 4096, "-wal": 0, "-shm": 32768}, 4096),  # -shm is an index, not ledger data
])
def test_ledger_bytes_counts_main_file_and_wal(tmp_path, files, expect):
    path = tmp_path / "l.sqlite"
    for suffix, size in files.items():
        path.with_name(path.name + suffix).write_bytes(b"\0" * size)
    assert store_mod.ledger_bytes(path) == expect


def test_compact_compares_like_with_like(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.upsert_agents([{"id": "a1"}])
    polls = [{"agent_id": "a1", "cursor": "c", "health": {},
              "samples": [{"eval_id": f"e{i}", "ts": 1000.0 + i, "weighted_score": 0.9, "status": "pass",
                           "rubric": None, "task_id": None, "tier": None} for i in range(2000)]}]
    samples.ingest_polls(led, polls)
    wal = led.path.with_name(led.path.name + "-wal")
    assert wal.stat().st_size > led.path.stat().st_size  # the writes sit in the WAL, not yet checkpointed
    out = store_mod.compact(led, samples_days=1e6, keep_per_agent=10**6, metrics_days=1e6)
    assert out["samples_removed"] == 0
    # Nothing removed and no VACUUM: the ledger cannot have grown (it did, when -wal was left out of "before").
    assert out["bytes_before"] >= out["bytes_after"] > 0, out
    led.close()
