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
from ..ledger.samples import first_samples, monitor_snapshot, save_monitor_state
from ..ledger.store import Conflict, Ledger
from ..pipeline.plans import UnknownPlan, plan_for
from .rules import ActiveRun, AgentState, decide
from .signals import (
    Baseline,
    Epoch,
    FailSequence,
    Sample,
    SignalConfig,
    compute_baseline,
    evaluate_all,
    fail_sequence_update,
)


@dataclass
class TriggerOutcome:
    agent_id: str
    trigger_id: int
    job_kind: str
    signal: str
    run_id: int | None
    suppressed: str | None


def _samples(rows: list[tuple]) -> list[Sample]:
    """Ledger rows (ts, score, status, rubric_json, eval_id, model_version) as signal samples."""
    out = []
    for ts, score, status, rubric, eval_id, version in rows:
        out.append(Sample(ts=float(ts), score=score, status=status,
                          rubric=json.loads(rubric) if isinstance(rubric, str) else rubric, eval_id=eval_id,
                          version=version))
    return out


def _epoch(e: dict) -> Epoch:
    return Epoch(key=e["key"], version=e["version"], since_ts=e["since_ts"], started_at=e["started_at"],
                 change=e["change"])


def stored_baseline(stored: dict | None, epoch: Epoch) -> Baseline | None:
    """The stored baseline if it was frozen for ``epoch``; one of an earlier version (or from before
    baselines named their epoch, or from a gate's expectation) is stale and gives None."""
    if not isinstance(stored, dict) or stored.get("epoch") != epoch.key:
        return None
    try:
        return Baseline(mean=stored["mean"], n=stored["n"], source=stored["source"], frozen_at=stored["frozen_at"])
    except (KeyError, TypeError, ValueError):
        return None  # a broken cell is re-frozen, not fatal to the poll cycle


def stored_fail_sequence(state: dict | None, epoch: Epoch) -> FailSequence:
    """The stored sequential fail test of ``epoch``, or a fresh one (other epoch, none, or unreadable)."""
    if not isinstance(state, dict) or state.get("epoch") != epoch.key:
        return FailSequence()
    try:
        return FailSequence.from_dict(state.get("fail_seq") or {})
    except TypeError:
        return FailSequence()


def fold_fail_sequence(state: dict | None, epoch: Epoch, new: list[Sample], cfg: SignalConfig) -> FailSequence:
    """The epoch's sequential fail test after folding ``new`` (the samples after its stored cursor)."""
    return fail_sequence_update(stored_fail_sequence(state, epoch), [x for x in new if epoch.counts(x)], cfg)


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
    return {k: v for k, v in evidence.items()
            if not isinstance(v, (list, dict)) or k in ("baseline", "fail_sequential")}


def _evaluate_chunk(ledger: Ledger, agent_ids: list[str], mcfg: MonitorConfig, now: float, history: int) -> list:
    snap = monitor_snapshot(ledger, agent_ids, history)
    updates: list[tuple[str, dict | None, dict, dict]] = []
    decisions = []
    for agent_id in agent_ids:
        a = snap.get(agent_id)
        if a is None:
            continue
        epoch = _epoch(a["epoch"])
        scfg, rcfg = mcfg.for_profile(a["profile"])
        # Fresh eyes after a change of model: only samples of the version in service, since it went in.
        samples = _samples(a["samples"][-scfg.history_needed():])
        seq = fold_fail_sequence(a["monitor"], epoch, _samples(a["fold"]), scfg)
        new_baseline = None
        base = stored_baseline(a["baseline"], epoch)
        if base is None:
            # Not frozen for this version yet: its first K platform scores, computed once and then kept
            # until the next promotion or rollback (never the gate's expectation: pr1's own grading).
            base = compute_baseline(_samples(first_samples(ledger, a["epoch"], scfg.baseline_k * 2)), scfg)
            new_baseline = {**base.to_dict(), "epoch": epoch.key} if base else None
        results = evaluate_all(samples, base, scfg, epoch=epoch, fail_seq=seq)
        # The version judged goes with each signal, so the console can say "insufficient data (new version)".
        signals = {r.name: {"state": r.state, "evidence": {**_compact(r.evidence), "version": epoch.version}}
                   for r in results}
        updates.append((agent_id, new_baseline, signals, {"epoch": epoch.key, "fail_seq": seq.to_dict()}))
        active = a["active"]
        state = AgentState(hold=a["hold"], hold_reason=a["hold_reason"],
                           active_run=ActiveRun(active["id"], active["state"]) if active else None,
                           last_run_finished_at=a["last_end"], model_changed_at=epoch.started_at)
        d = decide(state, results, now, rcfg)
        if d.job_kind is not None:
            d.evidence["epoch"] = epoch.to_dict()
            decisions.append((agent_id, d, rcfg))
    save_monitor_state(ledger, updates)
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
