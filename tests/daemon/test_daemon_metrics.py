"""The daemon's own /metrics (pr1d/daemon/metrics.py): the pure parts by tables, then a real daemon polling `pr1d sim`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pr1d.daemon.metrics import (
    DaemonMetrics,
    LedgerGauges,
    read_ledger_gauges,
    render,
)
from pr1d.ledger.store import Ledger
from pr1d.monitor.histogram import Histogram
from pr1d.monitor.poller import HTTP_BUCKETS, EndpointHealth
from tests.conftest import add_agents
from tests.monitor.test_monitor_e2e import Sim


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(page: dict, name: str, **labels: str) -> float:
    return page[(name, tuple(sorted(labels.items())))]


# -- Histogram -----------------------------------------------------------------------------------------

HIST_CASES = [
    # bounds, observations, cumulative counts per bound then +Inf, sum
    ((1.0, 2.0), [], [0, 0, 0], 0.0),
    ((1.0, 2.0), [0.0, 1.0], [2, 2, 2], 1.0),  # a value equal to a bound is in that bound's bucket (le)
    ((1.0, 2.0), [1.5, 2.0000001, 99.0], [0, 1, 3], 102.5000001),
    ((0.5,), [0.1, 0.2, 0.7], [2, 3], 1.0),
]


@pytest.mark.parametrize(("bounds", "obs", "cumulative", "total"), HIST_CASES)
def test_histogram_buckets_are_cumulative(bounds, obs, cumulative, total):
    h = Histogram(bounds)
    for v in obs:
        h.observe(v)
    assert h.cumulative() == list(zip((*bounds, math.inf), cumulative, strict=True))
    assert h.count == len(obs) and h.sum == pytest.approx(total)


@pytest.mark.parametrize("bounds", [(), (2.0, 1.0), (1.0, 1.0), (1.0, math.inf), (math.nan,)])
def test_histogram_refuses_bad_bounds(bounds):
    with pytest.raises(ValueError, match="finite, distinct and increasing"):
        Histogram(bounds)


@pytest.mark.parametrize("value", [-0.001, math.nan, math.inf])
def test_histogram_refuses_bad_observations(value):
    with pytest.raises(ValueError, match="finite number >= 0"):
        Histogram((1.0,)).observe(value)


# -- DaemonMetrics -----------------------------------------------------------------------------------

POLL_CASES = [
    # reports, then expected (ok, failed, fetched, ingested, agent_errors, triggers, invalid, agents_listed)
    ([], (0, 0, 0, 0, 0, 0, {}, None)),
    ([{"ok": True, "duration_s": 0.2, "agents": 3, "fetched": 10, "inserted": 8, "agent_errors": 1,
       "triggers": 2, "invalid": {"invalid status": 2}}],
     (1, 0, 10, 8, 1, 2, {"invalid status": 2}, 3)),
    # A failed cycle (the agents listing failed) counts, keeps the last listing and ingests nothing.
    ([{"ok": True, "duration_s": 0.2, "agents": 3, "fetched": 5, "inserted": 5, "invalid": {"missing or invalid ts": 1}},
      {"ok": False, "duration_s": 1.5, "error": "agents: HTTP 500 (after 2 attempts)"},
      {"ok": True, "duration_s": 0.1, "agents": 4, "fetched": 1, "inserted": 0, "invalid": {"missing or invalid ts": 2}}],
     (2, 1, 6, 5, 0, 0, {"missing or invalid ts": 3}, 4)),
]


@pytest.mark.parametrize(("reports", "expected"), POLL_CASES)
def test_poll_cycles_accumulate(reports, expected):
    m = DaemonMetrics(started=0.0)
    for i, r in enumerate(reports):
        m.poll_cycle(r, now=10.0 + i)
    got = (m.poll_cycles["ok"], m.poll_cycles["failed"], m.evaluations_fetched, m.evaluations_ingested,
           m.agent_errors, m.triggers, m.evaluations_invalid, m.agents_listed)
    assert got == expected
    assert m.poll_seconds.count == len(reports)
    assert m.last_poll == (10.0 + len(reports) - 1 if reports else None)


def test_stage_results_exist_from_the_start_and_count():
    m = DaemonMetrics()
    assert m.stage_results[("sft", "failed")] == 0 and m.stage_results[("gate", "succeeded")] == 0
    m.stage_finished("sft", "failed", 12.0)
    m.stage_finished("sft", "succeeded", 30.0)
    m.stage_finished("custom", "failed", 1.0)  # a stage no plan names still counts
    assert m.stage_results[("sft", "failed")] == 1 and m.stage_results[("custom", "failed")] == 1
    assert m.stage_seconds["sft"].count == 2 and m.stage_seconds["sft"].sum == 42.0


# -- render --------------------------------------------------------------------------------------------

AGE_CASES = [
    # last_tick, last_poll, last_poll_ok, monitor -> loop age, poll age, poll-ok age (None: no sample)
    (None, None, None, True, 100.0, 100.0, 100.0),  # nothing yet: counted from the start (t=0)
    (99.5, 40.0, 10.0, True, 0.5, 60.0, 90.0),
    (99.5, None, None, False, 0.5, None, None),  # monitor off: a daemon told not to poll is never late
]


@pytest.mark.parametrize(("tick", "poll", "poll_ok", "monitor", "loop_age", "poll_age", "ok_age"), AGE_CASES)
def test_liveness_ages(tick, poll, poll_ok, monitor, loop_age, poll_age, ok_age):
    m = DaemonMetrics(started=0.0, last_tick=tick, last_poll=poll, last_poll_ok=poll_ok)
    page = samples(render(m, LedgerGauges(), {}, monitor=monitor, now=5000.0, now_mono=100.0).decode())
    assert one(page, "pr1d_loop_tick_age_seconds") == pytest.approx(loop_age)
    assert page.get(("pr1d_poll_cycle_age_seconds", ())) == poll_age
    assert page.get(("pr1d_poll_success_age_seconds", ())) == ok_age
    assert one(page, "pr1d_start_time_seconds") == pytest.approx(4900.0)
    assert one(page, "pr1d_monitor_enabled") == (1.0 if monitor else 0.0)


def test_endpoint_health_becomes_counters_and_a_latency_histogram():
    h = EndpointHealth()
    for seconds, ok in ((0.004, True), (0.3, False), (2.0, False), (0.02, True)):
        h.observe(seconds)
        if ok:
            h.ok()
        else:
            h.fail("HTTP 503")
    h.retries = 1
    page = samples(render(DaemonMetrics(), LedgerGauges(), {"evaluations": h}, monitor=True).decode())
    ev = {"endpoint": "evaluations"}
    assert one(page, "pr1d_scoring_requests_total", **ev) == 4
    assert one(page, "pr1d_scoring_request_errors_total", **ev) == 2
    assert one(page, "pr1d_scoring_retries_total", **ev) == 1
    assert one(page, "pr1d_scoring_consecutive_failures", **ev) == 0  # the last call succeeded
    assert one(page, "pr1d_scoring_request_duration_seconds_count", **ev) == 4
    assert one(page, "pr1d_scoring_request_duration_seconds_bucket", **ev, le="0.005") == 1
    assert one(page, "pr1d_scoring_request_duration_seconds_bucket", **ev, le="0.5") == 3
    assert one(page, "pr1d_scoring_request_duration_seconds_sum", **ev) == pytest.approx(2.324)
    # Endpoints not called yet are there at 0, so that the first error is an increase Prometheus sees.
    assert one(page, "pr1d_scoring_request_errors_total", endpoint="agents") == 0
    assert "latency" not in h.to_dict() and h.to_dict()["successes"] == 2  # status stays JSON
    assert len(h.latency.bounds) == len(HTTP_BUCKETS)


def test_ledger_gauges_render_and_an_unreadable_ledger_says_so():
    g = LedgerGauges(runs_by_state={"queued": 3, "awaiting_approval": 2}, oldest_awaiting_approval_at=1000.0,
                     pushes_pending=2, pushes_failing=1, oldest_push_pending_at=4000.0)
    page = samples(render(DaemonMetrics(), g, {}, monitor=False, running_stages=1, now=5000.0).decode())
    assert one(page, "pr1d_runs", state="queued") == 3 and one(page, "pr1d_runs", state="failed") == 0
    assert one(page, "pr1d_queue_depth") == 3
    assert one(page, "pr1d_awaiting_approval_oldest_age_seconds") == 4000.0
    assert one(page, "pr1d_profile_pushes_pending") == 2 and one(page, "pr1d_profile_pushes_failing") == 1
    assert one(page, "pr1d_profile_push_pending_oldest_age_seconds") == 1000.0
    assert one(page, "pr1d_stages_running") == 1 and one(page, "pr1d_ledger_readable") == 1
    bad = samples(render(DaemonMetrics(), LedgerGauges(ok=False), {}, monitor=False).decode())
    assert one(bad, "pr1d_ledger_readable") == 0
    assert not [k for k in bad if k[0] in ("pr1d_runs", "pr1d_queue_depth", "pr1d_profile_pushes_pending")]


# -- read_ledger_gauges on a real ledger ------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.upsert_agents([{"id": a, "model": "base-v0", "profile": "default"} for a in ("a1", "a2", "a3", "a4")])
    yield led
    led.close()


def _run(led: Ledger, agent: str, *path: str, finished_at: float | None = None) -> int:
    run, _ = led.create_run(agent, "noop", "tester", stages=[])
    for dst in path:
        led.transition_run(run["id"], dst, "daemon", "test")
    if finished_at is not None:
        with led.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE runs SET finished_at = ? WHERE id = ?", (finished_at, run["id"]))
    return run["id"]


def _deployment(led: Ledger, agent: str, ts: float, pushed: bool, error: str | None = None) -> None:
    with led.engine.begin() as conn:
        dep = conn.exec_driver_sql(
            "INSERT INTO deployments (agent_id, version_id, action, ts, actor, profile_pushed) "
            "VALUES (?, 'v', 'promote', ?, 'tester', ?)", (agent, ts, pushed)).lastrowid
        conn.exec_driver_sql("INSERT INTO deployment_state (deployment_id, agent_id, version_id, push_attempts, "
                             "push_error) VALUES (?, ?, 'v', 1, ?)", (dep, agent, error))


def test_read_ledger_gauges_from_a_real_ledger(ledger):
    assert read_ledger_gauges(ledger) == LedgerGauges()  # empty: nothing waits, nothing is pending
    _run(ledger, "a1")  # queued
    _run(ledger, "a2", "running", "awaiting_approval", finished_at=2000.0)
    _run(ledger, "a3", "running", "awaiting_approval", finished_at=1500.0)
    _run(ledger, "a4", "running", "failed", finished_at=100.0)  # older, but not waiting for anyone
    _deployment(ledger, "a1", 50.0, pushed=False, error="superseded by deployment 2")  # older: not pending
    _deployment(ledger, "a1", 300.0, pushed=False)
    _deployment(ledger, "a2", 200.0, pushed=False, error="HTTP 503")
    _deployment(ledger, "a3", 10.0, pushed=True)
    g = read_ledger_gauges(ledger)
    assert dict(g.runs_by_state) == {"queued": 1, "awaiting_approval": 2, "failed": 1}
    assert g.oldest_awaiting_approval_at == 1500.0
    assert (g.pushes_pending, g.pushes_failing, g.oldest_push_pending_at) == (2, 1, 200.0)


# -- a real daemon polling `pr1d sim` ---------------------------------------------------------------------


@pytest.fixture
def sim(tmp_path: Path):
    s = Sim(tmp_path, "steady")
    yield s
    s.close()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return samples(r.text)


def test_a_real_daemon_counts_polls_errors_stages_and_waiting_runs(daemon_factory, state_dir, sim):
    # A run that has awaited approval for an hour, left by an earlier daemon.
    add_agents(state_dir, "old-agent")
    led = Ledger(state_dir / "ledger.sqlite")
    _run(led, "old-agent", "running", "awaiting_approval", finished_at=time.time() - 3600)
    led.close()
    d = daemon_factory(state_dir, extra_env={
        "PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url, "PR1_SCORING__BACKOFF_BASE_S": "0.01",
        "PR1_SCORING__TIMEOUT_S": "2.0", "PR1_SCORING__MAX_ATTEMPTS": "2",
        "PR1_SCHEDULER__POLL_INTERVAL_S": "3600",  # the start's poll, then only the ones this test asks for
    }).start()
    url = d.ctl_json("status")["scoreboard"]["url"]
    deadline = time.monotonic() + 30
    while d.ctl_json("status")["monitor"]["last_cycle"] is None:  # the start's poll: done before we count
        assert time.monotonic() < deadline, "the daemon's first poll cycle never ended"
        time.sleep(0.1)
    sim.tick(20)
    with d.client() as c:
        first = c.call("monitor.poll")
    assert first["ok"] and first["inserted"] > 0
    page = scrape(url)
    # KPIs and daemon health come from one scrape target.
    assert any(k[0] == "pr1_version_current" for k in page) and one(page, "pr1d_build_info", version=d.ctl_json(
        "status")["version"]) == 1
    assert one(page, "pr1d_poll_cycles_total", result="ok") >= 1
    assert one(page, "pr1d_evaluations_ingested_total") >= first["inserted"]
    assert one(page, "pr1d_agents_listed") == first["agents"]
    for ep, n in (("agents", 1), ("evaluations", first["agents"])):
        assert one(page, "pr1d_scoring_requests_total", endpoint=ep) >= n
        assert one(page, "pr1d_scoring_request_errors_total", endpoint=ep) == 0
        assert one(page, "pr1d_scoring_request_duration_seconds_count", endpoint=ep) >= n
    assert one(page, "pr1d_poll_success_age_seconds") < 30 and one(page, "pr1d_loop_tick_age_seconds") < 5
    assert one(page, "pr1d_runs", state="awaiting_approval") == 1
    assert 3500 < one(page, "pr1d_awaiting_approval_oldest_age_seconds") < 4000

    # The counters move with the next cycle.
    sim.tick(10)
    with d.client() as c:
        second = c.call("monitor.poll")
    after = scrape(url)
    assert one(after, "pr1d_poll_cycles_total", result="ok") == one(page, "pr1d_poll_cycles_total", result="ok") + 1
    assert (one(after, "pr1d_evaluations_ingested_total")
            == one(page, "pr1d_evaluations_ingested_total") + second["inserted"]) and second["inserted"] > 0

    # A failing endpoint: every evaluations request fails (2 attempts per agent); the agents still list.
    sim.post("/_sim/faults", {"kind": "http_error", "status": 500, "endpoints": ["evaluations"]})
    with d.client() as c:
        third = c.call("monitor.poll")
    assert third["ok"] and third["agent_errors"] == third["agents"]
    bad = scrape(url)
    ev = {"endpoint": "evaluations"}
    assert (one(bad, "pr1d_scoring_request_errors_total", **ev)
            == one(after, "pr1d_scoring_request_errors_total", **ev) + 2 * third["agents"])
    assert one(bad, "pr1d_scoring_retries_total", **ev) >= third["agents"]
    assert one(bad, "pr1d_scoring_consecutive_failures", **ev) >= 1
    assert one(bad, "pr1d_poll_agent_errors_total") == one(after, "pr1d_poll_agent_errors_total") + third["agents"]
    assert one(bad, "pr1d_scoring_request_errors_total", endpoint="agents") == 0
    # The agents listing failing too: the cycle fails and says so.
    sim.post("/_sim/faults", {"kind": "http_error", "status": 503, "endpoints": ["agents"]})
    with d.client() as c:
        assert not c.call("monitor.poll")["ok"]
    down = scrape(url)
    assert one(down, "pr1d_poll_cycles_total", result="failed") == one(bad, "pr1d_poll_cycles_total", result="failed") + 1
    assert one(down, "pr1d_scoring_consecutive_failures", endpoint="agents") == 1

    # Stage durations and failures, by stage name.
    agents = [a["id"] for a in d.ctl_json("agents") if a["id"] != "old-agent"]
    ok_run = d.ctl_json("trigger", agents[0], "--kind", "noop")["run"]["id"]
    bad_run = d.ctl_json("trigger", agents[1], "--kind", "sleep", "--param", "fail_at_step=1")["run"]["id"]
    assert d.wait_run(ok_run, {"succeeded", "failed"})["state"] == "succeeded"
    assert d.wait_run(bad_run, {"succeeded", "failed"})["state"] == "failed"
    st = scrape(url)
    assert one(st, "pr1d_stages_finished_total", stage="noop", state="succeeded") == 1
    assert one(st, "pr1d_stages_finished_total", stage="sleep", state="failed") == 1
    assert one(st, "pr1d_stages_finished_total", stage="sft", state="failed") == 0
    assert one(st, "pr1d_stage_duration_seconds_count", stage="noop") == 1
    assert one(st, "pr1d_stage_duration_seconds_sum", stage="sleep") > 0
    assert one(st, "pr1d_runs", state="failed") == 1 and one(st, "pr1d_queue_depth") == 0
