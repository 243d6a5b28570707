"""Stage workers failing on their own: killed directly, out of memory, disk full. The daemon survives,
the stage fails with a clear reason, earlier artifacts and the ledger stay intact, the next run proceeds."""

from __future__ import annotations

import os
import signal
import time

from pr1d.ledger.store import Ledger
from tests.conftest import add_agents


def _worker_pid(d, run_id: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for r in d.ctl_json("status")["running"]:
            if r["run"] == run_id and r["pid"]:
                return r["pid"]
        time.sleep(0.1)
    raise AssertionError("worker never started")


def test_worker_killed_directly_fails_clearly_and_daemon_goes_on(daemon):
    rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=30")["run"]["id"]
    pid = _worker_pid(daemon, rid)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    run = daemon.wait_run(rid, {"failed", "succeeded"})
    assert run["state"] == "failed" and "SIGKILL" in run["reason"], run["reason"]
    nxt = daemon.ctl_json("trigger", "a1", "--kind", "noop")["run"]["id"]
    assert daemon.wait_run(nxt, {"succeeded", "failed"})["state"] == "succeeded"


def test_out_of_memory_fails_the_stage_not_the_daemon(daemon_factory, state_dir):
    add_agents(state_dir, "a1")
    d = daemon_factory(state_dir, extra_env={"PR1_DAEMON__WORKER_MEMORY_LIMIT_MB": "1024"}).start()
    rid = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "alloc_mb=4096")["run"]["id"]
    run = d.wait_run(rid, {"failed", "succeeded"})
    assert run["state"] == "failed" and "out of memory" in run["reason"], run["reason"]
    nxt = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "alloc_mb=64", "--param", "seconds=0.2")
    assert d.wait_run(nxt["run"]["id"], {"succeeded", "failed"})["state"] == "succeeded"


def test_disk_full_fails_clearly_and_keeps_earlier_artifacts(daemon_factory, state_dir):
    add_agents(state_dir, "a1", "a2")
    d = daemon_factory(state_dir, extra_env={"PR1_DAEMON__WORKER_FILE_LIMIT_MB": "8"}).start()
    ok = d.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "write_mb=4", "--param", "seconds=0.2")
    ok_run = d.wait_run(ok["run"]["id"], {"succeeded", "failed"})
    assert ok_run["state"] == "succeeded"
    art = ok_run["artifacts"][0]
    bad = d.ctl_json("trigger", "a2", "--kind", "sleep", "--param", "write_mb=64")["run"]["id"]
    run = d.wait_run(bad, {"failed", "succeeded"})
    assert run["state"] == "failed" and "File too large" in run["reason"] and "payload.bin" in run["reason"]
    d.stop()
    from pr1d.stages.base import sha256_file

    assert sha256_file(art["path"]) == art["sha256"]  # the earlier artifact is intact
    led = Ledger(state_dir / "ledger.sqlite")
    assert led.integrity_check() == "ok"
    led.close()
