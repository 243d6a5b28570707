"""The monitor end to end: `pr1d sim` on loopback, `pr1d serve --burst` poll cycles, triggers in the ledger."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pr1d.ledger import store
from pr1d.ledger.samples import sample_count
from pr1d.ledger.store import Ledger
from tests.conftest import BIN, pr1_env


class Sim:
    def __init__(self, tmp: Path, scenario: str, *extra: str):
        self.port_file = tmp / f"sim-{scenario}.port"
        self.proc = subprocess.Popen(
            [str(BIN / "pr1d"), "sim", "--port", "0", "--port-file", str(self.port_file), "--scenario", scenario,
             "--time-scale", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=open(tmp / f"sim-{scenario}.log", "ab"), env=pr1_env())
        deadline = time.monotonic() + 15
        while not self.port_file.exists():
            assert self.proc.poll() is None, (tmp / f"sim-{scenario}.log").read_text()
            assert time.monotonic() < deadline, "sim did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def post(self, path: str, body: dict | None = None, method: str = "POST") -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def tick(self, n: int) -> None:
        self.post("/_sim/tick", {"n": n})

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture
def sim_factory(tmp_path):
    sims: list[Sim] = []

    def make(scenario: str, *extra: str) -> Sim:
        s = Sim(tmp_path, scenario, *extra)
        sims.append(s)
        return s

    yield make
    for s in sims:
        s.close()


def burst(state: Path, sim: Sim, **env: str) -> subprocess.CompletedProcess:
    cp = subprocess.run([str(BIN / "pr1d"), "serve", "--state-dir", str(state), "--burst"], capture_output=True,
                        text=True, timeout=120,
                        env=pr1_env(PR1_MONITOR__ENABLED="true", PR1_SCORING__BASE_URL=sim.url,
                                    PR1_SCORING__BACKOFF_BASE_S="0.01", PR1_SCORING__TIMEOUT_S="2.0", **env))
    assert cp.returncode == 0, cp.stderr
    return cp


def triggers(state: Path) -> list[dict]:
    led = Ledger(state / "ledger.sqlite")
    try:
        return list(reversed(store.triggers(led, limit=10_000)))
    finally:
        led.close()


EXPECTED = {"slow-degradation": "sft", "sudden-drift": "full", "flaky": "rl", "compliance-breach": "targeted-sft"}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_scenario_yields_its_job_kind(scenario, sim_factory, tmp_path):
    sim = sim_factory(scenario)
    state = tmp_path / "state"
    kinds: list[str] = []
    for _cycle in range(12):  # K = 12 poll cycles of 40 evaluations each
        sim.tick(40)
        burst(state, sim)
        kinds = [t["job_kind"] for t in triggers(state)]
        if kinds:
            break
    assert kinds, f"{scenario}: no trigger within 12 cycles"
    # the cycle in which the first trigger fired yields exactly the expected job kind and no other
    assert set(kinds) == {EXPECTED[scenario]}, kinds
    first = triggers(state)[0]
    ev = first["evidence"]
    assert ev["primary"]["signal"] == first["signal"] and ev["precedence"] and ev["primary"]["evidence"]


FAILING_10 = """\
description = "steady agents, but failing 10% of their evaluations (bar: max_fail_rate 8%)"
seed = 5

[behaviours.failing]
mean = 0.91
sd = 0.03
fail_rate = 0.10

[fleet]
count = 3
mix = { failing = 1 }
"""


def test_a_sustained_fail_rate_just_above_the_bar_gets_rl(sim_factory, tmp_path):
    # The window's confidence bound needs ~18% fails in 50 to fire; the sequential test accumulates the
    # evidence of a steady 10% across poll cycles (its state lives in the ledger between daemon runs).
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "failing-10.toml").write_text(FAILING_10)
    sim = sim_factory("failing-10", "--scenarios-dir", str(tmp_path / "scenarios"))
    state = tmp_path / "state"
    agents: set[str] = set()
    for _cycle in range(15):  # 15 cycles x 40 evaluations = 600: twice the p95 delay at 10%
        sim.tick(40)
        burst(state, sim)
        agents = {t["agent_id"] for t in triggers(state)}
        if len(agents) == 3:
            break
    assert len(agents) == 3, triggers(state)
    ts = triggers(state)
    assert {t["job_kind"] for t in ts} == {"rl"} and {t["signal"] for t in ts} == {"reliability"}
    assert any(t["evidence"]["primary"]["evidence"]["fail_sequential_state"] == "firing" for t in ts)
    led = Ledger(state / "ledger.sqlite")
    with led.engine.connect() as conn:  # every sample is tagged with the model the agents listing gave
        assert conn.exec_driver_sql("SELECT DISTINCT model_version FROM score_samples").all() == [("tiny-gsm-v1",)]
    led.close()


def test_steady_yields_nothing_over_a_long_run(sim_factory, tmp_path):
    sim = sim_factory("steady")
    state = tmp_path / "state"
    for _ in range(8):
        sim.tick(250)
        burst(state, sim)
    assert triggers(state) == []
    led = Ledger(state / "ledger.sqlite")
    assert sample_count(led) == 8 * 250 * len(led.list_agents())
    led.close()


FAULTS = [
    {"kind": "latency", "seconds": 0.3, "rate": 1.0},
    {"kind": "http_error", "rate": 1.0, "status": 503, "retry_after": 0},
    {"kind": "timeout", "rate": 1.0, "seconds": 3},
    {"kind": "reset", "rate": 1.0},
    {"kind": "malformed_json", "rate": 1.0},
    {"kind": "bad_fields", "rate": 1.0},
    {"kind": "duplicates", "rate": 1.0},
    {"kind": "out_of_order", "rate": 1.0},
    {"kind": "cursor_backwards", "rate": 1.0},
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f["kind"])
def test_faults_never_trigger_show_in_status_and_recover(fault, sim_factory, tmp_path):
    sim = sim_factory("steady")
    state = tmp_path / "state"
    sim.tick(60)
    burst(state, sim)  # healthy baseline
    sim.post("/_sim/faults", {"faults": [dict(fault, endpoints=["evaluations"])]})
    for _ in range(3):
        sim.tick(40)
        burst(state, sim, PR1_SCORING__MAX_ATTEMPTS="2")
    led = Ledger(state / "ledger.sqlite")
    agents = led.list_agents()
    health = [a["health"] for a in agents]
    led.close()
    assert triggers(state) == []
    if fault["kind"] in ("http_error", "timeout", "reset", "malformed_json"):
        assert all(h["consecutive_failures"] >= 1 and h["last_error"] for h in health), health
    if fault["kind"] == "bad_fields":
        assert all(h["invalid_total"] for h in health), health
    sim.post("/_sim/faults", method="DELETE")
    sim.tick(40)
    burst(state, sim)
    led = Ledger(state / "ledger.sqlite")
    after = led.list_agents()
    n = sample_count(led)
    led.close()
    assert all(a["health"]["consecutive_failures"] == 0 for a in after)
    assert triggers(state) == []
    # every evaluation the sim made is in the ledger exactly once (bad-field items are skipped by design)
    if fault["kind"] != "bad_fields":
        assert n == (60 + 3 * 40 + 40) * len(after)


def test_kill_mid_poll_no_duplicates_and_cursors_resume(sim_factory, tmp_path):
    sim = sim_factory("steady", "--agents", "200")
    state = tmp_path / "state"
    sim.tick(30)
    burst(state, sim)
    sim.tick(30)
    sim.post("/_sim/faults", {"faults": [{"kind": "latency", "seconds": 0.05, "rate": 1.0, "endpoints": ["evaluations"]}]})
    env = pr1_env(PR1_MONITOR__ENABLED="true", PR1_SCORING__BASE_URL=sim.url, PR1_SCORING__CONCURRENCY="4")
    p = subprocess.Popen([str(BIN / "pr1d"), "serve", "--state-dir", str(state), "--burst"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # mid-poll: 200 agents x 50 ms / 4 in flight = ~2.5 s of polling
    p.send_signal(signal.SIGKILL)
    p.wait()
    sim.post("/_sim/faults", method="DELETE")
    burst(state, sim)
    led = Ledger(state / "ledger.sqlite")
    assert sample_count(led) == 60 * 200
    assert led.integrity_check() == "ok"
    assert {a["eval_cursor"] for a in led.list_agents()} == {"e:60"}
    led.close()


def test_bearer_token_from_secret_file_never_lands_in_state(sim_factory, tmp_path):
    secret = "tok-" + "9f3a" * 8
    sim = sim_factory("compliance-breach", "--token", secret)
    state = tmp_path / "state"
    sim_tick = urllib.request.Request(sim.url + "/_sim/tick", data=b'{"n": 120}', method="POST",
                                      headers={"Authorization": f"Bearer {secret}"})
    urllib.request.urlopen(sim_tick, timeout=10).read()
    # wrong token: a clear 401 in health, no samples, no triggers
    burst(state, sim, PR1_SCORING_TOKEN="wrong")
    led = Ledger(state / "ledger.sqlite")
    assert sample_count(led) == 0
    led.close()
    assert triggers(state) == []
    # the right one, from a file named in config
    tok = tmp_path / "token"
    tok.write_text(secret + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[scoring]\ntoken_file = "{tok}"\ntoken_env = "NO_SUCH_VAR"\n')
    cp = subprocess.run([str(BIN / "pr1d"), "serve", "--state-dir", str(state), "--burst", "--config", str(cfg)],
                        capture_output=True, text=True, timeout=120,
                        env=pr1_env(PR1_MONITOR__ENABLED="true", PR1_SCORING__BASE_URL=sim.url))
    assert cp.returncode == 0, cp.stderr
    assert [t["job_kind"] for t in triggers(state)] == ["targeted-sft"] * 3
    # the secret appears nowhere in the state dir or the daemon's output
    for f in state.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert secret not in cp.stderr and secret not in cp.stdout


def test_status_shows_scoring_health(sim_factory, daemon_factory, tmp_path):
    sim = sim_factory("steady")
    d = daemon_factory(extra_env={"PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url}).start()
    deadline = time.monotonic() + 20
    while d.ctl_json("status")["monitor"]["last_cycle"] is None:  # the start-up poll
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sim.tick(10)
    with d.client() as c:
        rep = c.call("monitor.poll")
    assert rep["ok"] and rep["inserted"] == 10 * rep["agents"]
    st = d.ctl_json("status")["monitor"]
    assert st["enabled"] and st["endpoints"]["evaluations"]["consecutive_failures"] == 0
    out = d.ctl("status").stdout
    assert "scoring API endpoints" in out and "evaluations" in out
    agents = d.ctl_json("agents")
    assert all(a["health"]["consecutive_failures"] == 0 for a in agents)
