"""Approvals: who may turn a run awaiting approval into a promotion, how many must, and for how long.

``approve`` records the approval (the user comes from the socket's peer credentials) and, once
``approvals_required`` distinct users have approved, promotes the run's model version in the same
``BEGIN IMMEDIATE`` transaction. The write lock is taken before the run's state is read, so
concurrent approvals of one run serialize: exactly one sees ``awaiting_approval`` with a full quorum
and promotes; the others find ``promoted`` and get a Conflict. An approval window that has passed
(``ttl_s`` since the run began awaiting approval) rejects the run with reason ``approval_expired``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..ledger.states import RunState
from ..ledger.store import Conflict, Ledger, NotFound
from .config import ApprovalConfig, RegistryConfig
from .deploy import deployment_info, json_cell, promote_in_tx, transition_run_in_tx
from .tables import WriteTx
from .versions import verify_version, version_for_run

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entered_at(tx: WriteTx, run_id: int) -> float:
    """When the run began awaiting approval (its finished_at is set by that transition)."""
    row = tx.one("SELECT coalesce(finished_at, updated_at) FROM runs WHERE id = ?", (run_id,))
    return float(row[0]) if row and row[0] is not None else 0.0


def _expire_in_tx(tx: WriteTx, run_id: int, ttl_s: float, now: float) -> bool:
    entered = _entered_at(tx, run_id)
    return transition_run_in_tx(
        tx, run_id, RunState.awaiting_approval, RunState.rejected, "daemon",
        f"{EXPIRED}: no approval within {ttl_s:g}s (awaiting since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entered))} UTC)",
        now,
    )


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
) -> ApproveResult:
    """Record ``user``'s approval of ``run_id``; promote its model version once the quorum is reached.

    Raises NotFound (no run, or no registered version), Conflict (the run is not awaiting approval,
    or its approval window expired: it is then rejected with reason ``approval_expired``), or
    RegistryError (the version's files do not match their hashes). ``pusher`` pushes the profile after
    the commit; without one it is left pending for the daemon's ProfileSync.
    """
    cfg = cfg or ApprovalConfig()
    registry = registry or RegistryConfig()
    if not user or not reason:
        raise ValueError("an approval needs the approving user and a reason")
    run = ledger.get_run(run_id)
    if run["state"] != RunState.awaiting_approval:
        raise Conflict(f"run {run_id} is {run['state']}, not awaiting_approval")
    version = version_for_run(ledger, run_id)
    if registry.verify_on_deploy:
        # Hash the files before taking the write lock: it can take a while for big models, and the
        # lock would stall every other writer (the poller) meanwhile.
        verify_version(ledger, models_root, run["agent_id"], version["id"])
    now = time.time() if now is None else now
    expired = False
    with WriteTx(ledger) as tx:
        row = tx.one("SELECT agent_id, state FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no such run: {run_id}")
        agent_id, state = row
        if state != RunState.awaiting_approval:
            raise Conflict(f"run {run_id} is {state}, not awaiting_approval")
        if now - _entered_at(tx, run_id) > cfg.ttl_s:
            expired = _expire_in_tx(tx, run_id, cfg.ttl_s, now)
        else:
            cur = tx.execute("INSERT OR IGNORE INTO approvals (run_id, user, reason, ts) VALUES (?, ?, ?, ?)",
                             (run_id, user, reason, now))
            already = cur.rowcount == 0
            if not already:
                tx.audit(user, "approve", "run", run_id, ts=now, reason=reason,
                         details={"version": version["id"], "required": cfg.approvals_required})
            approvals = _approvals(tx, run_id)
            result = ApproveResult(run_id=run_id, agent_id=agent_id, state=state, approvals=approvals,
                                   required=cfg.approvals_required, already_approved=already,
                                   version_id=version["id"])
            if len({a["user"] for a in approvals}) >= cfg.approvals_required:
                users = ", ".join(a["user"] for a in approvals)
                dep_id = promote_in_tx(tx, models_root, run_id, version["id"], user,
                                       f"approved by {users}: {reason}", registry, now)
                result.promoted, result.state = True, RunState.promoted
    if expired:
        raise Conflict(f"run {run_id}: the approval window ({cfg.ttl_s:g}s) has passed; "
                       f"the run is now rejected ({EXPIRED})")
    if result.promoted:
        if pusher is not None:
            from .push import sync_agent_blocking  # push.py imports deploy.py: imported late

            sync_agent_blocking(ledger, agent_id, pusher, registry)
        result.deployment = deployment_info(ledger, dep_id)
    return result


def reject(ledger: Ledger, run_id: int, user: str, reason: str) -> dict:
    """``awaiting_approval -> rejected`` by ``user``, conditional so it cannot race an approval."""
    now = time.time()
    with WriteTx(ledger) as tx:
        row = tx.one("SELECT state FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFound(f"no such run: {run_id}")
        if row[0] != RunState.awaiting_approval or not transition_run_in_tx(
            tx, run_id, RunState.awaiting_approval, RunState.rejected, user, reason, now
        ):
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
        with WriteTx(ledger) as tx:  # one transaction each: an approval racing it either wins or loses whole
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
