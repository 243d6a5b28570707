"""Approvals: who may turn a run awaiting approval into a promotion, how many must, and for how long.

``approve`` records the approval (the user comes from the socket's peer credentials) and, once
``approvals_required`` distinct users have approved, promotes the run's model version in the same
ledger write transaction (``BEGIN IMMEDIATE``, :meth:`pr1d.ledger.store.Ledger.write`). The write lock is taken before the run's state is read, so
concurrent approvals of one run serialize: exactly one sees ``awaiting_approval`` with a full quorum
and promotes; the others find ``promoted`` and get a Conflict. An approval window that has passed
(``ttl_s`` since the run began awaiting approval) rejects the run with reason ``approval_expired``.

A run whose promotion gate was inconclusive (evidence ``flagged``, or outcome ``inconclusive``) is
approved only by a deliberate act: each approver passes ``accept_inconclusive``, else the approval is
refused (:class:`InconclusiveNotAccepted`, a Conflict) with the gate's reasons and uplift CI and bar.
The audit row of each approval records ``accept_inconclusive`` (false for a run that passed its gate,
where the flag accepts nothing and is ignored).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.states import RunState
from ..ledger.store import Conflict, Ledger, NotFound, WriteTx
from ..rpc.schema import gate_inconclusive, gate_reasons, gate_uplift_text
from .config import ApprovalConfig, RegistryConfig
from .deploy import deployment_info, promote_in_tx
from .push import sync_agent_blocking
from .versions import json_cell, verify_version, version_for_run

EXPIRED = "approval_expired"


@dataclass
class ApproveResult:
    """What an approval did: recorded only, or recorded and promoted (with the deployment)."""

    run_id: int
    agent_id: str
    state: str  # the run's state afterwards
    approvals: list[dict] = field(default_factory=list)  # [{user, reason, ts}] so far
    required: int = 1
    promoted: bool = False
    already_approved: bool = False  # this user had approved before: nothing new was recorded
    version_id: str | None = None
    deployment: dict | None = None
    accept_inconclusive: bool = False  # this approval accepted an inconclusive gate (false when it passed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InconclusiveNotAccepted(Conflict):
    """An approval of a run whose gate was inconclusive, without ``accept_inconclusive``: refused.

    ``data`` carries the same facts for scripts (the socket API returns it as the error's data)."""

    def __init__(self, message: str, data: dict[str, Any]):
        super().__init__(message)
        self.data = data


def inconclusive_refusal(run_id: int, gate: Any, accept_inconclusive: bool) -> InconclusiveNotAccepted | None:
    """The refusal to raise for approving ``run_id`` with this gate evidence, or None when it may proceed.

    Pure: an inconclusive gate (flagged, or outcome inconclusive) needs ``accept_inconclusive``; a gate
    that passed (or no evidence at all) needs nothing. The message names the run, the gate's reasons,
    the uplift CI and bar when known, and the command that accepts it.
    """
    if not gate_inconclusive(gate) or accept_inconclusive:
        return None
    reasons = gate_reasons(gate)
    uplift = gate_uplift_text(gate)
    lines = [f"run {run_id}: the promotion gate was inconclusive (it could not decide), so approving it "
             "must be a deliberate act",
             f"  gate reasons: {'; '.join(reasons) if reasons else 'none recorded'}"]
    if uplift:
        lines.append(f"  uplift: {uplift}")
    lines.append(f"to approve it anyway: pr1ctl approve {run_id} --accept-inconclusive --reason TEXT "
                 "(console: tick 'I accept the inconclusive gate result' in the approve dialog)")
    outcome = gate.get("outcome") if isinstance(gate, dict) else None
    return InconclusiveNotAccepted("\n".join(lines), {"run": run_id, "needs": "accept_inconclusive",
                                                      "outcome": outcome, "reasons": reasons, "uplift": uplift})


def _entered_at(tx: WriteTx, run_id: int) -> float:
    """When the run began awaiting approval (its finished_at is set by that transition)."""
    row = tx.one("SELECT coalesce(finished_at, updated_at) FROM runs WHERE id = ?", (run_id,))
    return float(row[0]) if row and row[0] is not None else 0.0


def _expire_in_tx(tx: WriteTx, run_id: int, ttl_s: float, now: float) -> bool:
    entered = _entered_at(tx, run_id)
    return tx.transition_run(
        run_id, RunState.rejected, "daemon",
        f"{EXPIRED}: no approval within {ttl_s:g}s (awaiting since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entered))} UTC)",
        src=RunState.awaiting_approval, now=now,
    ) is not None


def _approvals(tx: WriteTx, run_id: int) -> list[dict]:
    return [{"user": u, "reason": r, "ts": t}
            for u, r, t in tx.all("SELECT user, reason, ts FROM approvals WHERE run_id = ? ORDER BY id", (run_id,))]


def approve(
    ledger: Ledger,
    models_root: Path,
    run_id: int,
    user: str,
    reason: str,
    cfg: ApprovalConfig | None = None,
    *,
    registry: RegistryConfig | None = None,
    now: float | None = None,
    pusher: Any = None,
    accept_inconclusive: bool = False,
) -> ApproveResult:
    """Record ``user``'s approval of ``run_id``; promote its model version once the quorum is reached.

    Raises NotFound (no run, or no registered version), Conflict (the run is not awaiting approval,
    or its approval window expired: it is then rejected with reason ``approval_expired``),
    InconclusiveNotAccepted (a Conflict: the gate was inconclusive and ``accept_inconclusive`` is
    false; nothing is recorded), or RegistryError (the version's files do not match their hashes).
    ``pusher`` pushes the profile after the commit; without one it is left pending for the daemon's
    ProfileSync.
    """
    cfg = cfg or ApprovalConfig()
    registry = registry or RegistryConfig()
    if not user or not reason:
        raise ValueError("an approval needs the approving user and a reason")
    run = ledger.get_run(run_id)
    if run["state"] != RunState.awaiting_approval:
        raise Conflict(f"run {run_id} is {run['state']}, not awaiting_approval")
    # Refused before hashing the model (slow); checked again under the write lock below.
    if (early := inconclusive_refusal(run_id, json_cell(run.get("gate")), accept_inconclusive)) is not None:
        raise early
    version = version_for_run(ledger, run_id)
    if registry.verify_on_deploy:
        # Hash the files before taking the write lock: it can take a while for big models, and the
        # lock would stall every other writer (the poller) meanwhile.
        verify_version(ledger, models_root, run["agent_id"], version["id"])
    now = time.time() if now is None else now
    expired = False
    with ledger.write() as tx:
        row = tx.one("SELECT agent_id, state, gate FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no such run: {run_id}")
        agent_id, state, gate = row[0], row[1], json_cell(row[2])
        if state != RunState.awaiting_approval:
            raise Conflict(f"run {run_id} is {state}, not awaiting_approval")
        if now - _entered_at(tx, run_id) > cfg.ttl_s:
            expired = _expire_in_tx(tx, run_id, cfg.ttl_s, now)
        else:
            if (refusal := inconclusive_refusal(run_id, gate, accept_inconclusive)) is not None:
                raise refusal  # rolls back: nothing recorded, the run still awaits a deliberate approval
            # Recorded true only when there was something to accept: on a passed gate the flag is ignored.
            accepted = accept_inconclusive and gate_inconclusive(gate)
            cur = tx.execute("INSERT OR IGNORE INTO approvals (run_id, user, reason, ts) VALUES (?, ?, ?, ?)",
                             (run_id, user, reason, now))
            already = cur.rowcount == 0
            if not already:
                tx.audit(user, "approve", "run", run_id, ts=now, reason=reason,
                         details={"version": version["id"], "required": cfg.approvals_required,
                                  "accept_inconclusive": accepted,
                                  "gate_outcome": gate.get("outcome") if isinstance(gate, dict) else None})
            approvals = _approvals(tx, run_id)
            result = ApproveResult(run_id=run_id, agent_id=agent_id, state=state, approvals=approvals,
                                   required=cfg.approvals_required, already_approved=already,
                                   version_id=version["id"], accept_inconclusive=accepted)
            if len({a["user"] for a in approvals}) >= cfg.approvals_required:
                users = ", ".join(a["user"] for a in approvals)
                why = f"approved by {users}{' (inconclusive gate accepted)' if accepted else ''}: {reason}"
                dep_id = promote_in_tx(tx, models_root, run_id, version["id"], user, why, registry, now)
                result.promoted, result.state = True, RunState.promoted
    if expired:
        raise Conflict(f"run {run_id}: the approval window ({cfg.ttl_s:g}s) has passed; "
                       f"the run is now rejected ({EXPIRED})")
    if result.promoted:
        if pusher is not None:
            sync_agent_blocking(ledger, agent_id, pusher, registry)
        result.deployment = deployment_info(ledger, dep_id)
    return result


def reject(ledger: Ledger, run_id: int, user: str, reason: str) -> dict:
    """``awaiting_approval -> rejected`` by ``user``, conditional so it cannot race an approval."""
    now = time.time()
    with ledger.write() as tx:
        row = tx.one("SELECT state FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no such run: {run_id}")
        if row[0] != RunState.awaiting_approval or tx.transition_run(
            run_id, RunState.rejected, user, reason, src=RunState.awaiting_approval, now=now
        ) is None:
            raise Conflict(f"run {run_id} is {row[0]}, not awaiting_approval")
    return ledger.get_run(run_id)


def expire_approvals(ledger: Ledger, cfg: ApprovalConfig | None = None, now: float | None = None) -> list[int]:
    """Reject every run that has waited longer than ``ttl_s`` for approval (reason approval_expired)."""
    cfg = cfg or ApprovalConfig()
    now = time.time() if now is None else now
    with ledger.engine.connect() as conn:
        due = [r[0] for r in conn.exec_driver_sql(
            "SELECT id FROM runs WHERE state = 'awaiting_approval' AND coalesce(finished_at, updated_at) < ?",
            (now - cfg.ttl_s,),
        ).all()]
    expired = []
    for run_id in due:
        with ledger.write() as tx:  # one transaction each: an approval racing it either wins or loses whole
            if now - _entered_at(tx, run_id) > cfg.ttl_s and _expire_in_tx(tx, run_id, cfg.ttl_s, now):
                expired.append(run_id)
    return expired


def pending_approvals(ledger: Ledger, cfg: ApprovalConfig | None = None) -> list[dict]:
    """Runs awaiting approval with the approvals so far, how many are needed and when the window closes."""
    cfg = cfg or ApprovalConfig()
    with ledger.engine.connect() as conn:
        runs = conn.exec_driver_sql(
            "SELECT id, agent_id, coalesce(finished_at, updated_at), gate FROM runs "
            "WHERE state = 'awaiting_approval' ORDER BY id"
        ).all()
        out = []
        for run_id, agent, entered, gate in runs:
            users = [r[0] for r in conn.exec_driver_sql(
                "SELECT user FROM approvals WHERE run_id = ? ORDER BY id", (run_id,)).all()]
            g = json_cell(gate)
            out.append({"run": run_id, "agent": agent, "approved_by": users, "required": cfg.approvals_required,
                        "expires_at": (entered or 0.0) + cfg.ttl_s,
                        "gate_outcome": g.get("outcome") if isinstance(g, dict) else None,
                        "flagged": bool(g.get("flagged")) if isinstance(g, dict) else False})
    return out
