"""Model registry against a real `pr1d sim`: versions, promote, rollback, push failures, start-up repair."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time

import pytest
from registry_kit import (  # noqa: F401 (fixtures)
    BASE_MODEL,
    awaiting_run,
    count,
    ingest,
    ledger_fixture,
    make_model,
    models_fixture,
    sim_fixture,
)

from pr1d.inference.policy import ParallelExecutionPolicy
from pr1d.ledger.store import Conflict, NotFound, WriteTx
from pr1d.registry.approvals import approve
from pr1d.registry.deploy import (
    RegistryConfig,
    deployment_history,
    in_service_at,
    read_pointer,
    reconcile,
    record_initial,
    rollback,
    rollback_target,
    swap_pointer,
)
from pr1d.registry.push import AsyncHttpPusher, HttpPusher, ProfileSync, pending_pushes
from pr1d.registry.status import registry_status
from pr1d.registry.versions import RegistryError, UnsafeModel, manifest, register_version, version_dir

AGENT = "agent-000"


def _base(ledger, models, tmp_path):
    """The model the agent already runs, registered under the platform's name for it, as the first deployment."""
    base = register_version(ledger, models, AGENT, make_model(tmp_path / "src-base", 0), served_as=BASE_MODEL,
                            profile="default")
    record_initial(ledger, models, AGENT, base["id"])
    return base


def _candidate(ledger, models, tmp_path, seed=1, expected=0.92, parent=None):
    run_id = awaiting_run(ledger, AGENT, expected=expected)
    v = register_version(ledger, models, AGENT, make_model(tmp_path / f"src-{seed}", seed), run_id=run_id,
                         parent_id=parent, dataset_version="ds-1", config_hash="cfg-1",
                         policy={"branch_count": 4, "temperature": 0.7, "max_new_tokens": 512})
    return run_id, v


# -- versions ---------------------------------------------------------------------------------------------


def test_version_is_content_addressed_immutable_and_idempotent(ledger, models, tmp_path):
    src = make_model(tmp_path / "src", 3)
    v = register_version(ledger, models, AGENT, src, dataset_version="ds-1", config_hash="c1")
    # id = sha256sum-style manifest of the weights, hashed again
    w = hashlib.sha256((src / "adapter_model.safetensors").read_bytes()).hexdigest()
    digest = hashlib.sha256(f"{w}  adapter_model.safetensors\n".encode()).hexdigest()
    assert v["id"] == "v-" + digest[:16] and v["sha256"] == digest
    assert v["dataset_version"] == "ds-1" and v["config_hash"] == "c1"
    folder = version_dir(models, AGENT, v["id"])
    assert manifest(folder) == manifest(src) == v["meta"]["files"]
    assert oct(os.stat(folder / "adapter_model.safetensors").st_mode & 0o777) == "0o444"
    again = register_version(ledger, models, AGENT, make_model(tmp_path / "src-copy", 3))
    assert again["id"] == v["id"] and again["dataset_version"] == "ds-1"  # first lineage kept
    assert count(ledger, "SELECT count(*) FROM model_versions") == 1
    # same weights, other companion files: refused, not merged
    with pytest.raises(Conflict, match="other content"):
        register_version(ledger, models, AGENT, make_model(tmp_path / "src-alpha", 3, config={"r": 8, "lora_alpha": 64}))


@pytest.mark.parametrize(("extra", "match"), [
    ({"pytorch_model.bin": b"\x80\x04pickle"}, "pickle"),
    ({"optimizer.pt": b"x"}, "pickle"),
    ({"modeling_evil.py": b"import os"}, "code"),
    ({"config.json": b'{"auto_map": {"AutoModel": "modeling_evil.Evil"}}'}, "trust_remote_code"),
    ({"more.safetensors": b"\x80\x04\x95 this is a pickle renamed"}, "safetensors"),
    ({".hidden": b"x"}, "file name"),
])
def test_unsafe_models_refused(ledger, models, tmp_path, extra, match):
    with pytest.raises(UnsafeModel, match=match):
        register_version(ledger, models, AGENT, make_model(tmp_path / "src", 1, extra=extra))
    assert count(ledger, "SELECT count(*) FROM model_versions") == 0
    assert not (models / AGENT).exists() or not list((models / AGENT).iterdir())  # nothing half-copied left


def test_symlinks_no_weights_and_traversal_refused(ledger, models, tmp_path):
    src = make_model(tmp_path / "src", 1)
    (src / "escape.json").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeModel, match="symlink"):
        register_version(ledger, models, AGENT, src)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="no \\*.safetensors"):
        register_version(ledger, models, AGENT, empty)
    for bad in ("../evil", "..", "a/b", ".hidden", ""):
        with pytest.raises(RegistryError, match="only letters"):
            register_version(ledger, models, bad, make_model(tmp_path / "ok", 1))
    with pytest.raises(RegistryError):
        swap_pointer(models / AGENT, "../../etc")


def test_a_hub_cache_snapshot_registers_as_its_files(ledger, models, tmp_path):
    """`hf download` leaves snapshots of links into the repo's blobs: registered as the files they name; a link
    that leaves the repo's blobs is still refused."""
    src = make_model(tmp_path / "src", 1)
    repo = tmp_path / "hub" / "models--org--m"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    v = register_version(ledger, models, AGENT, snap)
    kept = version_dir(models, AGENT, v["id"])
    for f in sorted(src.iterdir()):
        assert not (kept / f.name).is_symlink() and (kept / f.name).read_bytes() == f.read_bytes()
    (snap / "escape.json").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeModel, match="symlink 'escape.json'"):
        register_version(ledger, models, "other-agent", snap)


# -- promote and rollback ------------------------------------------------------------------------------------


def test_promote_then_rollback_restores_bytes_pushes_older_profile_and_grades_respond(sim, ledger, models, tmp_path):
    sim.tick(300)  # slow-degradation: by now the base model has drifted down
    ingest(ledger, sim)
    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path, parent=base["id"])
    pusher = HttpPusher(sim.url)
    t_before = time.time()
    res = approve(ledger, models, run_id, "alice", "gate passed, looks good", pusher=pusher)
    assert res.promoted and res.deployment["profile_pushed"] and res.deployment["action"] == "promote"
    assert read_pointer(models, AGENT) == v1["id"]
    agent = ledger.get_agent(AGENT)
    assert agent["current_version"] == v1["id"]
    # the monitor's baseline and state are reset: it re-freezes them from the new version's platform scores
    # (never from the gate's expectation), samples after the last one graded before the promotion
    assert agent["baseline"] is None and agent["monitor"] is None
    pushed = sim.history(AGENT)[-1]
    assert pushed["model_version"] == v1["id"] and pushed["profile"] == "parallel_reasoner"
    assert pushed["policy"] == ParallelExecutionPolicy(branch_count=4, temperature=0.7, max_new_tokens=512).to_dict()
    sim.tick(100)
    promoted_mean = sim.agent(AGENT)["recent_mean"]

    t_promoted = time.time()
    dep = rollback(ledger, models, AGENT, "bob", "grades look wrong", pusher=pusher)
    assert dep["action"] == "rollback" and dep["version_id"] == base["id"] and dep["profile_pushed"]
    # byte for byte: the folder `current` names now hashes exactly as registered and as the source did
    current = models / AGENT / "current"
    assert os.readlink(current) == base["id"]
    assert manifest(current) == base["meta"]["files"] == manifest(tmp_path / "src-base")
    # the sim received the older profile: the platform's own name for the base model
    last = sim.history(AGENT)[-1]
    assert last["model_version"] == BASE_MODEL and last["profile"] == "default"
    assert last["previous_model_version"] == v1["id"]
    assert ledger.get_run(run_id)["state"] == "rolled_back"
    assert ledger.get_agent(AGENT)["current_version"] == base["id"]
    # ... and the grades respond: back to the drifted base behaviour
    sim.tick(100)
    rolled_mean = sim.agent(AGENT)["recent_mean"]
    assert promoted_mean > 0.9 and rolled_mean < promoted_mean - 0.05, (promoted_mean, rolled_mean)
    # audited, with who and why
    acts = [(a["action"], a["actor"], a["reason"]) for a in ledger.audit_log("deployment", dep["id"])]
    assert ("rollback", "bob", "grades look wrong") in acts
    # history answers "what was in service at time T"
    assert in_service_at(ledger, AGENT, t_before - 3600) is None
    assert in_service_at(ledger, AGENT, t_before)["version_id"] == base["id"]
    assert in_service_at(ledger, AGENT, t_promoted)["version_id"] == v1["id"]
    assert in_service_at(ledger, AGENT, time.time())["version_id"] == base["id"]
    assert [d["action"] for d in deployment_history(ledger, AGENT)] == ["rollback", "promote", "initial"]


def test_rollback_target_walks_back_through_history():
    h = [(1, "v0", "initial", None), (2, "v1", "promote", 1), (3, "v2", "promote", 2)]
    assert rollback_target(h) == "v1"
    h.append((4, "v1", "rollback", 2))
    assert rollback_target(h) == "v0"  # v2 was withdrawn: a second rollback goes further back
    h.append((5, "v0", "rollback", None))
    assert rollback_target(h) is None  # v1 and v2 both withdrawn, v0 current
    h.append((6, "v2", "promote", 3))  # re-promoted: no longer withdrawn
    assert rollback_target(h) == "v0"
    assert rollback_target([(1, "v0", "initial", None)]) is None


def test_rollback_works_with_a_broken_newest_run_and_refuses_bad_targets(sim, ledger, models, tmp_path):
    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    approve(ledger, models, run_id, "alice", "ok", pusher=HttpPusher(sim.url))
    # the newest run is broken: awaiting approval with unreadable gate evidence and no model version
    broken = awaiting_run(ledger, AGENT)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET gate = '{not json', params = 'garbage' WHERE id = ?", (broken,))
    with pytest.raises(NotFound):
        rollback(ledger, models, AGENT, "bob", "x", to="v-0000000000000000")
    with pytest.raises(Conflict, match="already runs"):
        rollback(ledger, models, AGENT, "bob", "x", to=v1["id"])
    with pytest.raises(RegistryError):
        rollback(ledger, models, AGENT, "bob", "x", to="../../etc")
    # a target whose files changed on disk is refused, and nothing moves
    f = version_dir(models, AGENT, base["id"]) / "adapter_model.safetensors"
    os.chmod(f, 0o644)
    good = f.read_bytes()
    f.write_bytes(good[:-4] + b"\0\0\0\0")
    with pytest.raises(RegistryError, match="does not match"):
        rollback(ledger, models, AGENT, "bob", "x")
    assert read_pointer(models, AGENT) == v1["id"]
    f.write_bytes(good)
    dep = rollback(ledger, models, AGENT, "bob", "emergency", pusher=HttpPusher(sim.url))
    assert dep["version_id"] == base["id"] and read_pointer(models, AGENT) == base["id"]
    assert count(ledger, "SELECT count(*) FROM runs WHERE id = ? AND state = 'awaiting_approval'", broken) == 1
    assert ledger.get_run(run_id)["state"] == "rolled_back"
    assert sim.history(AGENT)[-1]["model_version"] == BASE_MODEL


def test_no_deployments_nothing_to_roll_back(ledger, models):
    with pytest.raises(NotFound, match="no deployments"):
        rollback(ledger, models, AGENT, "bob", "x")


# -- the profile push failing ----------------------------------------------------------------------------------


def _agrees(sim, ledger, models, agent=AGENT) -> bool:
    """The pointer, the ledger and the platform all name the same version."""
    vid = read_pointer(models, agent)
    meta = ledger.model_version(vid)["meta"]
    served = meta.get("served_as") or vid
    platform = {a["id"]: a["model"] for a in sim.get("/v1/agents")["agents"]}[agent]
    return ledger.get_agent(agent)["current_version"] == vid and platform == served


def test_push_failure_retries_until_acknowledged(sim, ledger, models, tmp_path):
    cfg = RegistryConfig(push_retry_base_s=0.2, push_retry_max_s=0.5)
    _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    sim.fail_profile_pushes()
    res = approve(ledger, models, run_id, "alice", "ok", registry=cfg, pusher=HttpPusher(sim.url))
    # documented semantics: the promotion is recorded and the pointer switched; the push is pending
    assert res.promoted and not res.deployment["profile_pushed"]
    assert read_pointer(models, AGENT) == v1["id"] and ledger.get_agent(AGENT)["current_version"] == v1["id"]
    assert not any(h["model_version"] == v1["id"] for h in sim.history(AGENT))
    st = registry_status(ledger, registry=cfg)
    (alert,) = st["alerts"]
    assert alert["kind"] == "profile_push_pending" and AGENT in alert["message"] and "HTTP 503" in alert["message"]
    assert st["pending_pushes"][0]["attempts"] == 1

    async def retry() -> list[dict]:
        pusher = AsyncHttpPusher(sim.url)
        sync = ProfileSync(ledger, pusher, cfg)
        try:
            out = [await sync.sync_due()]  # within backoff: nothing attempted
            await asyncio.sleep(0.25)
            out.append(await sync.sync_due())  # due: attempted, still failing
            sim.clear_faults()
            await asyncio.sleep(0.45)
            out.append(await sync.sync_due())  # due again: acknowledged
            return out
        finally:
            await pusher.close()

    first, second, third = asyncio.run(retry())
    assert first == []  # within the backoff nothing is attempted
    assert second[0]["state"] == "pending" and "HTTP 503" in second[0]["error"]
    assert third[0]["state"] == "in_sync" and third[0]["pushed"] == [res.deployment["id"]]
    assert sim.history(AGENT)[-1]["model_version"] == v1["id"]
    assert registry_status(ledger, registry=cfg)["alerts"] == []
    assert _agrees(sim, ledger, models)


def test_rollback_while_push_pending_supersedes_it(sim, ledger, models, tmp_path):
    cfg = RegistryConfig(push_retry_base_s=0.01, push_retry_max_s=0.01)
    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    sim.fail_profile_pushes()
    promoted = approve(ledger, models, run_id, "alice", "ok", registry=cfg, pusher=HttpPusher(sim.url)).deployment
    rolled = rollback(ledger, models, AGENT, "bob", "changed my mind", cfg=cfg, pusher=HttpPusher(sim.url))
    assert not rolled["profile_pushed"]
    pend = pending_pushes(ledger, cfg)
    assert [p["deployment"] for p in pend] == [rolled["id"]]  # only the newest deployment is ever pushed
    hist = {d["id"]: d for d in deployment_history(ledger, AGENT)}
    assert hist[promoted["id"]]["push_error"] == f"superseded by deployment {rolled['id']}"
    sim.clear_faults()

    async def retry() -> list[dict]:
        pusher = AsyncHttpPusher(sim.url)
        try:
            return await ProfileSync(ledger, pusher, cfg).sync_due()
        finally:
            await pusher.close()

    (out,) = asyncio.run(retry())
    assert out["state"] == "in_sync" and out["pushed"] == [rolled["id"]]
    # the platform never saw v1: it went straight back to (stayed on) the base model
    assert [h["model_version"] for h in sim.history(AGENT)] == [BASE_MODEL]
    assert read_pointer(models, AGENT) == base["id"]
    assert _agrees(sim, ledger, models)
    assert pending_pushes(ledger, cfg) == []


# -- crash consistency --------------------------------------------------------------------------------------------


def test_failed_commit_puts_the_pointer_back(ledger, models, tmp_path, monkeypatch):
    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    seen = []

    def boom(self):
        seen.append(read_pointer(models, AGENT))  # the swap happened inside the transaction ...
        raise OSError("disk full")

    monkeypatch.setattr(WriteTx, "_commit", boom)
    with pytest.raises(OSError, match="disk full"):
        approve(ledger, models, run_id, "alice", "ok")
    monkeypatch.undo()
    assert seen == [v1["id"]]
    # ... and was undone with it: pointer, ledger and run all as before
    assert read_pointer(models, AGENT) == base["id"]
    assert ledger.get_agent(AGENT)["current_version"] == base["id"]
    assert ledger.get_run(run_id)["state"] == "awaiting_approval"
    assert count(ledger, "SELECT count(*) FROM deployments") == 1
    assert count(ledger, "SELECT count(*) FROM approvals") == 0


def test_reconcile_makes_the_pointer_agree_with_the_ledger(ledger, models, tmp_path):
    base = _base(ledger, models, tmp_path)
    _run, v1 = _candidate(ledger, models, tmp_path)
    # a crash after the swap, before the commit: the pointer names a version the ledger never deployed
    swap_pointer(models / AGENT, v1["id"])
    # leftovers of an interrupted registration and an interrupted swap; an agent whose first deployment died
    (models / AGENT / ".tmp-deadbeef").mkdir()
    os.symlink(v1["id"], models / AGENT / ".current.abc.tmp")
    other = register_version(ledger, models, "agent-001", make_model(tmp_path / "src-o", 9))
    swap_pointer(models / "agent-001", other["id"])
    rep = reconcile(ledger, models)
    assert read_pointer(models, AGENT) == base["id"]
    assert read_pointer(models, "agent-001") is None
    assert {r["agent"] for r in rep["repaired"]} == {AGENT, "agent-001"}
    assert sorted(p.name for p in (models / AGENT).iterdir()) == sorted([base["id"], v1["id"], "current"])
    assert any(a["action"] == "reconcile" for a in ledger.audit_log("agent", AGENT))
    assert reconcile(ledger, models)["repaired"] == []  # idempotent


def test_crash_between_swap_and_commit_is_repaired_on_start(ledger, models, tmp_path):
    """A real crash: a process dies (SIGKILL) right after the swap, inside the transaction."""
    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pr1d.ledger.store import Ledger, WriteTx\n"
        "from pr1d.registry import approvals\n"
        "def die(self):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "WriteTx._commit = die\n"
        f"led = Ledger(Path({str(ledger.path)!r}))\n"
        f"approvals.approve(led, Path({str(models)!r}), {run_id}, 'alice', 'ok')\n"
    )
    cp = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert cp.returncode == -9, cp.stderr
    assert read_pointer(models, AGENT) == v1["id"]  # swapped, never committed
    assert ledger.get_run(run_id)["state"] == "awaiting_approval"
    reconcile(ledger, models)
    assert read_pointer(models, AGENT) == base["id"]
    res = approve(ledger, models, run_id, "alice", "ok")  # and the promotion can simply be approved again
    assert res.promoted and read_pointer(models, AGENT) == v1["id"]


# -- the daemon's view: RegistryService --------------------------------------------------------------------


async def test_service_approve_push_pending_restart_and_rollback(sim, ledger, models, tmp_path):
    from pr1d.registry.approvals import ApprovalConfig
    from pr1d.registry.service import RegistryService
    from pr1d.registry.watch import WatchConfig

    base = _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    events: list[tuple[str, dict]] = []

    def service() -> RegistryService:
        return RegistryService(ledger, tmp_path / "state", registry=RegistryConfig(push_retry_base_s=0.05),
                               approvals=ApprovalConfig(), watch=WatchConfig(), agent_manager_url=sim.url,
                               publish=lambda topic, data, run=None: events.append((topic, data)))

    svc = service()
    assert (await svc.start())["repaired"] == []
    sim.fail_profile_pushes()
    out = await svc.approve(run_id, "alice", "ok")
    assert out["promoted"] and out["push"]["state"] == "pending" and "HTTP 503" in out["push"]["error"]
    assert ("alert", {"kind": "profile_push_pending", "agent": AGENT, "error": out["push"]["error"]}) in events
    assert [a["kind"] for a in (await svc.status())["alerts"]] == ["profile_push_pending"]
    await svc.close()

    # the daemon restarts while the push is pending; the agent manager is back
    sim.clear_faults()
    svc = service()
    rep = await svc.start()
    assert [p["deployment"] for p in rep["pending_pushes"]] == [out["deployment"]["id"]]
    await svc._start_task
    assert sim.history(AGENT)[-1]["model_version"] == v1["id"] and (await svc.status())["alerts"] == []

    back = await svc.rollback(AGENT, "bob", "pager went off")
    assert back["push"]["state"] == "in_sync" and back["deployment"]["version_id"] == base["id"]
    assert sim.history(AGENT)[-1]["model_version"] == BASE_MODEL
    assert any(t == "run" and d["state"] == "rolled_back" for t, d in events)
    assert [d["action"] for d in await svc.deployments(AGENT, 10)] == ["rollback", "promote", "initial"]
    await svc.close()


def _listing(sim) -> list[dict]:
    return [{"id": a["id"], "model": a["model"], "profile": a["profile"]} for a in sim.get("/v1/agents")["agents"]]


async def test_agent_manager_drift_is_pushed_again_then_only_warned(sim, ledger, models, tmp_path):
    from pr1d.registry.approvals import ApprovalConfig
    from pr1d.registry.service import MAX_REPUSHES, RegistryService
    from pr1d.registry.watch import WatchConfig

    events: list[tuple[str, dict]] = []

    def service(**cfg) -> RegistryService:
        return RegistryService(ledger, tmp_path / "state", registry=RegistryConfig(**cfg), approvals=ApprovalConfig(),
                               watch=WatchConfig(), agent_manager_url=sim.url,
                               publish=lambda topic, data, run=None: events.append((topic, data)))

    base = _base(ledger, models, tmp_path)
    svc = service()
    await svc.start()
    # Only the initial deployment: pr1 never pushed it, so whatever the platform runs is not pr1's drift.
    other = [{"id": AGENT, "model": "someone-elses-model", "profile": "x"}]
    assert await svc.check_agent_manager(other, time.time()) == []

    run_id, v1 = _candidate(ledger, models, tmp_path)
    before = _listing(sim)  # fetched before the promotion's push was acknowledged
    out = await svc.approve(run_id, "alice", "ok")
    assert out["push"]["state"] == "in_sync"
    assert await svc.check_agent_manager(before, time.time() - 60) == []  # a listing older than the ack
    assert await svc.check_agent_manager(_listing(sim), time.time()) == []  # in agreement
    # A platform that does not report the model or the profile: unknown, not drifted.
    assert await svc.check_agent_manager([{"id": AGENT, "model": "", "profile": ""}], time.time()) == []
    assert await svc.check_agent_manager([{"id": AGENT, "model": v1["id"], "profile": ""}], time.time()) == []

    # The agent manager goes back to the base model behind pr1's back.
    sim.post(f"/v1/agents/{AGENT}/profile", {"profile": "default", "model_version": BASE_MODEL, "policy": {}})
    (d,) = await svc.check_agent_manager(_listing(sim), time.time())
    assert d["action_taken"] == "repush" and d["deployment"] == out["deployment"]["id"]
    assert d["reported"] == {"model": BASE_MODEL, "profile": "default"} and d["deployed"]["model"] == v1["id"]
    await svc.settle()
    assert sim.history(AGENT)[-1]["model_version"] == v1["id"] and _agrees(sim, ledger, models)
    assert pending_pushes(ledger) == [] and (await svc.status())["alerts"] == []
    assert ("alert", {"kind": "agent_manager_drift", "agent": AGENT, "deployment": d["deployment"],
                      "action": "repush", "message": events[-2][1]["message"]}) in events
    assert count(ledger, "SELECT count(*) FROM audit WHERE action = 'agent_manager_drift'") == 1
    assert await svc.check_agent_manager(_listing(sim), time.time() + 1) == []  # fixed: the count starts over

    # A platform that acknowledges pushes but keeps listing another name: pushed again MAX_REPUSHES times
    # in a row, then only warned about (once), with an alert in status.
    stale = [{"id": AGENT, "model": "v1-as-the-platform-calls-it", "profile": "parallel_reasoner"}]
    taken = []
    for _ in range(MAX_REPUSHES + 2):
        (d,) = await svc.check_agent_manager(stale, time.time() + 1)
        await svc.settle()
        taken.append(d["action_taken"])
    assert taken == ["repush"] * MAX_REPUSHES + ["warn", "warn"]
    assert sum(1 for t, e in events if e.get("kind") == "agent_manager_drift" and e["action"] == "warn") == 1
    (alert,) = (await svc.status())["alerts"]
    assert alert["kind"] == "agent_manager_drift" and "check what its GET /v1/agents calls" in alert["message"]
    # In agreement again: the alert clears and a later drift starts a fresh count.
    assert await svc.check_agent_manager(_listing(sim), time.time() + 1) == []
    assert (await svc.status())["alerts"] == []
    assert (await svc.check_agent_manager(stale, time.time() + 1))[0]["action_taken"] == "repush"
    await svc.settle()
    await svc.close()

    # repush_on_drift = false: warned about, audited nowhere, never pushed.
    svc = service(repush_on_drift=False)
    pushes = len(sim.history(AGENT))
    (d,) = await svc.check_agent_manager(stale, time.time() + 1)
    assert d["action_taken"] == "warn" and d["why"] == "registry.repush_on_drift = false"
    assert len(sim.history(AGENT)) == pushes and pending_pushes(ledger) == []
    assert [a["kind"] for a in (await svc.status())["alerts"]] == ["agent_manager_drift"]
    await svc.close()
    assert read_pointer(models, AGENT) == v1["id"] != base["id"]


def test_promote_directly_is_the_same_transaction(sim, ledger, models, tmp_path):
    from pr1d.registry.deploy import promote

    _base(ledger, models, tmp_path)
    run_id, v1 = _candidate(ledger, models, tmp_path)
    dep = promote(ledger, models, run_id, v1["id"], "alice", "scripted", pusher=HttpPusher(sim.url))
    assert dep["profile_pushed"] and dep["run_id"] == run_id and read_pointer(models, AGENT) == v1["id"]
    assert ledger.get_run(run_id)["state"] == "promoted"
    with pytest.raises(Conflict, match="promoted, not awaiting_approval"):
        promote(ledger, models, run_id, v1["id"], "alice", "again")
    assert count(ledger, "SELECT count(*) FROM deployments WHERE action = 'promote'") == 1


# -- module boundaries --------------------------------------------------------------------------------------------


def test_push_never_imports_deploy():
    """deploy.py builds on push.py (it pushes after a deployment); push.py must not need deploy.py back."""
    import ast
    import inspect

    from pr1d.registry import deploy, push

    tree = ast.parse(inspect.getsource(push))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.rsplit(".", 1)[-1] == "deploy"}, imported
    assert not any(getattr(v, "__name__", None) == deploy.__name__ or getattr(v, "__module__", None) == deploy.__name__
                   for v in vars(push).values())
    assert deploy.sync_agent_blocking is push.sync_agent_blocking  # and deploy does use push


def test_only_the_ledger_writes_run_state_and_audit_rows():
    """The registry moves runs and writes audit rows through the ledger's write transaction, never in SQL."""
    import re
    from pathlib import Path

    import pr1d.registry

    forbidden = re.compile(r"(UPDATE\s+runs\b|INSERT\s+(OR\s+\w+\s+)?INTO\s+(audit|runs|stages)\b)", re.IGNORECASE)
    hits = [f"{p.name}: {m.group(0)}" for p in Path(pr1d.registry.__file__).parent.glob("*.py")
            for m in forbidden.finditer(p.read_text())]
    assert hits == []
