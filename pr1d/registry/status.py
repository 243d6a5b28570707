"""The registry's part of ``pr1ctl status``: pending profile pushes, approvals, watches, and their alerts."""

from __future__ import annotations

import time

from ..ledger.store import Ledger
from .approvals import ApprovalConfig, pending_approvals
from .deploy import RegistryConfig, pending_pushes
from .watch import watch_status


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def registry_status(ledger: Ledger, approvals: ApprovalConfig | None = None,
                    registry: RegistryConfig | None = None) -> dict:
    """Everything an on-call engineer needs about promotions right now, plus the alerts to show.

    ``alerts`` are ready to print: one per agent whose profile push is not acknowledged yet, and one
    per agent whose post-promotion watch fell short.
    """
    pushes = [{k: v for k, v in p.items() if k != "body"} | {"model_version": p["body"].get("model_version")}
              for p in pending_pushes(ledger, registry)]
    watches = watch_status(ledger)
    alerts = []
    for p in pushes:
        err = f" (last error: {p['last_error']})" if p["last_error"] else ""
        alerts.append({
            "kind": "profile_push_pending", "agent": p["agent"], "deployment": p["deployment"],
            "message": f"profile push pending for agent {p['agent']} since {_when(p['since'])}: "
                       f"{p['action']} to {p['version']}, {p['attempts']} attempt(s){err}",
        })
    for w in watches:
        if w["state"] == "short":
            alerts.append({"kind": "watch_short", "agent": w["agent"], "deployment": w["deployment"],
                           "message": w["alert"]})
    return {"pending_pushes": pushes, "approvals": pending_approvals(ledger, approvals), "watches": watches,
            "alerts": alerts}
