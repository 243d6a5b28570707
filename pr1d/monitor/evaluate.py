"""Wires the pure signals and rules to the ledger: samples in, trigger rows and queued runs out.

Runs on the daemon's ledger thread (it reads and writes the ledger synchronously). Every decision
that names a job becomes a trigger row with its evidence, suppressed or not; a run is created only
when the rules say so and this build has the stages the job needs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..config import MonitorConfig
from ..ledger import store
from ..ledger.store import Conflict, Ledger
from ..pipeline.plans import UnknownPlan, plan_for
from .rules import ActiveRun, AgentState, decide
from .signals import Baseline, Sample, compute_baseline, evaluate_all


@dataclass
class TriggerOutcome:
    agent_id: str
    trigger_id: int
    job_kind: str
    signal: str
    run_id: int | None
    suppressed: str | None


def _samples(rows: list[tuple]) -> list[Sample]:
    out = []
    for ts, score, status, rubric, eval_id in rows:
        out.append(Sample(ts=float(ts), score=score, status=status,
                          rubric=json.loads(rubric) if isinstance(rubric, str) else rubric, eval_id=eval_id))
    return out


def _baseline(ledger: Ledger, agent: dict, cfg) -> Baseline | None:
    b = agent.get("baseline")
    if b:
        return Baseline(mean=b["mean"], n=b["n"], source=b["source"], frozen_at=b["frozen_at"])
    # Not frozen yet: the first K evaluations, computed once and then frozen until a promotion.
    first = _samples(store.first_samples(ledger, agent["id"], cfg.baseline_k * 2))
    base = compute_baseline(first, cfg)
    if base is not None:
        ledger.update_agent_fields(agent["id"], baseline=base.to_dict())
    return base


def _repeat(ledger: Ledger, agent_id: str, job_kind: str, suppressed: str, now: float, window_s: float) -> bool:
    last = store.triggers(ledger, agent_id, limit=1)
    if not last:
        return False
    t = last[0]
    same = t["job_kind"] == job_kind and (t["suppressed"] or "").split(":")[0] == suppressed.split(":")[0]
    return same and now - t["ts"] < window_s


def evaluate_agents(ledger: Ledger, agent_ids: list[str], mcfg: MonitorConfig,
                    now: float | None = None) -> list[TriggerOutcome]:
    now = time.time() if now is None else now
    outcomes: list[TriggerOutcome] = []
    for agent_id in agent_ids:
        agent = ledger.get_agent(agent_id)
        scfg, rcfg = mcfg.for_profile(agent.get("profile") or "")
        samples = _samples(store.recent_samples(ledger, agent_id, scfg.history_needed()))
        if not samples:
            continue
        results = evaluate_all(samples, _baseline(ledger, agent, scfg), scfg)
        ledger.update_agent_fields(agent_id, signals={r.name: {"state": r.state, "evidence": r.evidence}
                                                      for r in results})
        active, last_end = store.agent_run_state(ledger, agent_id)
        state = AgentState(hold=bool(agent["hold"]), hold_reason=agent.get("hold_reason"),
                           active_run=ActiveRun(active["id"], active["state"]) if active else None,
                           last_run_finished_at=last_end)
        d = decide(state, results, now, rcfg)
        if d.job_kind is None:
            continue
        suppressed = d.suppressed
        if suppressed is None:
            try:
                stages = plan_for(d.job_kind)
            except UnknownPlan as e:
                stages, suppressed = None, f"plan_unavailable: {e}"
        if suppressed is not None and _repeat(ledger, agent_id, d.job_kind, suppressed, now, rcfg.cooldown_s):
            continue  # the same suppressed trigger was recorded recently: one row, not one per poll
        tid = store.record_trigger(ledger, agent_id, d.signal, d.job_kind, d.evidence, suppressed)
        run_id = None
        if suppressed is None:
            try:
                run, _ = ledger.create_run(
                    agent_id, d.job_kind, "daemon", params={"guardrails": d.guardrails},
                    idempotency_key=f"trigger-{tid}", trigger_id=tid,
                    reason=f"{d.signal} signal fired", stages=list(stages or ()),
                )
                run_id = run["id"]
                store.link_trigger(ledger, tid, run_id)
            except Conflict as e:  # a manual trigger raced us: the agent is busy, which is what dedupe wants
                suppressed = f"active_run: {e}"
                store.link_trigger(ledger, tid, None, suppressed)
        outcomes.append(TriggerOutcome(agent_id, tid, d.job_kind, d.signal, run_id, suppressed))
    return outcomes
