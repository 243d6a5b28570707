"""ParallelScoreboard: KPIs from the ledger (fed by a real `pr1d sim`), /metrics, the selector push, alerts."""

from __future__ import annotations

import json

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from registry_kit import (  # noqa: F401 (fixtures)
    BASE_MODEL,
    awaiting_run,
    ingest,
    ledger_fixture,
    make_model,
    models_fixture,
    sim_fixture,
)

from pr1d.registry.approvals import approve
from pr1d.registry.deploy import record_initial
from pr1d.registry.push import HttpPusher
from pr1d.registry.versions import register_version
from pr1d.scoreboard import (
    ScoreboardConfig,
    ScoreboardThresholds,
    SelectorPushError,
    compute_kpis,
    escalations,
    push_to_selector,
    render_metrics,
    start_metrics_server,
)

AGENT = "agent-000"
RECORDED = {"eval.path_diversity": 0.41, "eval.consensus_rate": 0.83, "eval.parallel_ratio": 0.97,
            "eval.format_adherence": 0.99}
CFG = ScoreboardConfig(score_window=50, trend_min_samples=10, metrics_port=0)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def promoted(sim, ledger, models, tmp_path):
    """agent-000: base model in service, then a candidate with recorded eval KPIs promoted; grades on both."""
    sim.tick(100)
    ingest(ledger, sim)
    base = register_version(ledger, models, AGENT, make_model(tmp_path / "base", 0), served_as=BASE_MODEL)
    record_initial(ledger, models, AGENT, base["id"])
    run_id = awaiting_run(ledger, AGENT, expected=0.92)
    # the evaluation stage reports each KPI, possibly several times: the last value counts
    ledger.record_metrics(run_id, None, [(k, 0, v / 2) for k, v in RECORDED.items()])
    ledger.record_metrics(run_id, None, [(k, 1, v) for k, v in RECORDED.items()])
    v1 = register_version(ledger, models, AGENT, make_model(tmp_path / "cand", 1), run_id=run_id)
    res = approve(ledger, models, run_id, "alice", "ok", pusher=HttpPusher(sim.url))
    sim.tick(60)
    ingest(ledger, sim)
    return {"base": base, "v1": v1, "run": run_id, "since": res.deployment["since_ts"]}


def _ledger_mean(ledger, agent, lo, hi, n) -> float:
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT weighted_score FROM score_samples WHERE agent_id = ? AND ts > ? AND ts <= ? AND status != 'error' "
            "ORDER BY ts DESC LIMIT ?", (agent, lo, hi, n)).all()
    return sum(r[0] for r in rows) / len(rows)


def test_metrics_parse_and_match_the_recorded_kpis(ledger, promoted):
    kpis = compute_kpis(ledger, CFG)
    a = kpis["agents"][AGENT]
    assert a["current_version"] == promoted["v1"]["id"]
    assert (a["runs"], a["promotions"], a["rollbacks"], a["push_pending"]) == (1, 1, 0, False)
    m = samples(render_metrics(kpis).decode())
    v1 = (("agent", AGENT), ("version", promoted["v1"]["id"]))
    base = (("agent", AGENT), ("version", promoted["base"]["id"]))
    for metric, value in RECORDED.items():
        assert m[("pr1_" + metric.removeprefix("eval."), v1)] == pytest.approx(value)
        assert ("pr1_" + metric.removeprefix("eval."), base) not in m  # never measured: absent, not 0
    # live score of each version over its own service period, as the ledger holds it
    since = promoted["since"]
    assert m[("pr1_weighted_score", v1)] == pytest.approx(_ledger_mean(ledger, AGENT, since, 1e12, 50))
    assert m[("pr1_weighted_score", base)] == pytest.approx(_ledger_mean(ledger, AGENT, -1e12, since, 50))
    assert m[("pr1_weighted_score_samples", v1)] == 50
    assert m[("pr1_weighted_score", v1)] > 0.85  # the sim grades the promoted version as recovered
    assert (m[("pr1_version_current", v1)], m[("pr1_version_current", base)]) == (1.0, 0.0)
    assert m[("pr1_promotions_total", (("agent", AGENT),))] == 1
    assert m[("pr1_runs_total", (("agent", AGENT),))] == 1
    assert m[("pr1_rollbacks_total", (("agent", AGENT),))] == 0
    assert m[("pr1_profile_push_pending", (("agent", AGENT),))] == 0
    # agents without a deployment are listed under the model the platform reports
    assert m[("pr1_weighted_score_samples", (("agent", "agent-001"), ("version", BASE_MODEL)))] == 50
    assert m[("pr1_kpis_generated_timestamp_seconds", ())] == pytest.approx(kpis["generated_at"])


def test_trend_follows_the_sims_degradation(sim, ledger):
    # slow-degradation: from evaluation 50 the mean falls 0.0003 per evaluation (-0.03 per 100) to a floor
    # it reaches at about 210; evaluations 50..200 are all on the slope
    sim.tick(200)
    ingest(ledger, sim)
    cfg = ScoreboardConfig(score_window=150, thresholds=ScoreboardThresholds(min_weighted_score_trend=-0.01))
    kpis = compute_kpis(ledger, cfg)
    trends = {a: v["versions"][BASE_MODEL]["weighted_score_trend"] for a, v in kpis["agents"].items()}
    assert all(-0.06 < t < -0.01 for t in trends.values()), trends
    alerts = escalations(kpis, cfg)
    assert sorted(x["agent"] for x in alerts if x["kpi"] == "weighted_score_trend") == sorted(trends)
    assert all("weighted_score_trend" in x["message"] for x in alerts)


async def test_metrics_server_on_loopback(ledger, promoted):
    kpis = compute_kpis(ledger, CFG)
    srv = await start_metrics_server(lambda: kpis, CFG.metrics_bind, CFG.metrics_port)
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}", timeout=5) as http:
            r = await http.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert samples(r.text) == samples(render_metrics(kpis).decode())
            assert (await http.get("/")).status_code == 404
            assert (await http.post("/metrics")).status_code == 405
    finally:
        await srv.close()

    async def failing() -> dict:
        raise RuntimeError("ledger unavailable")

    srv = await start_metrics_server(failing, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{srv.port}/metrics")
            assert r.status_code == 500 and "ledger unavailable" in r.text
    finally:
        await srv.close()


async def test_push_to_selector(ledger, promoted):
    got: list[dict] = []
    status = {"code": 200}

    async def receive(request: web.Request) -> web.Response:
        got.append({"auth": request.headers.get("Authorization"), "body": json.loads(await request.read())})
        return web.json_response({"ok": True}, status=status["code"])

    app = web.Application()
    app.router.add_post("/v1/selector/kpis", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/selector/kpis"
    try:
        kpis = compute_kpis(ledger, CFG)
        assert await push_to_selector(url, kpis, token="sel-token") == 200
        (msg,) = got
        assert msg["auth"] == "Bearer sel-token" and msg["body"]["source"] == "pr1"
        rows = {(r["agent_id"], r["model_version"]): r for r in msg["body"]["kpis"]}
        row = rows[(AGENT, promoted["v1"]["id"])]
        assert row["format_adherence"] == RECORDED["eval.format_adherence"] and row["current"] is True
        assert row["weighted_score"] == pytest.approx(kpis["agents"][AGENT]["versions"][promoted["v1"]["id"]]
                                                      ["weighted_score"])
        status["code"] = 503
        with pytest.raises(SelectorPushError, match="HTTP 503"):
            await push_to_selector(url, kpis)
    finally:
        await runner.cleanup()
    with pytest.raises(SelectorPushError):
        await push_to_selector(url, kpis, timeout=2)  # nobody listens any more


KPI = {"path_diversity": 0.4, "consensus_rate": 0.8, "parallel_ratio": 0.9, "format_adherence": 0.95,
       "weighted_score": 0.9, "weighted_score_trend": 0.0}


@pytest.mark.parametrize(("change", "thresholds", "fired"), [
    ({}, ScoreboardThresholds(), []),
    ({"format_adherence": 0.8}, ScoreboardThresholds(), ["format_adherence"]),
    ({"parallel_ratio": 0.3}, ScoreboardThresholds(), ["parallel_ratio"]),
    ({"weighted_score_trend": -0.08}, ScoreboardThresholds(), ["weighted_score_trend"]),
    ({"path_diversity": 0.99}, ScoreboardThresholds(max_path_diversity=0.9), ["path_diversity"]),
    ({"path_diversity": 0.01}, ScoreboardThresholds(min_path_diversity=0.05), ["path_diversity"]),
    ({"weighted_score": 0.7}, ScoreboardThresholds(min_weighted_score=0.8), ["weighted_score"]),
    ({"format_adherence": 0.5}, ScoreboardThresholds(min_format_adherence=0.0), []),  # switched off
    ({"weighted_score_trend": -5.0}, ScoreboardThresholds(min_weighted_score_trend=float("-inf")), []),
    ({"format_adherence": None}, ScoreboardThresholds(), []),  # unknown is not an alert
])
def test_escalations(change, thresholds, fired):
    kpis = {"agents": {"a1": {"versions": {
        "v-new": {**KPI, **change, "current": True},
        "v-old": {**KPI, "format_adherence": 0.1, "current": False},  # only the version in service counts
    }}}}
    alerts = escalations(kpis, ScoreboardConfig(thresholds=thresholds))
    assert [a["kpi"] for a in alerts] == fired
    assert all(a["agent"] == "a1" and a["version"] == "v-new" for a in alerts)


async def test_parallel_scoreboard_service(ledger, promoted):
    from pr1d.scoreboard import ParallelScoreboard

    events: list[tuple[str, dict]] = []
    cfg = ScoreboardConfig(metrics_port=0, score_window=50, thresholds=ScoreboardThresholds(min_weighted_score=0.99))
    sb = ParallelScoreboard(ledger, cfg, publish=lambda topic, data, run=None: events.append((topic, data)))
    await sb.start()
    try:
        snap = sb.snapshot(AGENT)
        assert list(snap["kpis"]["agents"]) == [AGENT] and snap["metrics"]["error"] is None
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(snap["metrics"]["url"])
        assert samples(r.text) == samples(render_metrics(sb.kpis).decode())
        # every agent's current version is below 0.99: alerts for all, published once, not at every refresh
        low = {d["agent"] for t, d in events if t == "alert" and d["kpi"] == "weighted_score"}
        assert low == {"agent-000", "agent-001", "agent-002"}
        n = len(events)
        await sb.refresh()
        assert len(events) == n == len(sb.alerts)
        # a second scoreboard on the same port: reported, not fatal
        other = ParallelScoreboard(ledger, ScoreboardConfig(metrics_port=sb.server.port))
        await other.start()
        assert other.server is None and "cannot listen" in other.snapshot()["metrics"]["error"]
    finally:
        await sb.close()
