"""pr1ctl as scripts use it: exit codes, --json documents, socket discovery order."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time

from tests.conftest import BIN, add_agents, pr1_env


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
    # What on-call needs without --json: /metrics, pending pushes and approvals, webhooks.
    for key in ("/metrics", "pending pushes", "pending approvals", "webhooks"):
        assert key in out, (key, out)
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


# -- approving an inconclusive gate; stages a run never reached ---------------------------------------
INCONCLUSIVE = {
    "outcome": "inconclusive", "flagged": True, "expected_score": 0.9,
    "reasons": ["ci_straddles_bar: candidate 0.8600 vs bar 0.8400"],
    "uplift": {"observed": 0.06, "ci_low": -0.012, "ci_high": 0.05, "bar": 0.84, "ci_level": 0.95},
}
NOWHERE = "http://127.0.0.1:9"  # the agent manager: nothing listens, the profile push stays pending


def _awaiting_inconclusive(daemon_factory, tmp_path):
    """A daemon whose agent a1 has a registered candidate awaiting approval behind an inconclusive gate."""
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import record_initial
    from pr1d.registry.versions import register_version
    from tests.registry.registry_kit import awaiting_run, make_model

    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1")
    led = Ledger(sd / "ledger.sqlite")
    try:
        base = register_version(led, sd / "models", "a1", make_model(tmp_path / "base", 0))
        record_initial(led, sd / "models", "a1", base["id"])
        rid = awaiting_run(led, "a1", gate=INCONCLUSIVE)
        cand = register_version(led, sd / "models", "a1", make_model(tmp_path / "cand", 1), run_id=rid,
                                parent_id=base["id"])
    finally:
        led.close()
    d = daemon_factory(sd, extra_env={"PR1_REGISTRY__AGENT_MANAGER_URL": NOWHERE}).start()
    return d, rid, cand["id"]


def test_approve_inconclusive_needs_accept_inconclusive(daemon_factory, tmp_path):
    d, rid, cand = _awaiting_inconclusive(daemon_factory, tmp_path)
    cp = d.ctl("approve", str(rid), "--reason", "looks fine", check=False)
    assert cp.returncode == 1 and cp.stdout == ""
    err = cp.stderr
    assert f"run {rid}: the promotion gate was inconclusive" in err
    assert "ci_straddles_bar: candidate 0.8600 vs bar 0.8400" in err
    assert "95% CI [-0.0120, +0.0500], bar 0.8400" in err
    assert f"pr1ctl approve {rid} --accept-inconclusive --reason TEXT" in err
    # a conflict, not a crash; the facts come as the error's data for scripts
    from pr1d.rpc.schema import CONFLICT, RpcError

    with d.client() as c:
        try:
            c.call("runs.approve", run=rid, reason="via the socket")
            raise AssertionError("approval of an inconclusive run was not refused")
        except RpcError as e:
            assert e.code == CONFLICT and e.data["needs"] == "accept_inconclusive" and e.data["run"] == rid
    assert d.ctl_json("show", str(rid))["state"] == "awaiting_approval"
    out = d.ctl("approve", str(rid), "--accept-inconclusive", "--reason", "CI straddles by a hair").stdout
    assert f"run {rid}: promoted (inconclusive gate accepted); version {cand} is now in service" in out
    audit = [a for a in d.ctl_json("audit", "--entity", "run", "--id", str(rid)) if a["action"] == "approve"]
    assert [(a["details"]["accept_inconclusive"], a["reason"]) for a in audit] == [(True, "CI straddles by a hair")]


def test_approve_flag_is_only_sent_when_given():
    from pr1d.ctl import build_parser

    p = build_parser()
    assert p.parse_args(["approve", "7", "--reason", "x"]).accept_inconclusive is False
    assert p.parse_args(["approve", "r7", "--accept-inconclusive", "--reason", "x"]).accept_inconclusive is True
    assert _ctl("reject", "7", "--accept-inconclusive", "--reason", "x").returncode == 2  # approve only


def test_show_lists_stages_a_run_never_reached_as_skipped(daemon_factory, tmp_path):
    from pr1d.ledger.store import Ledger

    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1", "a2")
    led = Ledger(sd / "ledger.sqlite")
    try:
        # ended by this pr1d: skipped in the run's own transaction
        cancelled, _ = led.create_run("a1", "rl", "alice", stages=["rl", "backtest", "gate"])
        led.transition_run(cancelled["id"], "cancelled", "bob", "not needed")
        # as an older pr1d left it: rejected after its first stage, the others still pending
        old, _ = led.create_run("a2", "rl", "alice", stages=["rl", "backtest", "gate"])
        led.transition_run(old["id"], "running", "daemon")
        st = led.stages(old["id"])[0]
        led.transition_stage(st["id"], "running")
        led.transition_stage(st["id"], "succeeded")
        with led.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE runs SET state = 'rejected' WHERE id = ?", (old["id"],))
    finally:
        led.close()
    d = daemon_factory(sd).start()  # the start-up repair marks the old run's stages skipped
    doc = d.ctl_json("show", str(cancelled["id"]))
    assert [s["state"] for s in doc["stages"]] == ["skipped"] * 3
    assert [s["state"] for s in d.ctl_json("show", str(old["id"]))["stages"]] == ["succeeded", "skipped", "skipped"]
    out = _ctl("--socket", str(d.socket), "show", str(old["id"]), env=pr1_env(COLUMNS="200")).stdout
    (backtest,) = [line for line in out.splitlines() if " backtest " in line]
    assert "skipped" in backtest and "never ran: the run ended rejected" in backtest, out


def test_cancelling_a_running_run_skips_the_stages_it_never_reached(daemon_factory, tmp_path):
    from pr1d.ledger.store import Ledger

    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1")
    led = Ledger(sd / "ledger.sqlite")
    try:  # two stages, queued before the daemon starts: it dispatches the run at once
        run, _ = led.create_run("a1", "sleep", "alice", params={"seconds": 30}, stages=["sleep", "noop"])
    finally:
        led.close()
    d = daemon_factory(sd).start()
    deadline = time.monotonic() + 30
    while d.ctl_json("show", str(run["id"]))["stages"][0]["state"] != "running":
        assert time.monotonic() < deadline, "the sleep stage never started"
        time.sleep(0.1)
    d.ctl("cancel", str(run["id"]), "--reason", "not needed")
    done = d.wait_run(run["id"], {"cancelled"})
    assert [(s["name"], s["state"]) for s in done["stages"]] == [("sleep", "cancelled"), ("noop", "skipped")]
    stage_audit = d.ctl_json("audit", "--entity", "stage", "--id", str(done["stages"][1]["id"]))
    assert [(a["actor"], a["to_state"], a["reason"]) for a in stage_audit] == [
        (pwd.getpwuid(os.getuid()).pw_name, "skipped", "run cancelled: not needed")]  # who cancelled
