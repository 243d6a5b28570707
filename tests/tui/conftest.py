"""Fixtures for the console tests: real daemons on seeded, deterministic ledgers, `pr1d sim`, Pilot helpers.

The ledger is written directly only *before* a daemon starts (the daemon is its only writer once
running). Seeded runs are all in states the daemon leaves alone at start (terminal ones and
awaiting_approval), and every timestamp is rewritten to fixed values, so the pictures the snapshot
tests take are the same on every machine and every run.

Promotion and rollback need the real thing instead: `registry_world` registers real (tiny) model
versions the way tests/registry does, for the agents of a real `pr1d sim`, and points the daemon's
agent manager at that sim, so every profile push can be checked on the receiving end.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProc, add_agents
from tests.registry.registry_kit import AGENTS, BASE_MODEL, Sim, awaiting_run, make_model

# 2026-01-01 10:00:00 UTC: every seeded timestamp is an offset from this.
T0 = 1767261600.0
# Seeded daemons push profiles here: nothing listens on the discard port (binding it needs root), so a
# push pending in the seeded ledger stays pending, the same on every machine.
NOWHERE = "http://127.0.0.1:9"
SEEDED_ENV = {"PR1_REGISTRY__AGENT_MANAGER_URL": NOWHERE}
# The agent whose promotion and rollback the registry tests drive (one of the sim's).
REG_AGENT = AGENTS[0]["id"]

GATE = {
    "checks": [
        {"name": "gsm-lite uplift", "passed": True, "value": 0.041, "op": ">=", "threshold": 0.02},
        {"name": "format adherence", "passed": True, "value": 0.97, "op": ">=", "threshold": 0.95},
        {"name": "backtest regressions", "passed": True, "value": 0, "op": "<=", "threshold": 2},
        {"name": "safety rubric", "passed": False, "value": 0.981, "op": ">=", "threshold": 0.99},
    ],
    "baseline": "v1-7c0ffee",
}


def seed_ledger(state_dir: Path) -> dict[str, int]:
    """Agents a1..a3 and five runs in stable states, with stages, metrics, artifacts, logs, deployments,
    graded scores (a1 falling, a2 steady, a3 none) and signal states (a1 firing, a2 ok, a3 none).

    a1's promotion of v1-7c0ffee is still waiting for the agent manager's acknowledgement (a pending
    profile push); the initial deployments are acknowledged, as the registry records them.
    Returns the run ids by name: ok (succeeded noop with metrics/artifacts), failed, cancelled,
    awaiting (awaiting_approval with a gate report, agent a1), rejected.
    """
    from sqlmodel import Session

    from pr1d.ledger.models import Deployment, ModelVersion
    from pr1d.ledger.store import Ledger

    add_agents(state_dir, "a1", "a2", "a3")
    led = Ledger(state_dir / "ledger.sqlite")
    ids: dict[str, int] = {}

    def run(name: str, agent: str, kind: str, stages: list[str], path: list[tuple[str, str]], *,
            params: dict | None = None, gate: dict | None = None, stage_states: list[str] | None = None) -> int:
        r, _ = led.create_run(agent, kind, "alice", params=params or {}, reason=f"seeded {name} run",
                              stages=stages)
        # A run ending rejected, failed or cancelled skips the stages still pending, so those runs' stages
        # move before their last transition; the others keep the order (and audit ids) they always had.
        ends = path[-1][0] in ("rejected", "failed", "cancelled")
        for dst, reason in path[:-1] if ends else path:
            led.transition_run(r["id"], dst, "daemon" if dst != "cancelled" else "bob", reason,
                               **({"gate": gate} if gate and dst in ("awaiting_approval", "rejected") else {}))
        for st, state in zip(led.stages(r["id"]), stage_states or [], strict=False):
            if state == "pending":
                continue
            led.transition_stage(st["id"], "running", reason="started")
            if state != "running":
                led.transition_stage(st["id"], state, reason=state,
                                     **({"error": "asked to fail at step 3", "exit_code": 1} if state == "failed" else {}))
        for dst, reason in path[-1:] if ends else []:
            led.transition_run(r["id"], dst, "daemon" if dst != "cancelled" else "bob", reason,
                               **({"gate": gate} if gate and dst in ("awaiting_approval", "rejected") else {}))
        ids[name] = r["id"]
        return r["id"]

    done = [("running", "dispatched"), ("succeeded", "all stages done")]
    run("ok", "a1", "noop", ["noop"], done, stage_states=["succeeded"])
    run("failed", "a2", "sleep", ["sleep"], [("running", "dispatched"), ("failed", "stage sleep: asked to fail at step 3")],
        params={"seconds": 5, "fail_at_step": 3}, stage_states=["failed"])
    run("cancelled", "a2", "noop", ["noop"], [("cancelled", "not needed after all")])
    run("awaiting", "a1", "sft", ["dataset", "sft", "sft_gate", "backtest", "gate"],
        [("running", "dispatched"), ("awaiting_approval", "gate passed 3 of 4; needs a person")],
        params={"signal": "windowed_score", "window": 200}, gate=GATE, stage_states=["succeeded"] * 5)
    run("rejected", "a3", "rl", ["rl", "backtest", "gate"],
        [("running", "dispatched"), ("rejected", "promotion gate: 2 regressions in backtest")],
        gate={"regressions": {"passed": False, "count": 2, "max": 0}, "uplift": 0.01},
        stage_states=["succeeded", "succeeded", "succeeded"])

    ok_stage = led.stages(ids["ok"])[0]
    led.record_metrics(ids["ok"], ok_stage["id"], [("loss", i, round(2.0 / (1 + i), 4)) for i in range(30)])
    led.record_metrics(ids["ok"], ok_stage["id"], [("reward", i, round(0.1 + 0.02 * i, 4)) for i in range(30)])
    led.record_artifact(ids["ok"], ok_stage["id"], "result.json", "/srv/pr1/runs/1/00-noop/result.json", "ab" * 32, 123)
    led.record_artifact(ids["ok"], ok_stage["id"], "adapter", "/srv/pr1/runs/1/00-noop/adapter.safetensors",
                        "c0ffee" * 10 + "beef", 4_200_000, "model")
    log = state_dir / "seed-noop.log"
    log.write_text("".join(f"step {i}: loss {2.0 / (1 + i):.4f}\n" for i in range(30)))
    led.update_stage_fields(ok_stage["id"], log_path=str(log))

    with Session(led.engine) as s:
        for v, agent, when in (("v0-base", "a1", T0 - 86400), ("v1-7c0ffee", "a1", T0 - 3600),
                               ("v0-base-a2", "a2", T0 - 86400)):
            s.add(ModelVersion(id=v, agent_id=agent, path=f"/srv/pr1/models/{v}", sha256=v.ljust(64, "0"),
                               created_at=when))
        s.add(Deployment(agent_id="a1", version_id="v0-base", action="initial", ts=T0 - 86400, actor="daemon",
                         reason="first model in service", profile_pushed=True))
        s.add(Deployment(agent_id="a1", version_id="v1-7c0ffee", action="promote", ts=T0 - 3600, actor="alice",
                         reason="uplift +4.1% on gsm-lite", run_id=None))
        s.add(Deployment(agent_id="a2", version_id="v0-base-a2", action="initial", ts=T0 - 86400, actor="daemon",
                         reason="first model in service", profile_pushed=True))
        s.commit()
    led.update_agent_fields("a1", current_version="v1-7c0ffee", signals=SIGNALS["a1"])
    led.update_agent_fields("a2", current_version="v0-base-a2", signals=SIGNALS["a2"])
    led.set_hold("a3", True, "bob", "GPU maintenance")
    led.close()
    seed_scores(state_dir / "ledger.sqlite")
    fix_timestamps(state_dir / "ledger.sqlite")
    return ids


# Signal states as the monitor leaves them on agent rows (states only: the evidence lives on trigger rows).
SIGNALS = {
    "a1": {"weighted_score": {"state": "firing"}, "reliability": {"state": "ok"}, "drift": {"state": "warn"},
           "compliance": {"state": "ok"}},
    "a2": {"weighted_score": {"state": "ok"}, "reliability": {"state": "ok"}, "drift": {"state": "ok"},
           "compliance": {"state": "insufficient_data"}},
}


def seeded_scores(agent: str) -> list[float]:
    """48 graded scores, oldest first: a1 falls from 0.90 to about 0.80, a2 holds near 0.91 (fixed wiggle)."""
    wiggle = [0.004, -0.006, 0.002, 0.007, -0.003, -0.001]
    if agent == "a1":
        return [round(0.90 - 0.1 * i / 47 + wiggle[i % 6], 4) for i in range(48)]
    return [round(0.91 + wiggle[i % 6], 4) for i in range(48)]


def seed_scores(db: Path) -> None:
    """Score samples for a1 and a2 after a1's promotion (T0 - 3600), one a minute, plus one ungraded error."""
    served = {"a1": "v1-7c0ffee", "a2": "v0-base-a2"}
    rows = [(agent, f"{agent}-e{i:03d}", T0 - 3000 + 60 * i, score, "pass", served[agent], T0 - 2990 + 60 * i)
            for agent in ("a1", "a2") for i, score in enumerate(seeded_scores(agent))]
    # An evaluation the platform could not grade: it has no verdict, so the trend leaves it out.
    rows.append(("a2", "a2-e999", T0 - 3000 + 60 * 48, None, "error", served["a2"], T0 - 2990 + 60 * 48))
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO score_samples (agent_id, eval_id, ts, weighted_score, status, model_version, "
                        "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()


def fix_timestamps(db: Path) -> None:
    """Rewrite every time column to T0-based values so nothing shown depends on when the test ran."""
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE runs SET created_at=:t+id*600, updated_at=:t+id*600+300, "
                    "started_at=CASE WHEN started_at IS NULL THEN NULL ELSE :t+id*600+10 END, "
                    "finished_at=CASE WHEN finished_at IS NULL THEN NULL ELSE :t+id*600+300 END", {"t": T0})
        con.execute("UPDATE stages SET started_at=CASE WHEN started_at IS NULL THEN NULL ELSE :t+run_id*600+10+seq*50 END, "
                    "finished_at=CASE WHEN finished_at IS NULL THEN NULL ELSE :t+run_id*600+55+seq*50 END", {"t": T0})
        con.execute("UPDATE audit SET ts=:t+id*7", {"t": T0})
        con.execute("UPDATE metrics SET ts=:t", {"t": T0})
        con.execute("UPDATE artifacts SET created_at=:t", {"t": T0})
        con.execute("UPDATE agents SET created_at=:t, updated_at=:t", {"t": T0})
    con.close()


def seed_many_runs(state_dir: Path, n: int, agents: tuple[str, ...] = ("a1", "a2")) -> None:
    """n finished runs in one transaction (a bulk insert: create_run would take minutes for 10,000)."""
    from pr1d.ledger.store import Ledger

    add_agents(state_dir, *agents)
    Ledger(state_dir / "ledger.sqlite").close()  # creates the schema
    states = ("succeeded", "failed", "cancelled", "rejected")
    kinds = ("noop", "sleep")
    con = sqlite3.connect(state_dir / "ledger.sqlite")
    with con:
        con.executemany(
            "INSERT INTO runs (agent_id, kind, state, reason, params, created_by, created_at, updated_at, "
            "started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(agents[i % len(agents)], kinds[i % 2], states[i % len(states)], f"seeded run {i + 1}", json.dumps({}),
              "seed", T0 + i, T0 + i + 1, T0 + i, T0 + i + 1) for i in range(n)])
    con.close()


@pytest.fixture
def seeded_daemon(daemon_factory, tmp_path: Path) -> DaemonProc:
    """A started daemon on the seeded ledger (function scope: the test may change state)."""
    sd = tmp_path / "seeded"
    sd.mkdir()
    d = daemon_factory(sd, extra_env=SEEDED_ENV)
    d.ids = seed_ledger(sd)
    return d.start()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory) -> Iterator[DaemonProc]:
    """One seeded daemon for a whole module of tests that only read (navigation, filters, snapshots)."""
    sd = tmp_path_factory.mktemp("shared") / "state"
    sd.mkdir()
    ids = seed_ledger(sd)
    d = DaemonProc(sd, extra_env=SEEDED_ENV)
    d.ids = ids
    d.start()
    yield d
    d.close()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    """A `pr1d sim` (steady fleet agent-000..agent-002; its clock moves only when ticked)."""
    s = Sim(tmp_path, "steady")
    yield s
    s.close()


def seed_registry(state_dir: Path, src: Path, sim: Sim, *, promoted: bool) -> dict:
    """The sim's agents; agent-000 runs its base model (registered, recorded as the initial deployment)
    and has a run awaiting approval whose candidate version is registered and linked to it.

    `promoted`: the candidate is already promoted (and its profile pushed to the sim), so a rollback
    has somewhere to go back to. Returns the ids: base, candidate, run.
    """
    from pr1d.ledger.store import Ledger
    from pr1d.registry.deploy import promote, record_initial
    from pr1d.registry.push import HttpPusher
    from pr1d.registry.versions import register_version

    led = Ledger(state_dir / "ledger.sqlite")
    models = state_dir / "models"  # the daemon's default [registry] models_dir
    try:
        led.upsert_agents(AGENTS)
        base = register_version(led, models, REG_AGENT, make_model(src / "base", 0), served_as=BASE_MODEL,
                                profile="default")
        record_initial(led, models, REG_AGENT, base["id"])
        run_id = awaiting_run(led, REG_AGENT)
        cand = register_version(led, models, REG_AGENT, make_model(src / "candidate", 1), run_id=run_id,
                                parent_id=base["id"], policy={"branch_count": 4, "temperature": 0.7})
        if promoted:
            pusher = HttpPusher(sim.url)
            try:
                promote(led, models, run_id, cand["id"], "alice", "seeded promotion", pusher=pusher)
            finally:
                pusher.close()
    finally:
        led.close()
    return {"base": base["id"], "candidate": cand["id"], "run": run_id}


@pytest.fixture
def registry_world(daemon_factory, tmp_path: Path, sim: Sim) -> Callable[..., tuple[DaemonProc, dict]]:
    """`start(promoted=False, **env)`: seed the registry (see seed_registry), then start a daemon whose
    agent manager is the sim. Returns the daemon and the seeded ids."""

    def start(promoted: bool = False, **env: str) -> tuple[DaemonProc, dict]:
        sd = tmp_path / "registry-state"
        sd.mkdir()
        ids = seed_registry(sd, tmp_path / "model-sources", sim, promoted=promoted)
        return daemon_factory(sd, extra_env={"PR1_SCORING__BASE_URL": sim.url, **env}).start(), ids

    return start


def rpc(daemon: DaemonProc, method: str, **params):
    """One request over the daemon's socket, as a script would make it (blocking: use in_thread)."""
    with daemon.client() as c:
        return c.call(method, **params)


async def wait_for(pilot, predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Let the app run until predicate() is true (the app shares this event loop, so never time.sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - widgets may not exist yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await pilot.pause(0.05)


async def in_thread(fn: Callable, *args, **kw):
    """Run a blocking helper (pr1ctl, daemon stop/start) without freezing the app under test."""
    return await asyncio.to_thread(fn, *args, **kw)
