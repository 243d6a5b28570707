"""The daemon's own health on /metrics: poll, ingest, runs, stages, pushes and loop liveness (Prometheus text).

The KPIs (``pr1_*``, pr1d/scoreboard.py) say how the agents do; these (``pr1d_*``) say whether the daemon
does its job, so that on-call gets paged before the KPIs go stale. Three sources, each as cheap as it can be:

* :class:`DaemonMetrics`: counters and histograms the daemon bumps where things happen (a poll cycle ends,
  a stage ends, the dispatch loop turns). Plain ints and lists: one event loop writes them, so no lock.
* the scoring client's per-endpoint health (pr1d/monitor/poller.py ``EndpointHealth``): requests, failed
  requests, retries, latency and failures in a row, kept there and only read here.
* :func:`read_ledger_gauges`: runs by state (queue depth among them), the oldest run awaiting approval
  and the pending profile pushes, in one SQL statement run when /metrics is scraped (never per RPC).

:func:`render` turns them into Prometheus text; :func:`scrape` is what the daemon's /metrics calls.
docs/runbooks/operations.md ("Metrics and alerts") lists every name; docs/alerts.yml alerts on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ledger.states import RunState, StageState
from ..monitor.histogram import Histogram
from ..pipeline.plans import PLANS

log = logging.getLogger("pr1d.metrics")

# Bucket bounds (seconds; the scoring API's are HTTP_BUCKETS in pr1d/monitor/poller.py). A poll cycle is
# under a second for a small fleet and minutes at 10,000 agents; a stage is seconds (noop, sleep) to hours
# (sft, rl on CPU).
POLL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STAGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)

# The scoring client's endpoint names (pr1d/monitor/poller.py, pr1d/data/gradebook_sync.py). Their series exist
# from the start at 0: `increase()` cannot see a counter's first step from "absent" to 1.
SCORING_ENDPOINTS = ("agents", "evaluations", "gradebook")
# The states a stage ends in; with every stage of every plan, the series of pr1d_stages_finished_total
# that exist from the start (same reason).
STAGE_END_STATES = (StageState.succeeded, StageState.failed, StageState.cancelled, StageState.interrupted)
KNOWN_STAGES = tuple(sorted({s for plan in PLANS.values() for s in plan}))


@dataclass
class DaemonMetrics:
    """What the daemon counts as it goes; read by :func:`render`. Times are ``time.monotonic()``."""

    started: float = field(default_factory=time.monotonic)
    last_tick: float | None = None  # the dispatch loop's last turn
    last_poll: float | None = None  # the last poll cycle's end, whatever its result
    last_poll_ok: float | None = None  # the last poll cycle that listed the agents
    poll_cycles: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    poll_seconds: Histogram = field(default_factory=lambda: Histogram(POLL_BUCKETS))
    agents_listed: int | None = None
    agent_errors: int = 0
    evaluations_fetched: int = 0
    evaluations_ingested: int = 0
    evaluations_invalid: dict[str, int] = field(default_factory=dict)
    triggers: int = 0
    stage_results: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(s, str(st)): 0 for s in KNOWN_STAGES for st in STAGE_END_STATES})
    stage_seconds: dict[str, Histogram] = field(default_factory=dict)

    def tick(self, now: float | None = None) -> None:
        """The dispatch loop turned (about once a second while the daemon is healthy)."""
        self.last_tick = time.monotonic() if now is None else now

    def poll_cycle(self, report: dict, now: float | None = None) -> None:
        """A poll cycle ended; ``report`` is the dict ``PollCycle.run`` (pr1d/monitor/cycle.py) returns."""
        now = time.monotonic() if now is None else now
        ok = bool(report.get("ok"))
        self.poll_cycles["ok" if ok else "failed"] += 1
        self.last_poll = now
        if ok:
            self.last_poll_ok = now
            self.agents_listed = int(report.get("agents") or 0)
        self.poll_seconds.observe(max(0.0, float(report.get("duration_s") or 0.0)))
        self.agent_errors += int(report.get("agent_errors") or 0)
        self.evaluations_fetched += int(report.get("fetched") or 0)
        self.evaluations_ingested += int(report.get("inserted") or 0)
        self.triggers += int(report.get("triggers") or 0)
        for reason, n in (report.get("invalid") or {}).items():
            self.evaluations_invalid[reason] = self.evaluations_invalid.get(reason, 0) + int(n)

    def stage_finished(self, stage: str, state: str, seconds: float) -> None:
        """A stage worker ended in ``state`` after ``seconds`` of wall time."""
        key = (stage, str(state))
        self.stage_results[key] = self.stage_results.get(key, 0) + 1
        self.stage_seconds.setdefault(stage, Histogram(STAGE_BUCKETS)).observe(max(0.0, seconds))


@dataclass(frozen=True)
class LedgerGauges:
    """What the ledger says at scrape time. ``ok`` is False when it could not be read (the rest is empty)."""

    ok: bool = True
    runs_by_state: Mapping[str, int] = field(default_factory=dict)
    oldest_awaiting_approval_at: float | None = None  # Unix time the oldest waiting run reached the state
    pushes_pending: int = 0
    pushes_failing: int = 0  # pending pushes whose last attempt failed
    oldest_push_pending_at: float | None = None  # Unix time of the oldest pending push's deployment


def read_ledger_gauges(ledger: Any) -> LedgerGauges:
    """Runs by state, the oldest run awaiting approval and the pending pushes, in one read-only statement.

    Safe off the ledger thread (SQLite WAL: a reader never blocks the writer). "Awaiting since" is what the
    approval window counts from (pr1d/registry/approvals.py); "pending" is the registry's own definition
    (each agent's newest deployment not acknowledged by the agent manager).
    """
    from ..registry.push import _PENDING_SQL

    sql = (
        "SELECT 'run', state, count(*), min(coalesce(finished_at, updated_at)) FROM runs GROUP BY state "
        "UNION ALL SELECT 'push', CASE WHEN push_error IS NULL THEN 'waiting' ELSE 'failing' END, count(*), "
        f"min(ts) FROM ({_PENDING_SQL}) GROUP BY 2"
    )
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql).all()
    runs: dict[str, int] = {}
    oldest_approval = oldest_push = None
    pending = failing = 0
    for kind, key, n, oldest in rows:
        if kind == "run":
            runs[key] = int(n)
            if key == RunState.awaiting_approval:
                oldest_approval = oldest
        else:
            pending += int(n)
            failing += int(n) if key == "failing" else 0
            oldest_push = oldest if oldest_push is None else min(oldest_push, oldest)
    return LedgerGauges(True, runs, oldest_approval, pending, failing, oldest_push)


def _age(now: float, then: float | None) -> float:
    """Seconds since ``then``; 0 when there is nothing waiting (an alert on `age > N` then stays quiet)."""
    return max(0.0, now - then) if then is not None else 0.0


class _DaemonCollector:
    """One scrape's worth of daemon metrics; a fresh registry per render, as for the KPIs."""

    def __init__(self, m: DaemonMetrics, g: LedgerGauges, endpoints: Mapping[str, Any], *, monitor: bool,
                 running_stages: int, version: str, now: float, now_mono: float, started_at: float):
        self.m, self.g, self.endpoints, self.monitor = m, g, endpoints, monitor
        self.running_stages, self.version = running_stages, version
        self.now, self.now_mono, self.started_at = now, now_mono, started_at

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m, g, now_mono = self.m, self.g, self.now_mono

        def gauge(name: str, text: str, value: float | None = None, labels: list[str] | None = None) -> Any:
            """A gauge family; with neither value nor labels it has HELP and TYPE but no sample."""
            return GaugeMetricFamily(name, text, value=value, labels=labels)

        def histogram(fam: Any, labels: list[str], h: Histogram) -> None:
            from prometheus_client.utils import floatToGoString

            fam.add_metric(labels, [(floatToGoString(b), float(n)) for b, n in h.cumulative()], h.sum)

        # -- the process ----------------------------------------------------------------------------
        info = gauge("pr1d_build_info", "Always 1; the running daemon's version is the label.", labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info
        yield gauge("pr1d_start_time_seconds", "When the daemon started (Unix time).", self.started_at)
        yield gauge("pr1d_loop_tick_age_seconds",
                    "Seconds since the run dispatcher last turned (about 1 s when healthy; since start if never).",
                    _age(now_mono, m.last_tick if m.last_tick is not None else m.started))
        yield gauge("pr1d_monitor_enabled", "1 when the daemon polls the scoring API (monitor.enabled).",
                    1.0 if self.monitor else 0.0)

        # -- polling the scoring API ------------------------------------------------------------------
        cycles = CounterMetricFamily("pr1d_poll_cycles", "Poll cycles ended, by result (failed: the agents "
                                     "listing could not be read).", labels=["result"])
        for result in ("ok", "failed"):
            cycles.add_metric([result], float(m.poll_cycles.get(result, 0)))
        yield cycles
        ages = (("pr1d_poll_cycle_age_seconds", "Seconds since the last poll cycle ended, whatever its result "
                 "(since start if none yet).", m.last_poll),
                ("pr1d_poll_success_age_seconds", "Seconds since the last poll cycle that listed the agents "
                 "(since start if none yet).", m.last_poll_ok))
        for name, text, then in ages:
            # Only while monitoring (no sample otherwise): a daemon told not to poll is not late.
            yield gauge(name, text, _age(now_mono, then if then is not None else m.started) if self.monitor else None)
        dur = HistogramMetricFamily("pr1d_poll_cycle_duration_seconds", "Wall time of poll cycles.", labels=[])
        if m.poll_seconds.count:
            histogram(dur, [], m.poll_seconds)
        yield dur
        yield gauge("pr1d_agents_listed", "Agents the scoring API listed in the last successful poll cycle.",
                    None if m.agents_listed is None else float(m.agents_listed))
        for name, text, value in (
            ("pr1d_poll_agent_errors", "Agents whose evaluations could not be read in a poll cycle "
             "(summed over cycles).", m.agent_errors),
            ("pr1d_evaluations_fetched", "Valid evaluations read from the scoring API.", m.evaluations_fetched),
            ("pr1d_evaluations_ingested", "Evaluations written to the ledger (new ones; replays are not "
             "counted).", m.evaluations_ingested),
            ("pr1d_triggers", "Trigger rules that fired (a run created or suppressed).", m.triggers),
        ):
            yield CounterMetricFamily(name, text, value=float(value))
        invalid = CounterMetricFamily("pr1d_evaluations_invalid", "Evaluation items skipped as invalid, by reason.",
                                      labels=["reason"])
        for reason, n in sorted(m.evaluations_invalid.items()):
            invalid.add_metric([reason], float(n))
        yield invalid

        # -- the scoring client, per endpoint ---------------------------------------------------------
        names = sorted({*SCORING_ENDPOINTS, *self.endpoints}) if self.monitor else sorted(self.endpoints)
        reqs = CounterMetricFamily("pr1d_scoring_requests", "HTTP requests to the scoring API that completed "
                                   "(retries included), by endpoint.", labels=["endpoint"])
        errs = CounterMetricFamily("pr1d_scoring_request_errors", "Of those, the ones that failed (timeout, "
                                   "connection error, non-2xx, malformed JSON), by endpoint.", labels=["endpoint"])
        retries = CounterMetricFamily("pr1d_scoring_retries", "Requests that were retries of a failed one, "
                                      "by endpoint.", labels=["endpoint"])
        streak = gauge("pr1d_scoring_consecutive_failures", "Calls in a row that failed after all their retries, "
                       "by endpoint (0 after a success).", labels=["endpoint"])
        latency = HistogramMetricFamily("pr1d_scoring_request_duration_seconds", "Latency of HTTP requests to the "
                                        "scoring API (failed ones included), by endpoint.", labels=["endpoint"])
        for name in names:
            h = self.endpoints.get(name)
            reqs.add_metric([name], float(h.requests if h else 0))
            errs.add_metric([name], float(h.requests - h.successes if h else 0))
            retries.add_metric([name], float(h.retries if h else 0))
            streak.add_metric([name], float(h.consecutive_failures if h else 0))
            if h is not None and h.latency.count:
                histogram(latency, [name], h.latency)
        yield from (reqs, errs, retries, streak, latency)

        # -- runs and stages ------------------------------------------------------------------------
        yield gauge("pr1d_ledger_readable", "1 when this scrape could read the ledger; 0: the run, approval and "
                    "push gauges are missing (see the journal).", 1.0 if g.ok else 0.0)
        runs = gauge("pr1d_runs", "Runs in the ledger, by state.", labels=["state"])
        if g.ok:
            for state in RunState:
                runs.add_metric([str(state)], float(g.runs_by_state.get(state, 0)))
        yield runs
        ledger_gauges = (
            ("pr1d_queue_depth", "Runs queued, waiting for a free training slot.",
             g.runs_by_state.get(RunState.queued, 0)),
            ("pr1d_awaiting_approval_oldest_age_seconds", "Seconds the oldest run awaiting approval has waited "
             "(0 when none waits).", _age(self.now, g.oldest_awaiting_approval_at)),
            ("pr1d_profile_pushes_pending", "Agents whose newest profile the agent manager has not acknowledged.",
             g.pushes_pending),
            ("pr1d_profile_pushes_failing", "Of those, the ones whose last push attempt failed.", g.pushes_failing),
            ("pr1d_profile_push_pending_oldest_age_seconds", "Seconds since the oldest unacknowledged deployment "
             "was recorded (0 when none is pending).", _age(self.now, g.oldest_push_pending_at)),
        )
        for name, text, value in ledger_gauges:
            yield gauge(name, text, float(value) if g.ok else None)
        yield gauge("pr1d_stages_running", "Stage workers running now.", float(self.running_stages))
        ends = CounterMetricFamily("pr1d_stages_finished", "Stage workers that ended, by stage and state "
                                   "(succeeded, failed, cancelled, interrupted).", labels=["stage", "state"])
        for (stage, state), n in sorted(m.stage_results.items()):
            ends.add_metric([stage, state], float(n))
        yield ends
        secs = HistogramMetricFamily("pr1d_stage_duration_seconds", "Wall time of stage workers, whatever their "
                                     "end, by stage.", labels=["stage"])
        for stage, h in sorted(m.stage_seconds.items()):
            histogram(secs, [stage], h)
        yield secs


def render(m: DaemonMetrics, g: LedgerGauges, endpoints: Mapping[str, Any], *, monitor: bool,
           running_stages: int = 0, version: str = "", now: float | None = None, now_mono: float | None = None,
           started_at: float | None = None) -> bytes:
    """The daemon's metrics in Prometheus text exposition format.

    ``endpoints`` maps an endpoint name to the scoring client's health for it (``requests``,
    ``successes``, ``retries``, ``consecutive_failures``, ``latency``). ``now`` is Unix time (ages of ledger
    rows), ``now_mono`` monotonic time (ages of what :class:`DaemonMetrics` recorded).
    """
    from prometheus_client import CollectorRegistry, generate_latest

    now = time.time() if now is None else now
    now_mono = time.monotonic() if now_mono is None else now_mono
    started_at = now - (now_mono - m.started) if started_at is None else started_at
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_DaemonCollector(m, g, endpoints, monitor=monitor, running_stages=running_stages,
                                  version=version, now=now, now_mono=now_mono, started_at=started_at))
    return generate_latest(reg)


async def scrape(daemon: Any) -> bytes:
    """What /metrics adds to the KPIs for a running ``pr1d.daemon.core.Daemon``: its metrics, its scoring
    client's health and the ledger gauges (read off the event loop)."""
    from .. import __version__

    try:
        gauges = await asyncio.to_thread(read_ledger_gauges, daemon.ledger)
    except Exception as e:  # a scrape must still say the daemon is up; pr1d_ledger_readable says the rest
        log.warning("metrics: cannot read the ledger: %s: %s", type(e).__name__, e)
        gauges = LedgerGauges(ok=False)
    poller = daemon.poller
    return render(daemon.metrics, gauges, poller.client.health if poller is not None else {},
                  monitor=poller is not None, running_stages=len(daemon.runs.stage_procs), version=__version__,
                  started_at=daemon.started)
