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


def _repeat(ledger: Ledger, agent_id: str, job_kind: str, suppressed: str, now: float, window_s: float) -> bool:
    last = store.triggers(ledger, agent_id, limit=1)
    if not last:
        return False
    t = last[0]
    same = t["job_kind"] == job_kind and (t["suppressed"] or "").split(":")[0] == suppressed.split(":")[0]
    return same and now - t["ts"] < window_s


def evaluate_agents(ledger: Ledger, agent_ids: list[str], mcfg: MonitorConfig,
                    now: float | None = None) -> list[TriggerOutcome]:
    """Evaluate the signals of many agents: a few batched reads, pure decisions, one batched write.

    Per-agent ORM round trips and commits (an fsync each) made this phase dominate a 10,000-agent
    poll cycle; only the rare trigger rows and runs are written one by one.
    """
    now = time.time() if now is None else now
    history = max(mcfg.for_profile(p)[0].history_needed() for p in ["", *mcfg.profiles])
    decisions = []
    # Chunks of 1,000 agents: memory stays flat at fleet scale and each chunk is one write.
    for i in range(0, len(agent_ids), 1000):
        decisions += _evaluate_chunk(ledger, agent_ids[i:i + 1000], mcfg, now, history)
    return _act(ledger, decisions, now)


def _compact(evidence: dict) -> dict:
    """The per-agent signal summary kept on the agent row: scalars only (the full evidence, with
    its score lists, is kept on trigger rows, where it explains a run)."""
    return {k: v for k, v in evidence.items() if not isinstance(v, (list, dict)) or k == "baseline"}


def _evaluate_chunk(ledger: Ledger, agent_ids: list[str], mcfg: MonitorConfig, now: float, history: int) -> list:
    snap = store.monitor_snapshot(ledger, agent_ids, history)
    updates: list[tuple[str, dict | None, dict]] = []
    decisions = []
    for agent_id in agent_ids:
        a = snap.get(agent_id)
        if a is None or not a["samples"]:
            continue
        scfg, rcfg = mcfg.for_profile(a["profile"])
        samples = _samples(a["samples"][-scfg.history_needed():])
        new_baseline = None
        if a["baseline"]:
            b = a["baseline"]
            base: Baseline | None = Baseline(mean=b["mean"], n=b["n"], source=b["source"], frozen_at=b["frozen_at"])
        else:
            # Not frozen yet: the first K evaluations, computed once and then kept until a promotion.
            base = compute_baseline(_samples(store.first_samples(ledger, agent_id, scfg.baseline_k * 2)), scfg)
            new_baseline = base.to_dict() if base else None
        results = evaluate_all(samples, base, scfg)
        updates.append((agent_id, new_baseline,
                        {r.name: {"state": r.state, "evidence": _compact(r.evidence)} for r in results}))
        active = a["active"]
        state = AgentState(hold=a["hold"], hold_reason=a["hold_reason"],
                           active_run=ActiveRun(active["id"], active["state"]) if active else None,
                           last_run_finished_at=a["last_end"])
        d = decide(state, results, now, rcfg)
        if d.job_kind is not None:
            decisions.append((agent_id, d, rcfg))
    store.save_monitor_state(ledger, updates)
    return decisions


def _act(ledger: Ledger, decisions: list, now: float) -> list[TriggerOutcome]:
    outcomes: list[TriggerOutcome] = []
    for agent_id, d, rcfg in decisions:
        suppressed = d.suppressed
        stages = None
        if suppressed is None:
            try:
                stages = plan_for(d.job_kind)
            except UnknownPlan as e:
                suppressed = f"plan_unavailable: {e}"
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
