"""The registry's part of ``pr1ctl status``: pending profile pushes, approvals, watches, and their alerts."""

from __future__ import annotations

import time

from ..ledger.store import Ledger, change_count
from .approvals import ApprovalConfig, pending_approvals
from .config import RegistryConfig
from .push import pending_pushes
from .watch import watch_status


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def open_watch(w: dict) -> bool:
    """Whether status lists a watch: still running, or fallen short. A finished watch that held (or could not
    judge) is history, and every agent ever promoted has one: listing them all made `status` grow with the
    fleet (900 finished watches were 200 KB and ~5 ms to encode and decode per call)."""
    return not w["complete"] or w["state"] == "short"


def registry_status(ledger: Ledger, approvals: ApprovalConfig | None = None,
                    registry: RegistryConfig | None = None) -> dict:
    """Everything an on-call engineer needs about promotions right now, plus the alerts to show.

    ``watches`` holds the open ones (:func:`open_watch`); ``watches_closed`` counts the others.
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
    shown = [w for w in watches if open_watch(w)]
    return {"pending_pushes": pushes, "approvals": pending_approvals(ledger, approvals), "watches": shown,
            "watches_closed": len(watches) - len(shown), "alerts": alerts}


class RegistryStatusCache:
    """:func:`registry_status`, computed again only when the ledger's registry data or the config changed.

    The ledger's triggers bump the ``registry`` change counter on every write that status reads
    (:data:`pr1d.ledger.store.COUNTER_TRIGGERS`), so a call between changes costs one one-row read
    instead of ~6 ms of queries and JSON at 10,000 agents. Safe from several threads: the counter is
    read before the data, so a write racing the computation only makes the next call compute again.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple, dict] | None = None  # (key, status), replaced whole

    def get(self, ledger: Ledger, approvals: ApprovalConfig | None = None,
            registry: RegistryConfig | None = None) -> dict:
        """The registry status; a fresh top-level dict and alerts list (callers append their own alerts)."""
        key = (change_count(ledger, "registry"), approvals, registry)
        entry = self._entry
        if entry is None or entry[0] != key:
            entry = self._entry = (key, registry_status(ledger, approvals, registry))
        return {**entry[1], "alerts": list(entry[1]["alerts"])}
