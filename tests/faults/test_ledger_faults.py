"""Ledger faults: another process holding the write lock, retention/compaction, online backup under load."""

from __future__ import annotations

import sqlite3
import threading
import time

from pr1d.ledger import samples, store
from pr1d.ledger.store import Ledger
from tests.conftest import add_agents


def test_daemon_waits_out_a_locked_ledger(daemon_factory, state_dir):
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir).start()
    holder = sqlite3.connect(state_dir / "ledger.sqlite", timeout=30, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. an operator's sqlite3 shell, or a backup tool
    released = threading.Event()

    def release():
        time.sleep(3)
        holder.rollback()
        holder.close()
        released.set()

    threading.Thread(target=release).start()
    t0 = time.monotonic()
    out = d.ctl_json("trigger", "a1", "--kind", "noop")  # needs the write lock: waits, does not fail
    assert time.monotonic() - t0 >= 2.5 and released.is_set()
    assert d.wait_run(out["run"]["id"], {"succeeded"})["state"] == "succeeded"
    assert d.ctl_json("status")["pid"] == d.proc.pid


def test_compaction_keeps_recent_windows_and_every_run(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.upsert_agents([{"id": "a1"}, {"id": "a2"}])
    old = time.time() - 40 * 86400
    polls = [{"agent_id": a, "cursor": "c", "health": {},
              "samples": [{"eval_id": f"{a}-{i}", "ts": old + i, "weighted_score": 0.9, "status": "pass",
                           "rubric": None, "task_id": None, "tier": None} for i in range(1000)]} for a in ("a1", "a2")]
    samples.ingest_polls(led, polls)
    with led.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE score_samples SET ingested_at = :t"), {"t": old})
    run, _ = led.create_run("a1", "noop", "t")
    out = store.compact(led, samples_days=30, keep_per_agent=100, metrics_days=90, vacuum=True)
    assert out["samples_removed"] == 2 * 900
    assert samples.sample_count(led, "a1") == 100
    newest = samples.recent_samples(led, "a1", 1)[0]
    assert newest[4] == "a1-999"  # the newest are the ones kept
    assert led.get_run(run["id"])["state"] == "queued"
    assert led.audit_log("ledger")[-1]["action"] == "compact"
    assert led.integrity_check() == "ok"
    led.close()


def test_pr1ctl_ledger_compact_and_backup_while_writing(daemon, tmp_path):
    out = daemon.ctl_json("ledger", "compact")
    assert out["samples_removed"] == 0
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            daemon.ctl("hold", "a2", "--reason", "x")
            daemon.ctl("unhold", "a2")

    t = threading.Thread(target=writer)
    t.start()
    try:
        for i in range(3):
            b = daemon.ctl_json("ledger", "backup", str(tmp_path / f"b{i}.sqlite"))
            copy = Ledger(b["path"])
            assert copy.integrity_check() == "ok"
            copy.close()
    finally:
        stop.set()
        t.join()
