"""Post-promotion watch: do a promoted version's live grades live up to the gate's expectation?

For the first ``window`` graded evaluations after a promotion (those the platform timestamped after
the deployment's ``since_ts``), the mean live score is compared with the score the gate expected. The
verdict is ``short`` when even the optimistic end of its one-sided confidence bound
(``mean + z * standard error``) lies more than ``tolerance`` below the expectation, ``ok`` otherwise,
and ``insufficient`` until ``min_samples`` grades exist. A ``short`` verdict raises an alert (status
and console); with ``auto_rollback`` (off by default) the daemon also rolls the agent back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..ledger.store import Ledger
from .config import WatchConfig
from .deploy import json_cell
from .tables import WriteTx

WatchState = Literal["ok", "short", "insufficient"]


@dataclass(frozen=True)
class WatchResult:
    state: WatchState
    complete: bool  # the window is full: this verdict is final
    evidence: dict[str, Any] = field(default_factory=dict)


def watch_verdict(expected: float, scores: Sequence[float], cfg: WatchConfig | None = None) -> WatchResult:
    """Compare the first ``cfg.window`` live scores after a promotion with the expected score. Pure."""
    cfg = cfg or WatchConfig()
    xs = [float(x) for x in scores[: cfg.window]]
    n = len(xs)
    ev: dict[str, Any] = {"expected": expected, "n": n, "window": cfg.window, "min_samples": cfg.min_samples,
                          "tolerance": cfg.tolerance, "z": cfg.z, "floor": round(expected - cfg.tolerance, 6)}
    if n < cfg.min_samples:
        return WatchResult("insufficient", False, {**ev, "mean": sum(xs) / n if n else None})
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    upper = mean + cfg.z * sd / math.sqrt(n)
    state: WatchState = "short" if upper < expected - cfg.tolerance else "ok"
    ev.update(mean=round(mean, 6), sd=round(sd, 6), upper_bound=round(upper, 6),
              shortfall=round(expected - mean, 6))
    return WatchResult(state, n >= cfg.window, ev)


def alert_text(agent_id: str, version_id: str, result: WatchResult) -> str:
    e = result.evidence
    return (f"agent {agent_id}: version {version_id} falls short of the gate's expectation: live mean "
            f"{e['mean']:.3f} over {e['n']} grades (upper bound {e['upper_bound']:.3f}) vs expected "
            f"{e['expected']:.3f} - tolerance {e['tolerance']:g}")


_WATCHED_SQL = (
    "SELECT d.id, d.agent_id, d.version_id, s.since_ts, s.expected_score, s.watch FROM deployments d "
    "JOIN (SELECT agent_id, max(id) AS mid FROM deployments GROUP BY agent_id) m ON d.id = m.mid "
    "JOIN deployment_state s ON s.deployment_id = d.id "
    "WHERE d.action = 'promote' AND s.expected_score IS NOT NULL"
)


def live_scores(ledger: Ledger, agent_id: str, since_ts: float | None, limit: int) -> list[float]:
    """Graded scores of ``agent_id`` after ``since_ts`` (platform clock), oldest first, at most ``limit``."""
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT weighted_score FROM score_samples WHERE agent_id = ? AND ts > ? AND status IN ('pass', 'fail') "
            "AND weighted_score BETWEEN 0.0 AND 1.0 ORDER BY ts, eval_id LIMIT ?",
            (agent_id, since_ts if since_ts is not None else -math.inf, limit),
        ).all()
    return [float(r[0]) for r in rows]


def check_watches(ledger: Ledger, cfg: WatchConfig | None = None, now: float | None = None) -> list[dict]:
    """Update the watch of every agent whose newest deployment is a promotion still under watch.

    Call after each poll cycle. Returns one item per watch whose verdict changed: ``alert`` holds the
    alert text when it newly fell short, and ``auto_rollback`` is True when the daemon should roll the
    agent back (``cfg.auto_rollback``); the verdict is stored in ``deployment_state.watch``.
    """
    cfg = cfg or WatchConfig()
    now = time.time() if now is None else now
    with ledger.engine.connect() as conn:
        watched = conn.exec_driver_sql(_WATCHED_SQL).all()
    changes = []
    for dep_id, agent, version, since, expected, raw in watched:
        prev = json_cell(raw) or {}
        if prev.get("complete"):
            continue
        res = watch_verdict(float(expected), live_scores(ledger, agent, since, cfg.window), cfg)
        if prev and prev.get("state") == res.state and prev.get("evidence", {}).get("n") == res.evidence["n"]:
            continue
        newly_short = res.state == "short" and prev.get("state") != "short"
        record = {"state": res.state, "complete": res.complete, "evidence": res.evidence, "updated_at": now,
                  "alert": alert_text(agent, version, res) if res.state == "short" else None}
        with WriteTx(ledger) as tx:
            tx.execute("UPDATE deployment_state SET watch = ? WHERE deployment_id = ?", (json.dumps(record), dep_id))
            if newly_short:
                tx.audit("daemon", "watch_short", "deployment", dep_id, ts=now, reason=record["alert"],
                         details=res.evidence)
        if prev.get("state", "insufficient") != res.state or res.complete:  # a watch starts out insufficient
            changes.append({"agent": agent, "deployment": dep_id, "version": version, "state": res.state,
                            "previous_state": prev.get("state"), "complete": res.complete,
                            "alert": record["alert"] if newly_short else None,
                            "auto_rollback": bool(newly_short and cfg.auto_rollback), "evidence": res.evidence})
    return changes


def watch_status(ledger: Ledger) -> list[dict]:
    """Every agent's current watch (newest deployment only), for status and the console."""
    with ledger.engine.connect() as conn:
        watched = conn.exec_driver_sql(_WATCHED_SQL).all()
    out = []
    for dep_id, agent, version, _since, expected, raw in watched:
        w = json_cell(raw) or {}
        out.append({"agent": agent, "deployment": dep_id, "version": version, "expected": expected,
                    "state": w.get("state", "insufficient"), "complete": bool(w.get("complete")),
                    "n": (w.get("evidence") or {}).get("n", 0), "mean": (w.get("evidence") or {}).get("mean"),
                    "alert": w.get("alert")})
    return out
