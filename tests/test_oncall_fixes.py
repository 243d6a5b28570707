"""On-call runbook fixes against a live daemon: logs --follow prints each line once, ledger backup refusals."""

from __future__ import annotations

import time


def _wait_log(daemon, rid: int, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in "".join(e["text"] for e in daemon.ctl_json("logs", str(rid))["logs"]):
        assert time.monotonic() < deadline, f"{needle!r} never reached the log of run {rid}"
        time.sleep(0.1)


def test_logs_follow_prints_each_line_once(daemon):
    # A line every 2 s (step_s 0.4, logged every 5th step): the follower joins between two lines,
    # after the daemon has already read "step 5/15" with nobody subscribed.
    rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=6",
                          "--param", "step_s=0.4")["run"]["id"]
    _wait_log(daemon, rid, "step 5/15")
    time.sleep(0.7)  # the daemon's tail loop (0.3 s) has passed the line
    cp = daemon.ctl("logs", str(rid), "--follow", timeout=30)
    assert cp.returncode == 0
    for step in (5, 10, 15):
        assert cp.stdout.count(f"step {step}/15") == 1, cp.stdout
    lines = [ln.split("] ", 1)[-1] for ln in cp.stdout.splitlines() if not ln.startswith("==> ")]
    assert len(lines) == len(set(lines)), cp.stdout


def test_ledger_backup_refusals_write_nothing(daemon, tmp_path):
    live = daemon.state_dir / "ledger.sqlite"
    before = live.stat().st_ino
    folder = tmp_path / "bkdir"
    folder.mkdir()
    existing = tmp_path / "old.sqlite"
    existing.write_text("an older copy")
    cases = [
        (folder, "is a directory"),
        (live, "live ledger"),
        (live.with_name("ledger.sqlite-wal"), "live ledger"),
        (existing, "already exists"),
    ]
    for dest, msg in cases:
        cp = daemon.ctl("ledger", "backup", str(dest), check=False)
        assert cp.returncode == 1 and msg in cp.stderr and "internal error" not in cp.stderr, (dest, cp.stderr)
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*.partial")) == []
    assert existing.read_text() == "an older copy"
    assert live.stat().st_ino == before  # not replaced
    assert daemon.ctl_json("status")["pid"] == daemon.proc.pid
    # A fresh name still works.
    out = daemon.ctl_json("ledger", "backup", str(folder / "ledger.sqlite"))
    assert out["bytes"] > 0
