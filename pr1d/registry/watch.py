"""Post-promotion watch: do a promoted version's platform grades hold up against the version it replaced?

Platform with platform: for the first ``window`` graded evaluations of the new version (tagged with the
platform's name for it, timestamped after the deployment's ``since_ts``), the mean live score is
compared with the *reference*: the platform's own scores of the previous version, the last ``window``
graded before the promotion, frozen into the watch at its first check. (The gate's expected score is
pr1's own grading on its own tasks, a different scale: it is never compared with live scores.) The
verdict is ``short`` when even the optimistic end of the one-sided confidence bound of the difference
(``new mean - reference mean + z * standard error``, Welch) lies more than ``tolerance`` below 0,
``ok`` otherwise, and ``insufficient`` until ``min_samples`` grades of each exist. A ``short`` verdict
raises an alert (status and console); with ``auto_rollback`` (off by default) the daemon also rolls the
agent back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..ledger.samples import platform_name
from ..ledger.store import Ledger
from .config import WatchConfig
from .versions import json_cell

WatchState = Literal["ok", "short", "insufficient"]


@dataclass(frozen=True)
class WatchResult:
    state: WatchState
    complete: bool  # the window is full: this verdict is final
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    """The previous version's platform scores the new version is compared with (summary statistics)."""

    mean: float
    sd: float  # sample standard deviation (n - 1)
    n: int
    version: str | None = None

    @classmethod
    def of(cls, scores: Sequence[float], version: str | None = None) -> Reference | None:
        """The summary of ``scores``, or None when there are none."""
        xs = [float(x) for x in scores]
        if not xs:
            return None
        mean = math.fsum(xs) / len(xs)
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return cls(mean=mean, sd=sd, n=len(xs), version=version)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        return cls(mean=float(d["mean"]), sd=float(d["sd"]), n=int(d["n"]), version=d.get("version"))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 6), "sd": round(self.sd, 6), "n": self.n, "version": self.version}


def watch_verdict(reference: Reference | None, scores: Sequence[float], cfg: WatchConfig | None = None) -> WatchResult:
    """Compare the first ``cfg.window`` live scores of a new version with the previous version's. Pure."""
    cfg = cfg or WatchConfig()
    live = Reference.of(scores[: cfg.window])  # the same summary statistics as the reference's
    n = live.n if live is not None else 0
    complete = n >= cfg.window
    ref_mean = reference.mean if reference is not None else None
    ev: dict[str, Any] = {"reference": reference.to_dict() if reference is not None else None,
                          "expected": round(ref_mean, 6) if ref_mean is not None else None,
                          "n": n, "window": cfg.window, "min_samples": cfg.min_samples,
                          "tolerance": cfg.tolerance, "z": cfg.z,
                          "floor": round(ref_mean - cfg.tolerance, 6) if ref_mean is not None else None,
                          "mean": round(live.mean, 6) if live is not None else None}
    if reference is None or reference.n < cfg.min_samples:
        # Nothing to compare with (a new agent, or its history compacted away): the watch cannot judge.
        have = reference.n if reference is not None else 0
        return WatchResult("insufficient", complete, {
            **ev, "reason": f"{have} platform score(s) of the previous version, {cfg.min_samples} needed"})
    if live is None or n < cfg.min_samples:
        return WatchResult("insufficient", False, ev)
    mean, sd = live.mean, live.sd
    se = math.sqrt(sd * sd / n + reference.sd ** 2 / reference.n)
    diff = mean - reference.mean
    upper = diff + cfg.z * se
    state: WatchState = "short" if upper < -cfg.tolerance else "ok"
    ev.update(mean=round(mean, 6), sd=round(sd, 6), difference=round(diff, 6), upper_bound=round(upper, 6),
              shortfall=round(-diff, 6))
    return WatchResult(state, complete, ev)


def alert_text(agent_id: str, version_id: str, result: WatchResult) -> str:
    e = result.evidence
    return (f"agent {agent_id}: version {version_id} falls short of the version it replaced on the platform's own "
            f"grades: live mean {e['mean']:.3f} over {e['n']} grades vs {e['expected']:.3f} over "
            f"{e['reference']['n']} before the promotion (difference {e['difference']:+.3f}, upper bound "
            f"{e['upper_bound']:+.3f}, tolerance {e['tolerance']:g})")


_WATCHED_SQL = (
    "SELECT d.id, d.agent_id, d.version_id, s.since_ts, s.expected_score, s.watch, s.body FROM deployments d "
    "JOIN (SELECT agent_id, max(id) AS mid FROM deployments GROUP BY agent_id) m ON d.id = m.mid "
    "JOIN deployment_state s ON s.deployment_id = d.id "
    "WHERE d.action = 'promote'"
)


_GRADED = "status IN ('pass', 'fail') AND weighted_score BETWEEN 0.0 AND 1.0"


def live_scores(ledger: Ledger, agent_id: str, version: str, since_ts: float | None, limit: int) -> list[float]:
    """Graded scores of ``version`` for ``agent_id`` after ``since_ts`` (platform clock), oldest first."""
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT weighted_score FROM score_samples WHERE agent_id = ? AND model_version = ? AND ts > ? AND {_GRADED} "
            "ORDER BY ts, eval_id LIMIT ?",
            (agent_id, version, since_ts if since_ts is not None else -math.inf, limit),
        ).all()
    return [float(r[0]) for r in rows]


def reference_scores(ledger: Ledger, agent_id: str, new_version: str, since_ts: float | None,
                     limit: int) -> tuple[list[float], str | None]:
    """The previous version's graded scores: the last ``limit`` at or before ``since_ts`` that are not
    tagged with ``new_version``, oldest first, and the version most of them carry (None = untagged)."""
    if since_ts is None:  # the agent had no sample when it was promoted: nothing to compare with
        return [], None
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT weighted_score, model_version FROM score_samples WHERE agent_id = ? AND ts <= ? AND {_GRADED} "
            "AND (model_version IS NULL OR model_version != ?) ORDER BY ts DESC, eval_id DESC LIMIT ?",
            (agent_id, since_ts, new_version, limit),
        ).all()
    versions = [r[1] for r in rows]
    top = max(set(versions), key=versions.count) if versions else None
    return [float(r[0]) for r in reversed(rows)], top


def check_watches(ledger: Ledger, cfg: WatchConfig | None = None, now: float | None = None) -> list[dict]:
    """Update the watch of every agent whose newest deployment is a promotion still under watch.

    Call after each poll cycle. Returns one item per watch whose verdict changed: ``alert`` holds the
    alert text when it newly fell short, and ``auto_rollback`` is True when the daemon should roll the
    agent back (``cfg.auto_rollback``); the verdict is stored in ``deployment_state.watch``, with the
    reference frozen at the first check (the previous version's samples may be compacted later).
    """
    cfg = cfg or WatchConfig()
    now = time.time() if now is None else now
    with ledger.engine.connect() as conn:
        watched = conn.exec_driver_sql(_WATCHED_SQL).all()
    changes = []
    for dep_id, agent, version, since, _expected, raw, body in watched:
        prev = json_cell(raw) or {}
        if prev.get("complete"):
            continue
        name = platform_name(version, body)
        if isinstance(prev.get("reference"), dict):
            ref: Reference | None = Reference.from_dict(prev["reference"])
        else:
            scores, ref_version = reference_scores(ledger, agent, name, since, cfg.window)
            ref = Reference.of(scores, ref_version)
        res = watch_verdict(ref, live_scores(ledger, agent, name, since, cfg.window), cfg)
        if prev and prev.get("state") == res.state and prev.get("evidence", {}).get("n") == res.evidence["n"]:
            continue
        newly_short = res.state == "short" and prev.get("state") != "short"
        record = {"state": res.state, "complete": res.complete, "evidence": res.evidence, "updated_at": now,
                  "reference": ref.to_dict() if ref is not None and ref.n >= cfg.min_samples else None,
                  "alert": alert_text(agent, version, res) if res.state == "short" else None}
        with ledger.write() as tx:
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
    """Every agent's current watch (newest deployment only), for status and the console. ``expected`` is
    the reference: the previous version's platform mean (None until the first check)."""
    with ledger.engine.connect() as conn:
        watched = conn.exec_driver_sql(_WATCHED_SQL).all()
    out = []
    for dep_id, agent, version, _since, _expected, raw, _body in watched:
        w = json_cell(raw) or {}
        ev = w.get("evidence") or {}
        out.append({"agent": agent, "deployment": dep_id, "version": version, "expected": ev.get("expected"),
                    "reference": w.get("reference"),
                    "state": w.get("state", "insufficient"), "complete": bool(w.get("complete")),
                    "n": ev.get("n", 0), "mean": ev.get("mean"), "alert": w.get("alert")})
    return out
