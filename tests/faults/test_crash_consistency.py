"""Crash consistency: SIGKILL the daemon at seeded random points, restart it, let it finish, check invariants.

Kill points: during polling, inside a stage (a `(run kind, stage, opens, window)` entry: dataset build,
SFT, RL, backtest — an entry whose stages this build lacks is recorded as skipped with the reason),
between gate and approval, in the middle of a promotion (during the profile push, made slow by a latency
fault on the sim's profile endpoint) and in the middle of a rollback. After every kill the ledger-only
invariants are checked on the dead daemon's state (and that no stage worker outlived it); after the
restart and the finish, every invariant including the agent manager's view (tests/faults/invariants.py).

Each kill is recorded in ``$PR1_RELIABILITY_OUT/crash.json``. ``PR1_CRASH_SEED`` picks the random points
(default fixed, so CI is reproducible); ``PR1_CRASH_KILLS`` is kills per kill point (default 1, and 2 for
the cheap registry ones); ``PR1_CRASH_TRAINING=1`` adds the RL and backtest kill points (minutes of CPU).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pr1d.ledger.samples import sample_count
from pr1d.ledger.states import TERMINAL_RUN_STATES
from pr1d.ledger.store import Ledger
from pr1d.pipeline.plans import PLANS, stage_available
from pr1d.registry.deploy import record_initial
from pr1d.registry.versions import register_version
from tests.conftest import BIN, pr1_env
from tests.faults.invariants import check_invariants, live_workers, record_result, reliability_out  # noqa: F401
from tests.registry.registry_kit import BASE_MODEL, Sim, awaiting_run, make_model

SEED = int(os.environ.get("PR1_CRASH_SEED", "1009"))
KILLS = int(os.environ.get("PR1_CRASH_KILLS", "0"))  # 0: each kill point's own CI default
PROFILE_LATENCY_S = 1.5  # a profile push this slow puts most of a promotion/rollback inside the kill window


def _kills(default: int) -> int:
    return KILLS or default


def _rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def _env(sim: Sim, monitor: bool = False, **extra: str) -> dict[str, str]:
    return {
        "PR1_MONITOR__ENABLED": "true" if monitor else "false",
        "PR1_SCORING__BASE_URL": sim.url,
        "PR1_SCORING__BACKOFF_BASE_S": "0.01",
        # The start-up poll runs at once; the interval is long so a test decides when the next one runs.
        "PR1_SCHEDULER__POLL_INTERVAL_S": "3600",
        "PR1_REGISTRY__PUSH_RETRY_BASE_S": "0.2",
        "PR1_REGISTRY__PUSH_RETRY_MAX_S": "1",
        **extra,
    }


def _sigkill(d) -> None:
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)


def _after_kill(d) -> list[str]:
    """Invariants that must hold the instant the daemon is dead (before any start-up repair runs)."""
    return check_invariants(d.state_dir, deployments=False, daemon_running=False)


def _wait_terminal(d, run_id: int, timeout: float) -> dict:
    return d.wait_run(run_id, {str(s) for s in TERMINAL_RUN_STATES} | {"awaiting_approval"}, timeout=timeout)


def _wait_pushed(d, timeout: float = 30.0) -> None:
    """Until the registry has no profile push pending (the retry job and the start-up sync deliver them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with d.client() as c:
            if not c.call("status")["registry"]["pending_pushes"]:
                return
        time.sleep(0.2)
    raise AssertionError("profile pushes still pending after the daemon came back")


def _ctl_async(d, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "pr1ctl"), "--socket", str(d.socket), *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pr1_env())


def _ledger_read(state_dir: Path, fn):
    led = Ledger(state_dir / "ledger.sqlite")
    try:
        return fn(led)
    finally:
        led.close()


# -- during polling ------------------------------------------------------------------------------------


def test_kill_during_polling(tmp_path, daemon_factory, reliability_out):  # noqa: F811
    """Killed mid poll cycle (samples and cursors commit together): nothing lost, nothing twice."""
    agents, per_agent = 300, 30
    sim = Sim(tmp_path, "steady", "--agents", str(agents))
    try:
        sim.tick(per_agent)
        # 300 agents x 50 ms / 4 in flight: the start-up cycle takes ~4 s, the kill lands inside it.
        sim.post("/_sim/faults", {"kind": "latency", "seconds": 0.05, "rate": 1.0, "endpoints": ["evaluations"]})
        d = daemon_factory(extra_env=_env(sim, monitor=True, PR1_SCORING__CONCURRENCY="4"))
        rng = _rng("poll")
        for i in range(_kills(1)):
            before = sim.get("/_sim/state")["requests"].get("evaluations", 0)
            d.start()
            delay = rng.uniform(0.3, 2.5)
            time.sleep(delay)
            _sigkill(d)
            asked = sim.get("/_sim/state")["requests"].get("evaluations", 0) - before
            n = _ledger_read(d.state_dir, lambda led: sample_count(led))
            violations = _after_kill(d)
            # Landed mid-cycle: some agents' pages were asked for, and the cycle never committed.
            landed = 0 < asked and n < agents * per_agent
            record_result(reliability_out, "crash", {
                "kill_point": "polling", "seed": SEED, "kill": i, "delay_s": round(delay, 3), "landed": landed,
                "evaluation_requests_before_kill": asked, "samples_at_kill": n, "violations_after_kill": violations})
            assert landed, (asked, n)
            assert not violations, violations
        sim.clear_faults()
        d.start()
        with d.client() as c:
            rep = c.call("monitor.poll")  # waits for the start-up cycle, then one more: nothing new
        assert rep["ok"] and rep["inserted"] == 0, rep
        led = Ledger(d.state_dir / "ledger.sqlite")
        count = sample_count(led)
        cursors = {a["eval_cursor"] for a in led.list_agents()}
        led.close()
        violations = check_invariants(d.state_dir, sim_url=sim.url)
        record_result(reliability_out, "crash", {
            "kill_point": "polling", "seed": SEED, "kill": "final", "outcome": "completed",
            "samples": count, "expected_samples": agents * per_agent, "violations": violations,
            "daemon_crashes": 0})
        assert count == agents * per_agent and cursors == {f"e:{per_agent}"}
        assert not violations, violations
    finally:
        sim.close()


# -- inside a stage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageKill:
    """Kill the daemon while `stage` of a run of `kind` runs: `opens` says when the window opens
    (``running``: the worker started; ``progress``: it reported progress; ``checkpoint``: it saved a
    checkpoint), the kill comes a random `window` seconds later. The run gets the plan's stages up to and
    including `stage`, so each entry exercises one stage and what it resumes from."""

    name: str
    kind: str
    stage: str
    opens: str = "running"
    window: tuple[float, float] = (0.0, 1.0)
    params: dict = field(default_factory=dict)
    model_params: tuple[str, ...] = ()  # params set to the path of a small bootstrapped model
    ci: bool = True  # False: only with PR1_CRASH_TRAINING=1 (minutes of training on two busy cores)
    timeout_s: float = 240.0

    def stages(self) -> tuple[str, ...]:
        plan = PLANS[self.kind]
        return plan[: plan.index(self.stage) + 1]

    def missing(self) -> list[str]:
        return [s for s in self.stages() if not stage_available(s)]


_SFT = {"max_steps": 12, "checkpoint_every": 3, "batch_size": 4, "eval_per_tier": 0, "cpu": True,
        "max_records": 120, "threads": 1}
_RL = {"cpu": True, "rl": {"max_steps": 6, "checkpoint_every": 2, "max_completion_length": 20, "eval_per_tier": 2,
                           "generation_batch": 32, "micro_batch": 32, "threads": 1, "keep_better": False,
                           "curriculum": {"tiers": ["easy", "medium"], "accuracy_window": 32, "promote_accuracy": 0.5}}}
_BACKTEST = {"window": 0, "n_per_tier": 3, "batch_size": 3, "max_new_tokens": 24, "critic": False, "threads": 1,
             "cpu": True}
STAGE_KILLS = [
    StageKill("dataset build", "dataset", "dataset", "running", (0.1, 2.0)),
    StageKill("sft", "sft", "sft", "checkpoint", (0.0, 1.0), _SFT, ("model",)),
    StageKill("rl", "rl", "rl", "checkpoint", (0.0, 1.0), _RL, ("model",), ci=False, timeout_s=600),
    StageKill("backtest", "backtest", "backtest", "progress", (0.0, 1.0), _BACKTEST, ("model", "candidate"),
              ci=False, timeout_s=600),
]
TRAINING = os.environ.get("PR1_CRASH_TRAINING") == "1"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A barely trained tiny model: the training stages only need something that loads and trains."""
    pytest.importorskip("torch")
    from pr1d.train.model import PretrainConfig, bootstrap

    out = tmp_path_factory.mktemp("small_model")
    bootstrap(out, size="tiny", cfg=PretrainConfig(minutes=2, max_steps=10, batch_size=8, corpus_size=500,
                                                   mix={"easy": 1.0}, warmup_steps=2, threads=1), eval_per_tier=2)
    return out


def _stage_row(d, run_id: int, name: str) -> dict | None:
    with d.client() as c:
        run = c.call("runs.show", run=run_id)
    return next((s for s in run["stages"] if s["name"] == name), None)


def _window_open(st: dict | None, opens: str, after_attempt: int, seen: object) -> bool:
    if st is None or st["state"] != "running" or st["attempt"] <= after_attempt or not st.get("pid"):
        return False
    if opens == "running":
        return True
    value = st.get("progress") if opens == "progress" else st.get("checkpoint")
    return value is not None and value != seen


@pytest.mark.parametrize("point", [pytest.param(p, id=p.name.replace(" ", "-"), marks=pytest.mark.timeout(
    int(p.timeout_s * 4))) for p in STAGE_KILLS])
def test_kill_inside_a_stage(point, tmp_path, daemon_factory, reliability_out, request):  # noqa: F811
    why = None
    if point.missing():
        why = f"run kind {point.kind!r} needs stage(s) {', '.join(point.missing())}, not in this build yet"
    elif not point.ci and not TRAINING:
        why = "minutes of training on CPU: runs with PR1_CRASH_TRAINING=1"
    if why:
        record_result(reliability_out, "crash", {"kill_point": point.name, "skipped": why})
        pytest.skip(why)
    params = dict(point.params)
    for name in point.model_params:
        params[name] = str(request.getfixturevalue("small_model"))
    sim = Sim(tmp_path, "steady")
    try:
        sim.tick(400)  # ~600 gradebook entries at >= 0.9: two pages for the dataset stage
        # A slow gradebook keeps the dataset build open long enough to land the kill inside it.
        sim.post("/_sim/faults", {"kind": "latency", "seconds": 1.0, "rate": 1.0, "endpoints": ["gradebook"]})
        d = daemon_factory(extra_env=_env(sim))
        led = Ledger(d.state_dir / "ledger.sqlite")
        led.upsert_agents([{"id": "agent-000", "model": BASE_MODEL, "profile": "default"}])
        # Created as the trigger would, with this entry's stages (the kind's whole plan may not exist yet).
        run, _ = led.create_run("agent-000", point.kind, "tester", params=params, stages=list(point.stages()),
                                idempotency_key=f"crash-{point.name}", reason="crash-consistency kill point")
        led.close()
        rid = run["id"]
        rng = _rng(point.name)
        attempt, seen = 0, None
        for i in range(_kills(1)):
            d.start()
            deadline = time.monotonic() + point.timeout_s
            while not _window_open(st := _stage_row(d, rid, point.stage), point.opens, attempt, seen):
                assert time.monotonic() < deadline, f"{point.name}: window never opened: {st}"
                assert d.proc.poll() is None, d.stderr()
                time.sleep(0.05)
            delay = rng.uniform(*point.window)
            time.sleep(delay)
            _sigkill(d)
            st = _ledger_read(d.state_dir, lambda led: next(s for s in led.stages(rid) if s["name"] == point.stage))
            attempt, seen = st["attempt"], st.get("progress" if point.opens == "progress" else "checkpoint")
            violations = _after_kill(d)
            record_result(reliability_out, "crash", {
                "kill_point": point.name, "kind": point.kind, "stage": point.stage, "seed": SEED, "kill": i,
                "opens": point.opens, "delay_s": round(delay, 3), "landed": st["state"] == "running",
                "attempt": st["attempt"], "checkpoint": st.get("checkpoint"), "violations_after_kill": violations})
            assert st["state"] == "running", f"{point.name}: the kill missed the stage ({st['state']})"
            assert not violations, violations
        sim.clear_faults()
        d.start()
        # A client that lost its answer in the crash retries with the same key: the same run comes back.
        again = d.ctl_json("trigger", "agent-000", "--kind", "dataset", "--idempotency-key", f"crash-{point.name}") \
            if point.kind == "dataset" else None
        final = _wait_terminal(d, rid, point.timeout_s)
        stages = final["stages"]
        violations = check_invariants(d.state_dir, sim_url=sim.url)
        record_result(reliability_out, "crash", {
            "kill_point": point.name, "kind": point.kind, "stage": point.stage, "seed": SEED, "kill": "final",
            "outcome": final["state"], "completed": final["state"] in ("succeeded", "awaiting_approval"),
            "attempts": {s["name"]: s["attempt"] for s in stages}, "violations": violations, "daemon_crashes": 0})
        assert final["state"] in ("succeeded", "awaiting_approval"), (final["state"], final["reason"])
        assert not violations, violations
        if again is not None:
            assert again["created"] is False and again["run"]["id"] == rid
        with d.client() as c:
            assert [r["id"] for r in c.call("runs.list", limit=10)] == [rid]  # no second run appeared
        target = next(s for s in stages if s["name"] == point.stage)
        assert target["attempt"] == _kills(1) + 1, target
        if point.opens == "checkpoint":
            log = Path(target["log_path"]).read_text()
            assert "resumed from" in log, log[-2000:]  # training continued from its checkpoint
    finally:
        sim.close()


# -- between gate and approval, mid promote, mid rollback ------------------------------------------------


def _registry_setup(state_dir: Path, tmp: Path, agents: list[str]) -> dict[str, dict]:
    """Per agent: the base model as its initial deployment, and a candidate from a run awaiting approval
    (as the gate leaves it), written while the daemon is down, as registry_kit does for the registry tests."""
    led = Ledger(state_dir / "ledger.sqlite")
    led.upsert_agents([{"id": a, "model": BASE_MODEL, "profile": "default"} for a in agents])
    models = state_dir / "models"
    out = {}
    for i, agent in enumerate(agents):
        base = register_version(led, models, agent, make_model(tmp / f"src-{agent}-base", 0), served_as=BASE_MODEL,
                                profile="default")
        record_initial(led, models, agent, base["id"])
        run_id = awaiting_run(led, agent, expected=0.92)
        cand = register_version(led, models, agent, make_model(tmp / f"src-{agent}-cand", 10 + i), run_id=run_id,
                                parent_id=base["id"], policy={"branch_count": 2, "temperature": 0.7})
        out[agent] = {"run": run_id, "base": base["id"], "candidate": cand["id"]}
    led.close()
    return out


def _where(led: Ledger, agent: str, action: str) -> str:
    """Where in a promote/rollback the kill landed, read from the dead daemon's ledger."""
    newest = led.deployments(agent, limit=1)[0]
    if newest["action"] != action:
        return "before commit"
    return "after push" if newest["profile_pushed"] else "during push"


def _kill_while(d, args: tuple[str, ...], delay: float) -> subprocess.CompletedProcess:
    """Send a pr1ctl command, SIGKILL the daemon `delay` seconds later; the client's own answer is returned."""
    p = _ctl_async(d, *args)
    time.sleep(delay)
    _sigkill(d)
    out, err = p.communicate(timeout=30)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_kill_between_gate_and_approval_mid_promote_and_mid_rollback(tmp_path, daemon_factory, reliability_out):  # noqa: F811
    """Per agent, three kills: while its run awaits approval, during `approve` (the push made slow), during
    `rollback`. After each restart the operator finishes what the crash interrupted — approving again only
    if the approval never committed, rolling back again only if the rollback never committed — and the
    pointer, the ledger and the agent manager agree, with exactly one promotion per run."""
    n = _kills(2)
    agents = [f"agent-{i:03d}" for i in range(n)]
    sim = Sim(tmp_path, "steady", "--agents", str(max(3, n)))
    try:
        setup = _registry_setup(tmp_path / "state", tmp_path, agents)
        d = daemon_factory(tmp_path / "state", extra_env=_env(sim))
        rng = _rng("registry")

        def record(point: str, agent: str, i: int, delay: float, **extra) -> None:
            record_result(reliability_out, "crash", {"kill_point": point, "agent": agent, "seed": SEED, "kill": i,
                                                     "delay_s": round(delay, 3), **extra})

        def settled(point: str) -> list[str]:
            _wait_pushed(d)
            v = check_invariants(d.state_dir, sim_url=sim.url)
            assert not v, (point, v)
            return v

        d.start()
        for i, agent in enumerate(agents):
            s = setup[agent]
            # 1. Between gate and approval: the run waits for a person when the daemon dies.
            delay = rng.uniform(0.1, 1.0)
            time.sleep(delay)
            _sigkill(d)
            after = _after_kill(d)
            assert not after, after
            d.start()
            state = d.wait_run(s["run"], {"awaiting_approval"}, timeout=5)["state"]
            record("between gate and approval", agent, i, delay, outcome=state, completed=True,
                   violations_after_kill=after, violations=settled("between gate and approval"), daemon_crashes=0)

            # 2. Mid promote: the approval commits, then the profile push hangs on a slow agent manager.
            sim.post("/_sim/faults", {"kind": "latency", "seconds": PROFILE_LATENCY_S, "rate": 1.0,
                                      "endpoints": ["profile"]})
            delay = rng.uniform(0.0, PROFILE_LATENCY_S + 0.3)
            cp = _kill_while(d, ("approve", str(s["run"]), "--reason", "crash test"), delay)
            after = _after_kill(d)
            assert not after, after
            at_kill = _ledger_read(d.state_dir, lambda led, a=agent: _where(led, a, "promote"))
            d.start()
            # The operator looks: still awaiting approval means the approval never committed; approve again.
            if d.ctl_json("show", str(s["run"]))["state"] == "awaiting_approval":
                d.ctl("approve", str(s["run"]), "--reason", "retry after crash")
            state = d.wait_run(s["run"], {"promoted"}, timeout=10)["state"]
            record("mid promote", agent, i, delay, client_exit=cp.returncode, landed=at_kill,
                   outcome=state, completed=True, violations_after_kill=after, violations=settled("mid promote"),
                   daemon_crashes=0)
            assert sim.agent(agent)["model"] == s["candidate"]

            # 3. Mid rollback: the same window, on the emergency path.
            delay = rng.uniform(0.0, PROFILE_LATENCY_S + 0.3)
            cp = _kill_while(d, ("rollback", agent, "--reason", "crash test"), delay)
            after = _after_kill(d)
            assert not after, after
            at_kill = _ledger_read(d.state_dir, lambda led, a=agent: _where(led, a, "rollback"))
            d.start()
            # Rolled back already (the newest deployment says so)? Then done; else the operator reruns it.
            if d.ctl_json("deployments", agent)[0]["action"] != "rollback":
                d.ctl("rollback", agent, "--reason", "retry after crash")
            state = d.ctl_json("show", str(s["run"]))["state"]
            record("mid rollback", agent, i, delay, client_exit=cp.returncode, landed=at_kill,
                   outcome=state, completed=True, violations_after_kill=after, violations=settled("mid rollback"),
                   daemon_crashes=0)
            assert state == "rolled_back" and sim.agent(agent)["model"] == BASE_MODEL
            assert [x["action"] for x in d.ctl_json("deployments", agent)] == ["rollback", "promote", "initial"]
            sim.clear_faults()
    finally:
        sim.close()


# -- the checker itself -----------------------------------------------------------------------------------


def _sql(state: Path, sql: str, params: tuple = ()) -> None:
    import sqlite3

    db = sqlite3.connect(state / "ledger.sqlite")
    db.execute(sql, params)
    db.commit()
    db.close()


def _tamper_file(state: Path, agent: str, version: str) -> None:
    f = state / "models" / agent / version / "adapter_model.safetensors"
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))


def _pointer_ahead(state: Path, agent: str, version: str) -> None:
    from pr1d.registry.deploy import swap_pointer

    swap_pointer(state / "models" / agent, version)


def _promoted_without_deployment(state: Path, run: int) -> None:
    _sql(state, "UPDATE runs SET state = 'promoted' WHERE id = ?", (run,))
    _sql(state, "INSERT INTO audit (ts, actor, action, entity, entity_id, from_state, to_state) "
                "VALUES (0, 'x', 'transition', 'run', ?, 'awaiting_approval', 'promoted')", (str(run),))


def _duplicate_trigger(state: Path, run: int) -> None:
    _sql(state, "UPDATE runs SET trigger_id = 7 WHERE id = ?", (run,))
    _sql(state, "INSERT INTO runs (agent_id, kind, state, trigger_id, created_by, created_at, updated_at) "
                "VALUES ('agent-001', 'sft', 'failed', 7, 'x', 0, 0)")


def _stage_running_in_ended_run(state: Path, run: int) -> None:
    _sql(state, "INSERT INTO stages (run_id, seq, name, state, attempt) VALUES (?, 0, 'sft', 'running', 1)", (run,))


CORRUPTIONS = [
    ("illegal state", lambda st, s: _sql(st, "UPDATE runs SET state = 'bogus' WHERE id = ?", (s["run"],)),
     "illegal state"),
    ("state without its audit row", lambda st, s: _sql(st, "UPDATE runs SET state = 'failed' WHERE id = ?", (s["run"],)),
     "audit trail ends in awaiting_approval"),
    ("duplicated run", lambda st, s: _duplicate_trigger(st, s["run"]), "created 2 runs"),
    ("stage running in an ended run", lambda st, s: _stage_running_in_ended_run(st, s["run"]), "running while the run"),
    ("pointer ahead of the ledger", lambda st, s: _pointer_ahead(st, "agent-000", s["candidate"]), "pointer names"),
    ("promotion without deployment", lambda st, s: _promoted_without_deployment(st, s["run"]), "no promote deployment"),
    ("deployed files changed", lambda st, s: _tamper_file(st, "agent-000", s["base"]), "does not match its recorded"),
    ("torn ledger", lambda st, s: _tear(st), "integrity_check"),
]


def _tear(state: Path) -> None:
    f = state / "ledger.sqlite"
    data = bytearray(f.read_bytes())
    for off in range(4096, len(data), 4096):  # scribble over every page but the header
        data[off: off + 12] = b"\xa5" * 12  # b-tree page headers: the page type byte is first
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_invariant_checker_catches_each_violation(case, tmp_path):
    """The checker is worth its zero only if it says something when the state is wrong."""
    import shutil

    _name, corrupt, expect = case
    good = tmp_path / "good"
    setup = _registry_setup(good, tmp_path, ["agent-000"])["agent-000"]
    _ledger_read(good, lambda led: _checkpoint(led))
    assert check_invariants(good, require_pushed=False) == []
    bad = tmp_path / "bad"
    shutil.copytree(good, bad, symlinks=True)
    for f in bad.rglob("*"):  # the registry keeps versions read-only; the corruptions need to write
        if not f.is_symlink():
            f.chmod(0o755 if f.is_dir() else 0o644)
    (bad / "ledger.sqlite-wal").unlink(missing_ok=True)
    (bad / "ledger.sqlite-shm").unlink(missing_ok=True)
    corrupt(bad, setup)
    problems = check_invariants(bad, require_pushed=False)
    assert any(expect in p for p in problems), problems


def _checkpoint(led: Ledger) -> None:
    with led.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def test_agent_manager_that_forgot_a_promotion_gets_it_pushed_again(tmp_path, daemon_factory):
    """The agent manager restarts without its state (or someone edits it by hand) after it acknowledged a
    promotion: the next poll sees it list the old model, audits the drift and pushes the deployment again."""
    sim = Sim(tmp_path, "steady")
    try:
        state = tmp_path / "state"
        state.mkdir()
        s = _registry_setup(state, tmp_path, ["agent-000"])["agent-000"]
        d = daemon_factory(state, extra_env=_env(sim, monitor=True)).start()
        d.ctl("approve", str(s["run"]), "--reason", "drift test")
        assert sim.agent("agent-000")["model"] == s["candidate"]
        with d.client() as c:
            assert c.call("monitor.poll")["agent_manager_drift"] == 0  # in agreement: nothing to do
            sim.post("/v1/agents/agent-000/profile", {"profile": "default", "model_version": BASE_MODEL, "policy": {}})
            assert any("agent manager runs" in p for p in check_invariants(state, sim_url=sim.url))
            assert c.call("monitor.poll")["agent_manager_drift"] == 1
        deadline = time.monotonic() + 30
        while sim.agent("agent-000")["model"] != s["candidate"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sim.agent("agent-000")["model"] == s["candidate"]
        assert [h["model_version"] for h in sim.history("agent-000")][-3:] == [s["candidate"], BASE_MODEL,
                                                                                s["candidate"]]
        deadline = time.monotonic() + 10
        while check_invariants(state, sim_url=sim.url) and time.monotonic() < deadline:
            time.sleep(0.1)  # the acknowledgement commits just after the agent manager applies the push
        assert check_invariants(state, sim_url=sim.url) == []
        led = Ledger(state / "ledger.sqlite")
        try:
            (audit,) = [a for a in led.audit_log(limit=50) if a["action"] == "agent_manager_drift"]
        finally:
            led.close()
        assert f"reported {BASE_MODEL}/default" in audit["reason"]
        assert d.ctl_json("status")["registry"]["alerts"] == []
        assert "agent manager runs" in d.stderr() and "pushing it again" in d.stderr()
    finally:
        sim.close()


def test_invariant_checker_sees_the_agent_manager_and_orphan_workers(tmp_path):
    sim = Sim(tmp_path, "steady")
    try:
        state = tmp_path / "state"
        s = _registry_setup(state, tmp_path, ["agent-000"])["agent-000"]
        assert check_invariants(state, sim_url=sim.url) == []
        # The agent manager runs something the ledger never deployed.
        sim.post("/v1/agents/agent-000/profile", {"profile": "default", "model_version": s["candidate"], "policy": {}})
        assert any("agent manager runs" in p for p in check_invariants(state, sim_url=sim.url))
    finally:
        sim.close()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "pr1d.stages.sleep",
                               str(state / "runs" / "1" / "spec.json")])
    try:
        # Popen returns after fork, maybe before exec: until then /proc shows pytest's command line, and
        # the checker (rightly) sees no worker. Wait until the worker is really there.
        deadline = time.monotonic() + 30
        while worker.pid not in live_workers(state) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.pid in live_workers(state)
        problems = check_invariants(state, daemon_running=False, worker_grace_s=0.5, deployments=False)
        assert any(str(worker.pid) in p for p in problems), problems
    finally:
        worker.kill()
        worker.wait()
