"""ParallelScoreboard: KPIs per agent and model version, as JSON, Prometheus text and a selector push.

KPIs, per agent and version:

* ``path_diversity``, ``consensus_rate``, ``parallel_ratio``, ``format_adherence``: the parallel-format
  metrics the evaluation recorded for the run that produced (or promoted) the version, i.e. run
  metrics named ``eval.<kpi>`` (last value; pr1d/data/parallel_format.py defines them).
* ``weighted_score`` and ``weighted_score_trend``: the mean of the last ``score_window`` graded live
  scores of the version's most recent service period, and their least-squares slope in score points
  per 100 evaluations (negative: getting worse).
* per agent: ``runs``, ``promotions``, ``rollbacks`` and whether a profile push is pending.

They go out three ways: :func:`compute_kpis` (the socket API returns it), :func:`render_metrics`
served by :func:`start_metrics_server` on ``/metrics`` (127.0.0.1 by default; the daemon's own
``pr1d_*`` health follows them there, pr1d/daemon/metrics.py), and
:func:`push_to_selector` (the agent selector's endpoint, when configured). :func:`escalations` turns
configured thresholds into alerts for status and the console.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pr1d/config.py imports ScoreboardConfig: keep this module's import cheap for clients
    from .ledger.store import Ledger

# KPI name -> run metric name the evaluation stage records it under.
RUN_KPIS: dict[str, str] = {
    "path_diversity": "eval.path_diversity",
    "consensus_rate": "eval.consensus_rate",
    "parallel_ratio": "eval.parallel_ratio",
    "format_adherence": "eval.format_adherence",
}
SCORE_KPIS = ("weighted_score", "weighted_score_trend", "weighted_score_samples")

HELP = {
    "path_diversity": "Mean path diversity of the version's parallel blocks at evaluation (0 = copies, 1 = disjoint).",
    "consensus_rate": "Share of parallel paths agreeing with their block's majority answer, at evaluation.",
    "parallel_ratio": "Share of the version's evaluation completions holding at least one parallel block.",
    "format_adherence": "Share of the version's evaluation completions in valid Parallel format.",
    "weighted_score": "Mean live weighted score over the version's last graded evaluations.",
    "weighted_score_trend": "Slope of the live weighted score, in score points per 100 evaluations.",
    "weighted_score_samples": "Graded live evaluations behind weighted_score.",
}


class ScoreboardThresholds(BaseModel):
    """KPI levels that raise an alert for an agent's current version. A minimum of 0 (a maximum of 1, a trend
    of -inf) can never be crossed: that is how a threshold is switched off."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_format_adherence: float = Field(0.9, ge=0, le=1, description="Alert below this format adherence.")
    min_parallel_ratio: float = Field(0.5, ge=0, le=1, description="Alert below this parallel ratio.")
    min_consensus_rate: float = Field(0.0, ge=0, le=1, description="Alert below this consensus rate (0: off).")
    min_path_diversity: float = Field(0.0, ge=0, le=1, description="Alert below this path diversity (0: off).")
    max_path_diversity: float = Field(1.0, ge=0, le=1, description="Alert above this path diversity (1: off).")
    min_weighted_score: float = Field(
        0.0, ge=0, le=1, description="Alert below this live weighted score (0: off)."
    )
    min_weighted_score_trend: float = Field(
        -0.05,
        description="Alert when the live score falls faster than this, in score points per 100 evaluations "
        "(-inf: off).",
    )


class ScoreboardConfig(BaseModel):
    """ParallelScoreboard (`[scoreboard]`): KPI computation, /metrics, the selector push and escalation."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    metrics_enabled: bool = Field(True, description="Serve /metrics (Prometheus text format).")
    metrics_bind: str = Field(
        "127.0.0.1", description="Address /metrics listens on. Anything but loopback exposes it to the network."
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of /metrics (0: any free port).")
    refresh_s: float = Field(60.0, gt=0, description="How often KPIs are recomputed (and pushed to the selector).")
    score_window: int = Field(200, ge=1, le=100_000, description="Live graded scores behind weighted_score.")
    trend_min_samples: int = Field(20, ge=3, description="Scores needed before a trend is reported.")
    selector_url: str = Field(
        "", description="URL the KPIs are POSTed to after each refresh (the agent selector); empty: off."
    )
    selector_token_env: str = Field(
        "", description="Environment variable holding a bearer token for the selector push; empty: none."
    )
    selector_timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one selector push.")
    thresholds: ScoreboardThresholds = ScoreboardThresholds()


# -- computing -------------------------------------------------------------------------------------


def _trend(xs: list[float], min_n: int) -> float | None:
    """Least-squares slope per evaluation x 100 (score points per 100 evaluations)."""
    n = len(xs)
    if n < min_n:
        return None
    mx = (n - 1) / 2
    my = sum(xs) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return 100.0 * sum((i - mx) * (x - my) for i, x in enumerate(xs)) / sxx


def _window_scores(conn: Any, agent: str, lo: float | None, hi: float | None, limit: int) -> list[float]:
    """Graded scores with lo < ts <= hi (platform clock), the newest ``limit``, oldest first."""
    rows = conn.exec_driver_sql(
        "SELECT weighted_score FROM score_samples WHERE agent_id = ? AND ts > ? AND ts <= ? "
        "AND status IN ('pass', 'fail') AND weighted_score BETWEEN 0.0 AND 1.0 ORDER BY ts DESC, eval_id DESC LIMIT ?",
        (agent, -math.inf if lo is None else lo, math.inf if hi is None else hi, limit),
    ).all()
    return [float(r[0]) for r in reversed(rows)]


def compute_kpis(ledger: Ledger, cfg: ScoreboardConfig | None = None, now: float | None = None) -> dict:
    """KPIs of every agent and each version it has run, from the ledger (read-only; safe off the ledger thread).

    ``{"generated_at", "agents": {agent: {"current_version", "model", "runs", "promotions", "rollbacks",
    "push_pending", "versions": {version: {"current", "run_id", <KPI>: value or None}}}}}``. An agent
    with no deployment yet has one version, named after the model the platform reports.
    """
    cfg = cfg or ScoreboardConfig()
    now = time.time() if now is None else now
    out: dict[str, Any] = {"generated_at": now, "agents": {}}
    with ledger.engine.connect() as conn:
        agents = conn.exec_driver_sql("SELECT id, model, current_version FROM agents ORDER BY id").all()
        runs = dict(conn.exec_driver_sql("SELECT agent_id, count(*) FROM runs GROUP BY agent_id").all())
        deps = conn.exec_driver_sql(
            "SELECT d.id, d.agent_id, d.version_id, d.action, d.run_id, d.profile_pushed, s.since_ts, v.run_id "
            "FROM deployments d LEFT JOIN deployment_state s ON s.deployment_id = d.id "
            "LEFT JOIN model_versions v ON v.id = d.version_id ORDER BY d.id"
        ).all()
        by_agent: dict[str, list[tuple]] = {}
        for row in deps:
            by_agent.setdefault(row[1], []).append(row)
        # The run whose evaluation measured each (agent, version): its promotion's run, else its lineage run.
        eval_run: dict[tuple[str, str], int] = {}
        for _id, agent, version, action, run_id, _p, _s, lineage_run in deps:
            rid = run_id if action == "promote" else lineage_run
            if rid is not None and (action == "promote" or (agent, version) not in eval_run):
                eval_run[(agent, version)] = rid
        metric_vals: dict[int, dict[str, float]] = {}
        run_ids = sorted(set(eval_run.values()))
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            names = list(RUN_KPIS.values())
            for rid, name, value in conn.exec_driver_sql(
                f"SELECT run_id, name, value FROM metrics WHERE id IN (SELECT max(id) FROM metrics WHERE run_id IN "
                f"({marks}) AND name IN ({','.join('?' * len(names))}) GROUP BY run_id, name)",
                (*chunk, *names),
            ).all():
                metric_vals.setdefault(rid, {})[name] = value

        for agent, model, current in agents:
            hist = by_agent.get(agent, [])
            a: dict[str, Any] = {
                "current_version": current, "model": model, "runs": runs.get(agent, 0),
                "promotions": sum(1 for d in hist if d[3] == "promote"),
                "rollbacks": sum(1 for d in hist if d[3] == "rollback"),
                "push_pending": bool(hist) and not hist[-1][5], "versions": {},
            }
            # Each version's most recent service period in platform time: (its since_ts, the next one's].
            periods: dict[str, tuple[float | None, float | None]] = {}
            for k, d in enumerate(hist):
                nxt = hist[k + 1][6] if k + 1 < len(hist) else None
                if k + 1 < len(hist) and nxt is None:
                    continue  # no samples existed when the next deployment came: this period holds none
                periods[d[2]] = (d[6], nxt)
            if not hist:
                periods[model or "unknown"] = (None, None)
            for version, (lo, hi) in periods.items():
                scores = _window_scores(conn, agent, lo, hi, cfg.score_window)
                rid = eval_run.get((agent, version))
                mv = metric_vals.get(rid, {}) if rid is not None else {}
                v: dict[str, Any] = {"current": version == (current if hist else version), "run_id": rid}
                for kpi, metric in RUN_KPIS.items():
                    v[kpi] = mv.get(metric)
                v["weighted_score"] = sum(scores) / len(scores) if scores else None
                v["weighted_score_trend"] = _trend(scores, cfg.trend_min_samples)
                v["weighted_score_samples"] = len(scores)
                a["versions"][version] = v
            out["agents"][agent] = a
    return out


# -- Prometheus text ---------------------------------------------------------------------------------


class _KpiCollector:
    """Exposes one KPI snapshot; a fresh registry per render, so nothing stale ever lingers."""

    def __init__(self, kpis: dict):
        self.kpis = kpis

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        agents = self.kpis.get("agents", {})
        for kpi in (*RUN_KPIS, *SCORE_KPIS):
            fam = GaugeMetricFamily(f"pr1_{kpi}", HELP[kpi], labels=["agent", "version"])
            for agent, a in agents.items():
                for version, v in a["versions"].items():
                    if v.get(kpi) is not None:  # unknown stays absent rather than a made-up 0 or NaN
                        fam.add_metric([agent, version], float(v[kpi]))
            yield fam
        cur = GaugeMetricFamily("pr1_version_current", "1 for the version an agent runs now, 0 for earlier ones.",
                                labels=["agent", "version"])
        for agent, a in agents.items():
            for version, v in a["versions"].items():
                cur.add_metric([agent, version], 1.0 if v.get("current") else 0.0)
        yield cur
        for name, key, text in (("pr1_runs", "runs", "Runs created for the agent."),
                                ("pr1_promotions", "promotions", "Promotions of the agent."),
                                ("pr1_rollbacks", "rollbacks", "Rollbacks of the agent.")):
            fam = CounterMetricFamily(name, text, labels=["agent"])
            for agent, a in agents.items():
                fam.add_metric([agent], float(a[key]))
            yield fam
        pend = GaugeMetricFamily("pr1_profile_push_pending", "1 while the agent's newest profile is unacknowledged.",
                                 labels=["agent"])
        for agent, a in agents.items():
            pend.add_metric([agent], 1.0 if a.get("push_pending") else 0.0)
        yield pend
        yield GaugeMetricFamily("pr1_kpis_generated_timestamp_seconds", "When these KPIs were computed (Unix time).",
                                value=float(self.kpis.get("generated_at") or 0.0))


def render_metrics(kpis: dict) -> bytes:
    """The KPI snapshot in Prometheus text exposition format."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_KpiCollector(kpis))
    return generate_latest(reg)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """A minimal HTTP/1.1 server for ``GET /metrics`` on the daemon's loop (no web framework loaded).

    The body is the KPIs, then whatever ``extra()`` renders (the daemon's own metrics,
    pr1d/daemon/metrics.py): one scrape target carries both.
    """

    def __init__(self, get_kpis: Callable[[], dict | Awaitable[dict]],
                 extra: Callable[[], bytes | Awaitable[bytes]] | None = None):
        self.get_kpis = get_kpis
        self.extra = extra
        self._server: asyncio.Server | None = None
        self._cache: tuple[Any, bytes] | None = None
        self.host, self.port = "", 0

    async def _body(self) -> bytes:
        kpis = self.get_kpis()
        if inspect.isawaitable(kpis):
            kpis = await kpis
        key = (id(kpis), kpis.get("generated_at"))
        if self._cache is None or self._cache[0] != key:  # re-render only when the snapshot changed
            self._cache = (key, render_metrics(kpis))
        if self.extra is None:
            return self._cache[1]
        more = self.extra()  # never cached: the daemon's counters move between two scrapes
        if inspect.isawaitable(more):
            more = await more
        return self._cache[1] + more

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 5.0)
                for _ in range(100):  # headers: read and ignore, bounded
                    h = await asyncio.wait_for(reader.readline(), 5.0)
                    if h in (b"\r\n", b"\n", b""):
                        break
            except (TimeoutError, asyncio.LimitOverrunError, ValueError):
                return
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, body, ctype = "200 OK", b"", CONTENT_TYPE
            if path != "/metrics":
                status, body, ctype = "404 Not Found", b"only /metrics is served here\n", "text/plain"
            elif method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
            else:
                try:
                    body = await self._body()
                except Exception as e:  # a broken snapshot must not take the daemon's loop down
                    status, body, ctype = "500 Internal Server Error", f"{type(e).__name__}: {e}\n".encode(), "text/plain"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def start(self, host: str, port: int) -> MetricsServer:
        self._server = await asyncio.start_server(self._handle, host, port, limit=16 << 10)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


async def start_metrics_server(get_kpis: Callable[[], dict | Awaitable[dict]], host: str = "127.0.0.1",
                               port: int = 9464,
                               extra: Callable[[], bytes | Awaitable[bytes]] | None = None) -> MetricsServer:
    """Serve ``GET /metrics`` from ``get_kpis()`` (a snapshot dict, or a coroutine returning one), followed by
    ``extra()`` (Prometheus text, or a coroutine returning it) when given.

    Returns the server (``.port`` is the bound port, useful with 0); ``await server.close()`` stops it.
    Raises OSError when the address is taken: the caller reports it and keeps running without /metrics.
    """
    return await MetricsServer(get_kpis, extra).start(host, port)


# -- the selector push and escalation ------------------------------------------------------------------


def selector_payload(kpis: dict) -> dict:
    """Flat rows, one per agent and version, the shape the selector reads."""
    rows = []
    for agent, a in kpis.get("agents", {}).items():
        for version, v in a["versions"].items():
            rows.append({"agent_id": agent, "model_version": version, **v, "runs": a["runs"],
                         "promotions": a["promotions"], "rollbacks": a["rollbacks"]})
    return {"source": "pr1", "generated_at": kpis.get("generated_at"), "kpis": rows}


class SelectorPushError(Exception):
    """The selector did not take the KPIs (transport error or non-2xx)."""


async def push_to_selector(url: str, kpis: dict, token: str | None = None, timeout: float = 5.0) -> int:
    """POST the KPIs to the selector; returns the HTTP status, raises SelectorPushError otherwise."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
            resp = await http.post(url, json=selector_payload(kpis))
    except httpx.HTTPError as e:
        raise SelectorPushError(f"{type(e).__name__}: {e}"[:300]) from None
    if resp.status_code >= 300:
        raise SelectorPushError(f"HTTP {resp.status_code} from the selector: {resp.text[:200]}")
    return resp.status_code


_RULES = (
    ("format_adherence", "min_format_adherence", "min"),
    ("parallel_ratio", "min_parallel_ratio", "min"),
    ("consensus_rate", "min_consensus_rate", "min"),
    ("path_diversity", "min_path_diversity", "min"),
    ("path_diversity", "max_path_diversity", "max"),
    ("weighted_score", "min_weighted_score", "min"),
    ("weighted_score_trend", "min_weighted_score_trend", "min"),
)


def escalations(kpis: dict, cfg: ScoreboardConfig | None = None) -> list[dict]:
    """Alerts for KPIs of agents' current versions beyond the configured thresholds."""
    th = (cfg or ScoreboardConfig()).thresholds
    alerts = []
    for agent, a in kpis.get("agents", {}).items():
        for version, v in a["versions"].items():
            if not v.get("current"):
                continue
            for kpi, key, rule in _RULES:
                limit, value = getattr(th, key), v.get(kpi)
                if limit is None or value is None:
                    continue
                if (rule == "min" and value < limit) or (rule == "max" and value > limit):
                    word = "below" if rule == "min" else "above"
                    alerts.append({
                        "kind": "kpi", "agent": agent, "version": version, "kpi": kpi, "value": value,
                        "threshold": limit, "rule": rule,
                        "message": f"agent {agent} ({version}): {kpi} {value:.3f} is {word} {limit:g} ({key})",
                    })
    return alerts


# -- the daemon's scoreboard ---------------------------------------------------------------------------


class ParallelScoreboard:
    """The KPI snapshot the daemon keeps: refreshed on a schedule, served on /metrics and the socket API.

    ``refresh()`` recomputes the KPIs off the event loop (a read-only query; SQLite WAL lets it run
    beside the ledger thread's writes), publishes alerts that are new since the last refresh and pushes
    the KPIs to the selector when one is configured. A failing selector or a taken /metrics port is
    reported in ``snapshot()`` and the log; it never stops the daemon.
    """

    def __init__(self, ledger: Ledger, cfg: ScoreboardConfig | None = None,
                 publish: Callable[..., None] | None = None,
                 extra_metrics: Callable[[], bytes | Awaitable[bytes]] | None = None):
        self.ledger = ledger
        self.cfg = cfg or ScoreboardConfig()
        self._publish = publish or (lambda *a, **k: None)
        self._extra_metrics = extra_metrics  # served on /metrics after the KPIs (the daemon's own metrics)
        self.kpis: dict[str, Any] = {"generated_at": None, "agents": {}}
        self.alerts: list[dict] = []
        self.server: MetricsServer | None = None
        self.metrics_error: str | None = None
        self.selector: dict[str, Any] = {"last_ok_at": None, "last_error": None}

    async def start(self) -> None:
        """Compute a first snapshot and open /metrics (if enabled)."""
        await self.refresh(push=False)
        if self.cfg.metrics_enabled:
            try:
                self.server = await start_metrics_server(lambda: self.kpis, self.cfg.metrics_bind,
                                                         self.cfg.metrics_port, extra=self._extra_metrics)
            except OSError as e:
                self.metrics_error = f"cannot listen on {self.cfg.metrics_bind}:{self.cfg.metrics_port}: {e.strerror or e}"

    async def refresh(self, push: bool = True) -> dict:
        self.kpis = await asyncio.to_thread(compute_kpis, self.ledger, self.cfg)
        alerts = escalations(self.kpis, self.cfg)
        seen = {(a["agent"], a["version"], a["kpi"], a["rule"]) for a in self.alerts}
        for a in alerts:
            if (a["agent"], a["version"], a["kpi"], a["rule"]) not in seen:
                self._publish("alert", a)
        self.alerts = alerts
        if push and self.cfg.selector_url:
            token = os.environ.get(self.cfg.selector_token_env) if self.cfg.selector_token_env else None
            try:
                await push_to_selector(self.cfg.selector_url, self.kpis, token, self.cfg.selector_timeout_s)
                self.selector = {"last_ok_at": time.time(), "last_error": None}
            except SelectorPushError as e:
                self.selector = {**self.selector, "last_error": str(e), "last_error_at": time.time()}
        return self.kpis

    def snapshot(self, agent: str | None = None) -> dict:
        """What the socket API returns: KPIs (of one agent, or all), alerts, /metrics and selector health."""
        kpis = self.kpis if agent is None else {
            "generated_at": self.kpis["generated_at"],
            "agents": {k: v for k, v in self.kpis["agents"].items() if k == agent},
        }
        return {
            "kpis": kpis,
            "alerts": [a for a in self.alerts if agent is None or a["agent"] == agent],
            "metrics": {"url": f"http://{self.server.host}:{self.server.port}/metrics" if self.server else None,
                        "error": self.metrics_error},
            "selector": {"url": self.cfg.selector_url or None, **self.selector},
        }

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
