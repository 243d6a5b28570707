"""The daemon as systemd and on-call see it: READY, status, lock, socket mode, stop/kill/restart, burst."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, add_agents, pr1_env


def test_ready_notification_and_status_json(daemon_factory, state_dir):
    # How fast READY comes is a benchmark (benchmarks/rpc_latency.py), not a timed test.
    d = daemon_factory(state_dir).start(wait_ready=False)
    d.wait_notify("READY=1", timeout=30)
    st = d.ctl_json("status")
    for key in ("version", "pid", "uptime_s", "state_dir", "queue_length", "scheduler_jobs"):
        assert key in st
    assert st["pid"] == d.proc.pid
    assert st["state_dir"] == str(state_dir)
    assert st["queue_length"] == 0
    assert any(j["id"] == "housekeeping" and j["next_run_time"] for j in st["scheduler_jobs"])
    # SIGTERM: STOPPING=1 and a clean exit
    assert d.stop() == 0
    d.wait_notify("STOPPING=1", timeout=2)
    assert not d.socket.exists()


def test_second_daemon_refused_naming_the_lock(daemon):
    cp = subprocess.run([str(BIN / "pr1d"), "serve", "--state-dir", str(daemon.state_dir)],
                        capture_output=True, text=True, timeout=20, env=pr1_env())
    assert cp.returncode != 0
    assert str(daemon.state_dir / "pr1d.lock") in cp.stderr
    assert f"pid {daemon.proc.pid}" in cp.stderr
    assert daemon.ctl_json("status")["pid"] == daemon.proc.pid  # the first one is unharmed


def test_socket_mode_is_0660_or_stricter(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode & 0o007 == 0, oct(mode)
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)


def test_idle_rss_under_80mb_and_no_libtorch(daemon):
    daemon.ctl_json("status")
    time.sleep(0.5)
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert rss_kb < 80 * 1024, f"idle RSS {rss_kb / 1024:.1f} MB"
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps


def test_trigger_sleep_run_succeeds_with_events(daemon):
    out = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=0.5")
    rid = out["run"]["id"]
    run = daemon.wait_run(rid, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    assert run["stages"][0]["state"] == "succeeded"
    assert run["metrics_last"]["sleep.step"] == 5
    states = [a["to_state"] for a in run["audit"]]
    assert states == ["queued", "running", "succeeded"]
    assert run["audit"][0]["actor"] == daemon.ctl("whoami").stdout.split()[0]


def test_idempotency_key_and_dedupe(daemon):
    a = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=2", "--idempotency-key", "k1")
    b = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=2", "--idempotency-key", "k1")
    assert a["created"] and not b["created"] and a["run"]["id"] == b["run"]["id"]
    cp = daemon.ctl("trigger", "a1", "--kind", "sleep", check=False)
    assert cp.returncode == 1 and "already has run" in cp.stderr
    assert len(daemon.ctl_json("runs")) == 1


def test_unknown_kind_and_unbuilt_stage_are_clear_errors(daemon):
    cp = daemon.ctl("trigger", "a1", "--kind", "bogus", check=False)
    assert cp.returncode == 1 and "unknown run kind 'bogus'" in cp.stderr
    cp = daemon.ctl("trigger", "nope", "--kind", "sleep", check=False)
    assert cp.returncode == 1 and "no such agent: nope" in cp.stderr


def test_hold_blocks_trigger_until_unhold(daemon):
    daemon.ctl("hold", "a1", "--reason", "maintenance")
    cp = daemon.ctl("trigger", "a1", "--kind", "noop", check=False)
    assert cp.returncode == 1 and "on hold" in cp.stderr
    daemon.ctl("unhold", "a1")
    rid = daemon.ctl_json("trigger", "a1", "--kind", "noop")["run"]["id"]
    assert daemon.wait_run(rid, {"succeeded", "failed"})["state"] == "succeeded"
    acts = [r["action"] for r in daemon.ctl_json("audit", "--entity", "agent")]
    assert acts == ["hold", "unhold"]


def test_cancel_running_stage_records_user(daemon):
    rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=30")["run"]["id"]
    daemon.wait_run(rid, {"running"})
    time.sleep(0.5)
    daemon.ctl("cancel", str(rid), "--reason", "wrong agent")
    run = daemon.wait_run(rid, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert run["state"] == "cancelled"
    assert run["stages"][0]["state"] == "cancelled"
    last = run["audit"][-1]
    assert last["reason"] == "wrong agent" and last["actor"] != "daemon"


def test_worker_failure_and_missed_heartbeat_fail_the_stage(daemon_factory, state_dir, tmp_path):
    cfg = tmp_path / "hb.toml"
    cfg.write_text("[daemon]\nheartbeat_timeout_s = 1.5\nstop_grace_s = 1.0\n")
    add_agents(state_dir, "a1", "a2")
    d = daemon_factory(state_dir, config=cfg).start()
    r1 = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "fail_at_step=2")["run"]["id"]
    run = d.wait_run(r1, {"failed", "succeeded"})
    assert run["state"] == "failed" and "asked to fail at step 2" in run["reason"]
    r2 = d.ctl_json("trigger", "a2", "--kind", "sleep", "--param", "seconds=20",
                    "--param", "silent_after_step=3")["run"]["id"]
    run = d.wait_run(r2, {"failed", "succeeded"}, timeout=30)
    assert run["state"] == "failed" and "missed heartbeat" in run["reason"]
    r3 = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=0.2",
                    "--param", "exit_code=3")["run"]["id"]
    run = d.wait_run(r3, {"failed", "succeeded"})
    assert run["state"] == "failed" and "exited with code 3" in run["reason"]
    assert d.ctl_json("status")["pid"] == d.proc.pid


def _integrity(state_dir: Path) -> str:
    con = sqlite3.connect(state_dir / "ledger.sqlite")
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _stage_checkpoint_step(state_dir: Path, run_id: int) -> int:
    import json

    f = next((state_dir / "runs" / str(run_id)).glob("*-sleep/checkpoints/sleep.json"))
    return json.loads(f.read_text())["step"]


def test_sigterm_interrupts_then_restart_resumes_from_checkpoint(daemon_factory, state_dir):
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir).start()
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=4", "--param", "step_s=0.1")["run"]["id"]
    d.wait_run(rid, {"running"})
    time.sleep(1.5)
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10
    from pr1d.ledger.store import Ledger

    led = Ledger(state_dir / "ledger.sqlite")
    assert led.get_run(rid)["state"] == "interrupted"
    assert led.stages(rid)[0]["state"] == "interrupted"
    led.close()
    step = _stage_checkpoint_step(state_dir, rid)
    assert step > 0
    d.start()
    run = d.wait_run(rid, {"succeeded", "failed"}, timeout=30)
    assert run["state"] == "succeeded", run
    assert run["stages"][0]["result"]["resumed_from"] >= step
    assert run["stages"][0]["attempt"] == 2


def test_sigkill_mid_stage_restart_resumes_without_duplicates(daemon_factory, state_dir):
    add_agents(state_dir, "a1", "a2")
    d = daemon_factory(state_dir).start()
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=4")["run"]["id"]
    queued = d.ctl_json("trigger", "a2", "--kind", "noop")["run"]["id"]
    d.wait_run(rid, {"running"})
    time.sleep(1.0)
    worker_pid = d.ctl_json("status")["running"][0]["pid"]
    d.stop(signal.SIGKILL)
    # The worker dies with the daemon (PR_SET_PDEATHSIG): no orphan keeps writing. (It checkpoints first: on
    # a loaded machine that took over 10 s once.)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{worker_pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{worker_pid}").exists() or "Z" in Path(f"/proc/{worker_pid}/stat").read_text().split(")")[1][:3]
    d.start()
    run = d.wait_run(rid, {"succeeded", "failed"}, timeout=30)
    assert run["state"] == "succeeded", run
    assert run["stages"][0]["result"]["resumed_from"] > 0
    assert d.wait_run(queued, {"succeeded", "failed"})["state"] == "succeeded"
    runs = d.ctl_json("runs")
    assert sorted(r["id"] for r in runs) == sorted({rid, queued})
    with d.client() as c:
        assert len(c.call("runs.show", run=rid)["stages"]) == 1
    d.stop()
    assert _integrity(state_dir) == "ok"


def test_restart_stops_only_its_own_orphaned_workers(daemon_factory, state_dir, tmp_path):
    """A crashed daemon's ledger names each running stage's pid. On restart that pid is stopped only while it
    still is that stage's worker: by then the pid may belong to anything, another pr1d's worker included."""
    import sys

    from pr1d.ledger.store import Ledger

    add_agents(state_dir, "a1", "a2")
    led = Ledger(state_dir / "ledger.sqlite")
    runs = []
    for agent in ("a1", "a2"):
        run, _ = led.create_run(agent, "sleep", "alice", stages=["sleep"], params={"seconds": 0.2})
        led.transition_run(run["id"], "running", "daemon")
        runs.append(run["id"])
    ours_spec = state_dir / "runs" / str(runs[0]) / "01-sleep" / "spec.json"
    other_spec = tmp_path / "other-state" / "runs" / str(runs[1]) / "01-sleep" / "spec.json"
    sleeper = "import time; time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", sleeper, "pr1d.stages.sleep", str(ours_spec)])
    other = subprocess.Popen([sys.executable, "-c", sleeper, "pr1d.stages.sleep", str(other_spec)])
    try:
        for rid, proc in zip(runs, (ours, other), strict=True):
            led.transition_stage(led.stages(rid)[0]["id"], "running", pid=proc.pid)
        led.close()
        d = daemon_factory(state_dir).start()
        assert ours.wait(timeout=30) == -signal.SIGTERM
        for rid in runs:
            assert d.wait_run(rid, {"succeeded", "failed"}, timeout=30)["state"] == "succeeded"
        assert other.poll() is None, "the daemon stopped a process that was not its worker"
        assert f"stopping orphaned worker pid {ours.pid}" in d.stderr()
        assert f"pid {other.pid}" not in d.stderr()
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_burst_mode_drains_queue_and_exits(state_dir, tmp_path):
    add_agents(state_dir, "a1", "a2")
    from pr1d.ledger.store import Ledger

    led = Ledger(state_dir / "ledger.sqlite")
    led.create_run("a1", "noop", "test", stages=["noop"])
    led.create_run("a2", "sleep", "test", params={"seconds": 0.3}, stages=["sleep"])
    led.close()
    cp = subprocess.run([str(BIN / "pr1d"), "serve", "--state-dir", str(state_dir), "--burst"],
                        capture_output=True, text=True, timeout=60, env=pr1_env())
    assert cp.returncode == 0, cp.stderr
    led = Ledger(state_dir / "ledger.sqlite")
    assert [r["state"] for r in led.list_runs()] == ["succeeded", "succeeded"]
    led.close()


def test_watchdog_pings_when_armed(daemon_factory, state_dir):
    d = daemon_factory(state_dir, extra_env={"WATCHDOG_USEC": "400000"}).start()
    d.wait_notify("WATCHDOG=1", timeout=3)


def test_sighup_reload_refuses_invalid_config_and_keeps_running(daemon_factory, state_dir, tmp_path):
    cfg = tmp_path / "live.toml"
    cfg.write_text("[daemon]\nheartbeat_timeout_s = 30.0\n")
    d = daemon_factory(state_dir, config=cfg).start()
    cfg.write_text("[daemon]\nheartbeat_timeout_z = 30.0\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_notify("config reload refused", timeout=5)
    st = d.ctl_json("status")
    assert "heartbeat_timeout_z" in st["config_reload_error"]
    cfg.write_text("[daemon]\nheartbeat_timeout_s = 31.0\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_notify("config reloaded", timeout=5)
    assert d.ctl_json("status")["config_reload_error"] is None


@pytest.mark.parametrize("fixture", ["unknown_key", "wrong_type", "out_of_range", "not_toml"])
def test_malformed_config_one_clear_line_and_nonzero_exit(fixture, state_dir):
    path = Path(__file__).parents[1] / "fixtures" / "config" / f"{fixture}.toml"
    cp = subprocess.run([str(BIN / "pr1d"), "serve", "--state-dir", str(state_dir), "--config", str(path)],
                        capture_output=True, text=True, timeout=20, env=pr1_env())
    assert cp.returncode == 78
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, cp.stderr
    assert str(path) in lines[0]
    if fixture != "not_toml":
        assert "key `" in lines[0]
