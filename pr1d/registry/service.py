"""The registry as the daemon uses it: approve, reject, rollback, push retries, expiry, the watch, status.

One object the daemon holds (``self.registry``); each socket handler or scheduled job is one awaited
call. Ledger work runs through the daemon's ``db_call`` (its single ledger thread), HTTP on the loop,
and everything worth showing goes out through ``publish(topic, data, run)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..ledger.store import Ledger
from . import approvals as _approvals
from . import deploy as _deploy
from .push import AsyncHttpPusher, ProfileSync
from .status import registry_status
from .tables import ensure_schema
from .watch import WatchConfig, check_watches

log = logging.getLogger("pr1d.registry")


class RegistryService:
    def __init__(
        self,
        ledger: Ledger,
        state_dir: Path,
        *,
        registry: _deploy.RegistryConfig,
        approvals: _approvals.ApprovalConfig,
        watch: WatchConfig,
        agent_manager_url: str,
        token: str | None = None,
        db_call: Callable[..., Awaitable[Any]] | None = None,
        publish: Callable[..., None] | None = None,
    ):
        self.ledger = ledger
        self.registry, self.approvals, self.watch = registry, approvals, watch
        self.models_root = _deploy.models_root(registry, state_dir)
        self._db = db_call or (lambda fn, *a, **k: asyncio.to_thread(fn, *a, **k))
        self._publish = publish or (lambda *a, **k: None)
        self.pusher = AsyncHttpPusher(registry.agent_manager_url or agent_manager_url, token, registry.push_timeout_s)
        self.sync = ProfileSync(ledger, self.pusher, registry, self._db)
        self._start_task: asyncio.Task | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> dict:
        """Create missing tables, make pointers agree with the ledger, retry pushes left pending."""
        await self._db(ensure_schema, self.ledger)
        rep = await self._db(_deploy.reconcile, self.ledger, self.models_root)
        for r in rep["repaired"]:
            log.warning("registry: repaired agent %s at start: %s", r["agent"], r)
        if rep["pending_pushes"]:
            # In the background: READY must not wait for an agent manager that may be down.
            self._start_task = asyncio.create_task(self.retry_pushes(respect_backoff=False))
        return rep

    def update_config(self, *, registry: _deploy.RegistryConfig, approvals: _approvals.ApprovalConfig,
                      watch: WatchConfig) -> None:
        """SIGHUP: new thresholds apply at once (models_dir and the agent manager URL need a restart)."""
        self.registry, self.approvals, self.watch = registry, approvals, watch
        self.sync.cfg = registry

    async def close(self) -> None:
        if self._start_task is not None:
            self._start_task.cancel()
        await self.pusher.close()

    # -- socket handlers ------------------------------------------------------------------------------
    async def approve(self, run_id: int, user: str, reason: str) -> dict:
        res = await self._db(_approvals.approve, self.ledger, self.models_root, run_id, user, reason,
                             self.approvals, registry=self.registry)
        out = res.to_dict()
        if res.promoted:
            self._publish("run", {"run": run_id, "agent": res.agent_id, "state": res.state, "actor": user,
                                  "reason": res.deployment["reason"]}, run_id)
            out["push"] = await self.push_now(res.agent_id)
            out["deployment"] = await self._db(_deploy.deployment_info, self.ledger, res.deployment["id"])
        return out

    async def reject(self, run_id: int, user: str, reason: str) -> dict:
        run = await self._db(_approvals.reject, self.ledger, run_id, user, reason)
        self._publish("run", {"run": run_id, "agent": run["agent_id"], "state": run["state"], "actor": user,
                              "reason": reason, "kind": run["kind"]}, run_id)
        return {"run": run_id, "state": run["state"]}

    async def rollback(self, agent_id: str, user: str, reason: str, to: str | None = None) -> dict:
        dep = await self._db(_deploy.rollback, self.ledger, self.models_root, agent_id, user, reason, to=to,
                             cfg=self.registry)
        if dep["run_id"] is not None:
            self._publish("run", {"run": dep["run_id"], "agent": agent_id, "state": "rolled_back", "actor": user,
                                  "reason": reason}, dep["run_id"])
        push = await self.push_now(agent_id)
        return {"deployment": await self._db(_deploy.deployment_info, self.ledger, dep["id"]), "push": push}

    async def deployments(self, agent_id: str | None, limit: int) -> list[dict]:
        return await self._db(_deploy.deployment_history, self.ledger, agent_id, limit)

    async def status(self) -> dict:
        return await self._db(registry_status, self.ledger, self.approvals, self.registry)

    # -- pushes ---------------------------------------------------------------------------------------
    async def push_now(self, agent_id: str) -> dict:
        """First push of a new deployment, right away; a failure is published and left to the retry job."""
        out = await self.sync.sync_agent(agent_id)
        self._publish("agent", {"agent": agent_id, "kind": "profile_push", **out})
        if out["state"] != "in_sync":
            self._publish("alert", {"kind": "profile_push_pending", "agent": agent_id, "error": out["error"]})
        return out

    async def retry_pushes(self, respect_backoff: bool = True) -> list[dict]:
        """The scheduled job: retry every pending push that is due (all of them at start)."""
        if respect_backoff:
            outs = await self.sync.sync_due()
        else:
            pending = await self._db(_deploy.pending_pushes, self.ledger, self.registry)
            outs = list(await asyncio.gather(*(self.sync.sync_agent(a) for a in sorted({p["agent"] for p in pending}))))
        for o in outs:
            if o["pushed"]:
                self._publish("agent", {"agent": o["agent"], "kind": "profile_push", **o})
        return outs

    # -- scheduled checks -----------------------------------------------------------------------------
    async def expire_approvals(self) -> list[int]:
        expired = await self._db(_approvals.expire_approvals, self.ledger, self.approvals)
        for run_id in expired:
            self._publish("run", {"run": run_id, "state": "rejected", "actor": "daemon",
                                  "reason": _approvals.EXPIRED}, run_id)
        return expired

    async def check_watches(self) -> list[dict]:
        """After each poll cycle: update post-promotion watches; alert, and roll back if configured."""
        changes = await self._db(check_watches, self.ledger, self.watch)
        for c in changes:
            if c["alert"]:
                log.warning("%s", c["alert"])
                self._publish("alert", {"kind": "watch_short", "agent": c["agent"], "version": c["version"],
                                        "message": c["alert"], "evidence": c["evidence"]})
            if c["auto_rollback"]:
                try:
                    await self.rollback(c["agent"], "daemon", f"auto-rollback: {c['alert']}")
                except Exception as e:  # the alert stands; a person takes over
                    log.error("auto-rollback of %s failed: %s", c["agent"], e)
                    self._publish("alert", {"kind": "auto_rollback_failed", "agent": c["agent"], "message": str(e)})
        return changes
