"""pr1ctl as scripts use it: exit codes, --json documents, socket discovery order."""

from __future__ import annotations

import json
import subprocess

from .conftest import BIN, pr1_env


def _ctl(*args, env=None):
    return subprocess.run([str(BIN / "pr1ctl"), *args], capture_output=True, text=True, timeout=30,
                          env=env or pr1_env())


def test_unreachable_is_exit_3_with_path(tmp_path):
    cp = _ctl("--socket", str(tmp_path / "nope.sock"), "status")
    assert cp.returncode == 3
    assert f"pr1d is not running (no socket at {tmp_path / 'nope.sock'})" in cp.stderr


def test_usage_is_exit_2():
    assert _ctl("frobnicate").returncode == 2
    assert _ctl("approve", "7").returncode == 2  # --reason is required
    assert _ctl("show", "not-a-run").returncode == 2


def test_socket_found_from_env_and_config(daemon, tmp_path):
    cp = _ctl("status", "--json", env=pr1_env(PR1_SOCKET=str(daemon.socket)))
    assert cp.returncode == 0 and json.loads(cp.stdout)["pid"] == daemon.proc.pid
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nsocket_path = "{daemon.socket}"\n')
    cp = _ctl("--config", str(cfg), "status", "--json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["pid"] == daemon.proc.pid
    # --socket wins over PR1_SOCKET
    cp = _ctl("--socket", str(daemon.socket), "status", "--json", env=pr1_env(PR1_SOCKET="/nonexistent"))
    assert cp.returncode == 0


def test_errors_are_exit_1_on_stderr(daemon):
    cp = daemon.ctl("show", "42", check=False)
    assert cp.returncode == 1 and "no such run: 42" in cp.stderr and cp.stdout == ""
    cp = daemon.ctl("approve", "42", "--reason", "lgtm", check=False)
    assert cp.returncode == 1 and "no such run: 42" in cp.stderr
    cp = daemon.ctl("rollback", "a1", "--reason", "bad", check=False)
    assert cp.returncode == 1 and "has no deployments to roll back" in cp.stderr
    cp = daemon.ctl("rollback", "a1", "--to", "v-nope", "--reason", "bad", check=False)
    assert cp.returncode == 1 and "no deployments to roll back" in cp.stderr  # checked before the version


def test_json_documents_for_every_read_command(daemon):
    rid = daemon.ctl_json("trigger", "a1", "--kind", "noop")["run"]["id"]
    daemon.wait_run(rid, {"succeeded"})
    for args in (["status"], ["agents"], ["runs"], ["show", str(rid)], ["logs", str(rid)], ["deployments"],
                 ["audit"], ["whoami"]):
        doc = daemon.ctl_json(*args)
        assert doc is not None, args
    agents = daemon.ctl_json("agents")
    assert [a["id"] for a in agents] == ["a1", "a2"]


def test_human_tables(daemon):
    out = daemon.ctl("status").stdout
    assert "queue length" in out and "housekeeping" in out
    assert "a1" in daemon.ctl("agents").stdout


def test_logs_follow_ends_with_the_run(daemon):
    rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=1.5")["run"]["id"]
    cp = daemon.ctl("logs", str(rid), "--follow", timeout=30)
    assert cp.returncode == 0
    assert "step 15/15" in cp.stdout, cp.stdout
    assert daemon.ctl_json("show", str(rid))["state"] == "succeeded"


def test_ledger_backup(daemon, tmp_path):
    out = daemon.ctl_json("ledger", "backup", str(tmp_path / "bk.sqlite"))
    assert out["bytes"] > 0 and (tmp_path / "bk.sqlite").exists()
