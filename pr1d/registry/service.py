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
from ..notify import drift_event, push_failing_event, rollback_event, sparse_repeat
from . import approvals as _approvals
from . import deploy as _deploy
from . import push as _push
from .push import AsyncHttpPusher, ProfileSync
from .status import RegistryStatusCache
from .watch import WatchConfig, check_watches

log = logging.getLogger("pr1d.registry")

MAX_REPUSHES = 3  # pushes again per drifted deployment, in a row, before only warning


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
        notify: Callable[[Any], None] | None = None,
    ):
        self.ledger = ledger
        self.registry, self.approvals, self.watch = registry, approvals, watch
        self.models_root = _deploy.models_root(registry, state_dir)
        self._db = db_call or (lambda fn, *a, **k: asyncio.to_thread(fn, *a, **k))
        self._publish = publish or (lambda *a, **k: None)
        self._notify = notify or (lambda ev: None)  # pr1d.notify.Notifier.notify: pages a person
        self.pusher = AsyncHttpPusher(registry.agent_manager_url or agent_manager_url, token, registry.push_timeout_s)
        self.sync = ProfileSync(ledger, self.pusher, registry, self._db, on_failure=self._push_failed)
        self._start_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._repushes: dict[int, int] = {}  # deployment -> pushes made again after drift (this process)
        self._drift_warned: dict[str, tuple] = {}  # agent -> the drift last warned about (warn once)
        self.drift: dict[str, dict] = {}  # agents drifted and not pushed again, for status
        self._status = RegistryStatusCache()

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> dict:
        """Make pointers agree with the ledger, retry pushes left pending."""
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
        for task in list(self._tasks):
            task.cancel()  # what was not acknowledged stays pending in the ledger for the next start
        await self.pusher.close()

    # -- socket handlers ------------------------------------------------------------------------------
    async def approve(self, run_id: int, user: str, reason: str, *, accept_inconclusive: bool = False) -> dict:
        res = await self._db(_approvals.approve, self.ledger, self.models_root, run_id, user, reason,
                             self.approvals, registry=self.registry, accept_inconclusive=accept_inconclusive)
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
        self._notify(rollback_event(agent_id, dep, user, reason))
        push = await self.push_now(agent_id)
        return {"deployment": await self._db(_deploy.deployment_info, self.ledger, dep["id"]), "push": push}

    async def deployments(self, agent_id: str | None, limit: int) -> list[dict]:
        return await self._db(_deploy.deployment_history, self.ledger, agent_id, limit)

    async def status(self) -> dict:
        # Off the ledger thread (a WAL read beside its writes): status must not wait for a poll cycle's ingest.
        return await asyncio.to_thread(self.status_now)

    def status_now(self) -> dict:
        """:meth:`status` on the calling thread (not the event loop: it may read the ledger), for a caller
        that makes one hop for several reads (the daemon's status)."""
        st = self._status.get(self.ledger, self.approvals, self.registry)
        for d in list(self.drift.values()):
            st["alerts"].append({"kind": "agent_manager_drift", "agent": d["agent"], "deployment": d["deployment"],
                                 "message": f"{d['message']}; not pushing it again ({d['why']})"})
        return st

    # -- pushes ---------------------------------------------------------------------------------------
    async def check_agent_manager(self, listing: list[dict], fetched_at: float) -> list[dict]:
        """Compare the platform's agent list with what it acknowledged (each poll cycle); push a drifted
        agent's deployment again (``registry.repush_on_drift``) or warn. Returns one entry per drift."""
        drift = await self._db(_push.agent_manager_drift, self.ledger, listing, fetched_at, self.registry)
        drifted = {d["deployment"] for d in drift}
        for dep in [k for k in self._repushes if k not in drifted]:
            del self._repushes[dep]  # in agreement again: a later drift starts a fresh count
        out = []
        for d in drift:
            rep, dep = d["reported"], d["deployed"]
            what = (f"agent manager runs {rep['model'] or '(no model)'}/{rep['profile'] or '(no profile)'} for "
                    f"agent {d['agent']}, but acknowledged deployment {d['deployment']} "
                    f"({d['action']} to {dep['model']}/{dep['profile']})")
            n = self._repushes.get(d["deployment"], 0)
            if self.registry.repush_on_drift and n < MAX_REPUSHES:
                self._repushes[d["deployment"]] = n + 1
                if not await self._db(_push.mark_for_repush, self.ledger, d):
                    continue  # superseded meanwhile: the newer deployment is pushed instead
                log.warning("%s: pushing it again", what)
                self._publish("alert", {"kind": "agent_manager_drift", "agent": d["agent"],
                                        "deployment": d["deployment"], "action": "repush", "message": what})
                self._notify(drift_event(d, what, "repush", await self._deployment_run(d["deployment"])))
                out.append(d | {"action_taken": "repush", "message": what})
                continue
            why = ("registry.repush_on_drift = false" if not self.registry.repush_on_drift else
                   f"pushed again {n} times in a row and it still lists something else: check what its "
                   "GET /v1/agents calls the model it was pushed")
            if self._drift_warned.get(d["agent"]) != (d["deployment"], rep["model"], rep["profile"]):
                self._drift_warned[d["agent"]] = (d["deployment"], rep["model"], rep["profile"])
                log.warning("%s; not pushing it again (%s)", what, why)
                self._publish("alert", {"kind": "agent_manager_drift", "agent": d["agent"],
                                        "deployment": d["deployment"], "action": "warn", "message": what})
                self._notify(drift_event(d, f"{what}; not pushing it again ({why})", "warn",
                                         await self._deployment_run(d["deployment"])))
            out.append(d | {"action_taken": "warn", "why": why, "message": what})
        self.drift = {d["agent"]: d for d in out if d["action_taken"] == "warn"}
        again = [d["agent"] for d in out if d["action_taken"] == "repush"]
        if again:
            # In the background, 16 at a time: a whole fleet drifted (an agent manager restarted empty)
            # must not hold up the poll cycle. A failed push stays pending for the retry job.
            task = asyncio.create_task(self._sync_agents(again))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return out

    async def settle(self) -> None:
        """Wait for the background pushes started by :meth:`check_agent_manager` (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def push_now(self, agent_id: str) -> dict:
        """First push of a new deployment, right away; a failure is published and left to the retry job."""
        out = await self.sync.sync_agent(agent_id)
        self._publish("agent", {"agent": agent_id, "kind": "profile_push", **out})
        if out["state"] != "in_sync":
            self._publish("alert", {"kind": "profile_push_pending", "agent": agent_id, "error": out["error"]})
        return out

    async def retry_pushes(self, respect_backoff: bool = True) -> list[dict]:
        """The scheduled job: retry every pending push that is due (all of them at start)."""
        if not respect_backoff:
            pending = await self._db(_push.pending_pushes, self.ledger, self.registry)
            return await self._sync_agents(sorted({p["agent"] for p in pending}))
        outs = await self.sync.sync_due()
        self._publish_pushed(outs)
        return outs

    async def _sync_agents(self, agents: list[str]) -> list[dict]:
        """Push each agent's pending deployment now (16 at a time, ProfileSync's limit)."""
        outs = list(await asyncio.gather(*(self.sync.sync_agent(a) for a in agents)))
        self._publish_pushed(outs)
        return outs

    async def _push_failed(self, failure: dict) -> None:
        """ProfileSync's on_failure: page on a deployment's 1st, 2nd, 4th... failed push (never at every retry)."""
        if not sparse_repeat(failure["attempts"]):
            return
        try:
            run = await self._deployment_run(failure["deployment"])
        except Exception:  # paging without the run beats not paging
            log.exception("push failure of deployment %s: run lookup failed", failure["deployment"])
            run = None
        self._notify(push_failing_event(failure, run))

    async def _deployment_run(self, deployment_id: int) -> int | None:
        """The run a deployment came from (None for an agent's initial version), for the page's command."""
        return (await self._db(_deploy.deployment_info, self.ledger, deployment_id)).get("run_id")

    def _publish_pushed(self, outs: list[dict]) -> None:
        for o in outs:
            if o["pushed"]:
                self._publish("agent", {"agent": o["agent"], "kind": "profile_push", **o})

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
