"""Whole-state backup (`pr1ctl backup`) of a running daemon and `pr1d restore` onto a fresh state directory."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pr1d.backup import (
    CHECKPOINT_REASON,
    Layout,
    manifest_path_problem,
    moved_path,
    path_moves,
    run_file_skip_reason,
)

from .conftest import BIN, add_agents, pr1_env

MB = 1 << 20


# -- decisions, as tables -----------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "size", "limit", "want"), [
    ("01-noop/spec.json", 10, 64 * MB, None),
    ("02-sft/stage.log", 64 * MB, 64 * MB, None),  # at the limit: kept
    ("02-sft/adapter/adapter_model.safetensors", 64 * MB + 1, 64 * MB, "larger than the 64 MiB limit"),
    ("02-sft/checkpoints/step-10/optimizer.pt", 10, 64 * MB, CHECKPOINT_REASON),
    ("02-sft/checkpoints", 10, 64 * MB, None),  # a file that merely has the name is not a checkpoint dir
    ("03-rl/x/checkpoints/a", 0, 0, CHECKPOINT_REASON),
    ("01-noop/empty", 0, 0, None),
])
def test_run_file_skip_reason(rel, size, limit, want):
    got = run_file_skip_reason(rel, size, limit)
    assert (got is None) if want is None else (got is not None and want in got)


@pytest.mark.parametrize(("rel", "ok"), [
    ("ledger.sqlite", True), ("jobs.sqlite", True), ("kb.sqlite", True),
    ("models/a1/v-0123/adapter_model.safetensors", True), ("runs/3/01-noop/spec.json", True),
    ("base-models/tiny/config.json", True), ("gradebook/entries.jsonl", True),
    ("models", False),  # an area, not a file in it
    ("ledger.sqlite/x", False), ("/etc/passwd", False), ("runs/../../etc/passwd", False), ("runs/./x", False),
    ("runs//x", False), ("other/file", False), ("", False), (None, False), ("runs\\x", False),
])
def test_manifest_path_problem(rel, ok):
    assert (manifest_path_problem(rel) is None) is ok


MOVES = [("/old/state/models", "/new/s/models"), ("/old/state", "/new/s")]


@pytest.mark.parametrize(("path", "want"), [
    ("/old/state/runs/3/01-noop/stage.log", "/new/s/runs/3/01-noop/stage.log"),
    ("/old/state/models/a1/v-1", "/new/s/models/a1/v-1"),
    ("/old/state", "/new/s"),
    ("/old/statefile", "/old/statefile"),  # a prefix of the name, not of the path
    ("/elsewhere/x", "/elsewhere/x"),
    (None, None), ("", ""),
])
def test_moved_path(path, want):
    assert moved_path(path, MOVES) == want


def test_path_moves_most_specific_first_and_models_outside_the_state_dir():
    layout = Layout(Path("/new/s"), Path("/srv/models"), Path("/new/s/base-models"), None)
    moves = path_moves({"state_dir": "/old", "models_root": "/old/models", "base_models_dir": "/old/base-models"}, layout)
    assert moves[-1] == ("/old", "/new/s")
    assert moved_path("/old/models/a1/v-1", moves) == "/srv/models/a1/v-1"
    assert moved_path("/old/runs/1/x", moves) == "/new/s/runs/1/x"


# -- a real daemon: backup while it runs, restore, start again ----------------------------------------
NOWHERE = "http://127.0.0.1:9"  # the agent manager: nothing listens, profile pushes stay pending


def _restore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pr1d"), "restore", *args], capture_output=True, text=True, timeout=60,
                          env=pr1_env())


def _state_with_history(tmp_path: Path, daemon_factory):
    """A daemon with a promoted version in service, a finished run, a run still sleeping, a base model,
    a gradebook copy and a KB file."""
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import record_initial
    from pr1d.registry.versions import register_version

    from .registry.registry_kit import awaiting_run, make_model

    sd = tmp_path / "state"
    sd.mkdir()
    add_agents(sd, "a1", "a2")
    led = Ledger(sd / "ledger.sqlite")
    try:
        base = register_version(led, sd / "models", "a1", make_model(tmp_path / "base", 0))
        record_initial(led, sd / "models", "a1", base["id"])
        rid = awaiting_run(led, "a1")
        cand = register_version(led, sd / "models", "a1", make_model(tmp_path / "cand", 1), run_id=rid,
                                parent_id=base["id"])
    finally:
        led.close()
    make_model(sd / "base-models" / "base-v0", 7)
    (sd / "gradebook").mkdir()
    (sd / "gradebook" / "entries.jsonl").write_text('{"task_id": "t1", "transcript": "x", "score": 1.0}\n')
    (sd / "gradebook" / "state.json").write_text('{"cursor": "c1"}')
    kb = sqlite3.connect(sd / "kb.sqlite")
    kb.execute("CREATE TABLE chunks (id TEXT, body TEXT)")
    kb.execute("INSERT INTO chunks VALUES ('c1', 'refund policy')")
    kb.commit()
    kb.close()
    d = daemon_factory(sd, extra_env={"PR1_REGISTRY__AGENT_MANAGER_URL": NOWHERE}).start()
    assert "promoted" in d.ctl("approve", str(rid), "--reason", "lgtm").stdout
    noop = d.ctl_json("trigger", "a2", "--kind", "noop")["run"]["id"]
    d.wait_run(noop, {"succeeded"})
    # Resumable state and a big file in a run folder: both stay out of the backup, listed as skipped.
    ckpt = sd / "runs" / str(noop) / "00-noop" / "checkpoints" / "step-1"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (sd / "runs" / str(noop) / "big.bin").write_bytes(b"\0" * (2 * MB))
    sleeping = d.ctl_json("trigger", "a2", "--kind", "sleep", "--param", "seconds=60")["run"]["id"]
    d.wait_run(sleeping, {"running"})
    return d, {"promoted_run": rid, "version": cand["id"], "base": base["id"], "noop": noop, "sleeping": sleeping}


def _digest(d) -> dict:
    """What must survive a restore, as the daemon reports it."""
    runs = {r["id"]: (r["agent_id"], r["kind"], r["state"]) for r in d.ctl_json("runs")}
    deps = [(x["agent_id"], x["version_id"], x["action"]) for x in d.ctl_json("deployments")]
    agents = {a["id"]: a.get("current_version") for a in d.ctl_json("agents")}
    return {"runs": runs, "deployments": deps, "agents": agents}


def test_backup_while_running_then_restore_on_a_fresh_state_dir(daemon_factory, tmp_path):
    d, ids = _state_with_history(tmp_path, daemon_factory)
    before = _digest(d)
    bk = tmp_path / "backup"
    out = d.ctl_json("backup", str(bk), "--max-run-file-mb", "1")
    assert out["path"] == str(bk) and out["files"] > 0
    assert d.ctl_json("show", str(ids["sleeping"]))["state"] == "running"  # the backup did not disturb it

    manifest = json.loads((bk / "MANIFEST.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    vdir = f"models/a1/{ids['version']}"
    assert {"ledger.sqlite", "jobs.sqlite", "kb.sqlite", f"{vdir}/adapter_model.safetensors",
            "base-models/base-v0/adapter_model.safetensors", "gradebook/entries.jsonl",
            "gradebook/state.json"} <= listed
    assert any(p.startswith(f"runs/{ids['noop']}/00-noop/") for p in listed)
    assert manifest["daemon_version"] and manifest["source"]["state_dir"] == str(d.state_dir)
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert skipped[f"runs/{ids['noop']}/00-noop/checkpoints"] == CHECKPOINT_REASON
    assert "1 MiB" in skipped[f"runs/{ids['noop']}/big.bin"]
    assert not any(p.endswith("/current") for p in listed)  # pointers are rebuilt from the ledger
    audit = d.ctl_json("audit", "--entity", "state")
    assert [a["action"] for a in audit] == ["backup"]

    # A second backup into the same folder is refused, and leaves the first one whole.
    cp = d.ctl("backup", str(bk), check=False)
    assert cp.returncode == 1 and "not empty" in cp.stderr
    assert json.loads((bk / "MANIFEST.json").read_text()) == manifest

    # A tampered copy is refused, naming the file, and nothing is written.
    bad = tmp_path / "tampered"
    shutil.copytree(bk, bad)
    weights = bad / vdir / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    cp = _restore(str(bad), "--state-dir", str(tmp_path / "never"))
    assert cp.returncode == 1 and f"{vdir}/adapter_model.safetensors: corrupt" in cp.stderr, cp.stderr
    assert not (tmp_path / "never").exists()
    # So is an unlisted file.
    weights.write_bytes(bytes(data[:-1] + bytes([data[-1] ^ 0xFF])))
    (bad / "runs" / "stray.txt").write_text("x")
    cp = _restore(str(bad), "--state-dir", str(tmp_path / "never"))
    assert cp.returncode == 1 and "runs/stray.txt: not listed in MANIFEST.json" in cp.stderr, cp.stderr
    assert not (tmp_path / "never").exists()
    # And a non-empty target.
    cp = _restore(str(bk), "--state-dir", str(d.state_dir))
    assert cp.returncode == 1 and "not empty" in cp.stderr

    d.stop()
    new = tmp_path / "restored"
    cp = _restore(str(bk), "--state-dir", str(new), "--json")
    assert cp.returncode == 0, cp.stderr
    summary = json.loads(cp.stdout)
    assert summary["files"] == len(manifest["files"]) and summary["paths_moved"] > 0

    r = daemon_factory(new, extra_env={"PR1_REGISTRY__AGENT_MANAGER_URL": NOWHERE}).start()
    after = _digest(r)
    assert after["deployments"] == before["deployments"]
    assert after["agents"] == before["agents"] and after["agents"]["a1"] == ids["version"]
    assert after["runs"].keys() == before["runs"].keys()
    for rid, (agent, kind, state) in before["runs"].items():
        if rid != ids["sleeping"]:
            assert after["runs"][rid] == (agent, kind, state)
    # The run caught mid-stage resumes (from the stage's start: checkpoints are not in backups).
    assert after["runs"][ids["sleeping"]][2] in ("queued", "running")
    assert os.readlink(new / "models" / "a1" / "current") == ids["version"]
    shown = r.ctl_json("show", str(ids["noop"]))
    assert shown["stages"][0]["log_path"].startswith(str(new) + "/")
    assert Path(shown["stages"][0]["log_path"]).is_file()
    assert (new / "kb.sqlite").is_file() and (new / "gradebook" / "state.json").read_text() == '{"cursor": "c1"}'

    from pr1d.ledger.store import Ledger
    from pr1d.registry.versions import verify_version

    led = Ledger(new / "ledger.sqlite")
    try:
        verify_version(led, new / "models", "a1", ids["version"])  # byte for byte what was registered
        restore_audit = [a for a in led.audit_log("state") if a["action"] == "restore"]
        assert len(restore_audit) == 1 and restore_audit[0]["details"]["source"]["state_dir"] == str(d.state_dir)
    finally:
        led.close()


def test_restore_refuses_a_folder_without_manifest(tmp_path):
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "ledger.sqlite").write_bytes(b"")
    cp = _restore(str(tmp_path / "bk"), "--state-dir", str(tmp_path / "s"))
    assert cp.returncode == 1 and "MANIFEST.json: missing" in cp.stderr
    assert not (tmp_path / "s").exists()


def test_backup_needs_an_absolute_folder_outside_the_backed_up_areas(daemon):
    with daemon.client() as c:
        from pr1d.rpc.schema import CONFLICT, INVALID_PARAMS, RpcError

        for path, code in (("relative/dir", INVALID_PARAMS), (str(daemon.state_dir / "runs" / "bk"), CONFLICT)):
            with pytest.raises(RpcError) as e:
                c.call("state.backup", path=path)
            assert e.value.code == code
