"""The pr1d daemon: lock, ledger thread, socket API, scheduler, run dispatcher and stage supervision.

Reads top to bottom as the process lives: start (lock, recover, listen, READY), serve (dispatch
queued runs into stage workers, answer the socket), stop (STOPPING, ask workers to checkpoint,
mark them interrupted, exit).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..ledger import store
from ..ledger.states import RUN_ENDS_SKIPPING_STAGES, IllegalTransition, RunState, StageState
from ..ledger.store import Conflict, Ledger, LedgerError, NotFound
from ..pipeline.launcher import Outcome, StageProcess, StageSpec
from ..pipeline.plans import UnknownPlan, plan_for
from ..registry.versions import RegistryError
from ..rpc import schema
from ..rpc.auth import RoleResolver
from ..rpc.schema import RpcError
from ..rpc.server import Connection, RpcServer
from . import jobs, metrics, systemd
from .lock import StateLock

log = logging.getLogger("pr1d")
T = TypeVar("T")


class Daemon:
    def __init__(self, cfg: Config, *, config_paths: list[Path] | None = None,
                 overrides: dict | None = None, burst: bool = False):
        self.cfg = cfg
        self.config_paths = config_paths or []
        self.overrides = overrides or {}
        self.burst = burst
        self.state_dir = cfg.state_path()
        self.started = time.time()
        self.lock = StateLock(self.state_dir)
        self.ledger: Ledger | None = None
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self.server: RpcServer | None = None
        self.scheduler: Any = None
        self.stopping = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.run_tasks: dict[int, asyncio.Task] = {}
        self.stage_procs: dict[int, StageProcess] = {}  # run id -> running worker
        self.cancel_requests: dict[int, tuple[str, str]] = {}  # run id -> (user, reason)
        self.reload_error: str | None = None
        self.poller: Any = None  # pr1d.monitor.poller.Poller when monitor.enabled
        self.registry: Any = None  # pr1d.registry.service.RegistryService
        self.scoreboard: Any = None  # pr1d.scoreboard.ParallelScoreboard
        self.notifier: Any = None  # pr1d.notify.Notifier: [notify] webhooks
        self._poll_lock = asyncio.Lock()
        self.metrics = metrics.DaemonMetrics()  # the daemon's own health on /metrics (pr1d/daemon/metrics.py)

    # == start ====================================================================================
    async def run(self) -> int:
        self.lock.acquire()
        try:
            return await self._run_locked()
        finally:
            self.lock.release()
            self._db_pool.shutdown(wait=True)

    async def _run_locked(self) -> int:
        loop = asyncio.get_running_loop()
        (self.state_dir / "runs").mkdir(parents=True, exist_ok=True)
        self.ledger = await self.db_call(Ledger, self.state_dir / "ledger.sqlite")
        await self._recover()
        jobs.install(self)
        if self.cfg.monitor.enabled:
            from ..monitor.poller import Poller

            self.poller = Poller(self.cfg.scoring, self.cfg.scoring_token())
        from ..notify import Notifier
        from ..registry.service import RegistryService
        from ..scoreboard import ParallelScoreboard

        self.notifier = Notifier(self.cfg.notify).start()  # before the registry: its start may already page
        # Reconcile pointers with the ledger (the source of truth) and resume pending profile pushes.
        self.registry = RegistryService(
            self.ledger, self.state_dir, registry=self.cfg.registry, approvals=self.cfg.approvals,
            watch=self.cfg.watch, agent_manager_url=self.cfg.scoring.base_url, token=self.cfg.scoring_token(),
            db_call=self.db_call, publish=self.publish, notify=lambda ev: self.notifier.notify(ev))
        await self.registry.start()
        self.scoreboard = ParallelScoreboard(self.ledger, self.cfg.scoreboard, publish=self.publish,
                                             extra_metrics=functools.partial(metrics.scrape, self))
        await self.scoreboard.start()
        self.server = RpcServer(self.cfg.socket(), self.cfg.rpc, RoleResolver(self.cfg.auth), self._handlers())
        await self.server.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        if not self.burst:
            self._start_scheduler()
        systemd.notify(f"READY=1\nSTATUS=serving on {self.cfg.socket()}\nMAINPID={os.getpid()}")
        log.info("pr1d %s ready: state %s, socket %s", __version__, self.state_dir, self.cfg.socket())
        watchdog = asyncio.create_task(systemd.watchdog_loop(lambda: not self.stopping.is_set()))
        try:
            if self.burst and self.poller is not None:
                await self.poll_cycle()  # burst: one real poll cycle, then drain what it queued
            await self._dispatch_loop()
        finally:
            watchdog.cancel()
            await self._shutdown()
        return 0

    def _heartbeat_s(self) -> float:
        """How often workers send a heartbeat: four per watchdog timeout, between 50 ms and 5 s."""
        return max(0.05, min(5.0, self.cfg.daemon.heartbeat_timeout_s / 4))

    async def db_call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a ledger call on the single ledger thread: the loop never blocks on disk."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *args, **kw))

    async def db(self, method: str, *args: Any, **kw: Any) -> Any:
        return await self.db_call(getattr(self.ledger, method), *args, **kw)

    async def _recover(self) -> None:
        """After a crash: stop orphaned workers, mark their stages interrupted, requeue interrupted runs; and
        mark skipped the stages an older release left pending in runs that had already ended."""
        orphans = await self.db("recover_after_restart")
        stranded = await self.db("skip_stranded_stages")
        if stranded:
            log.info("marked %d never-run stage(s) of ended runs skipped (ledger written before `skipped`)",
                     len(stranded))
        for st in orphans:
            pid = st.get("pid")
            if pid and _is_our_worker(pid, st["name"], self.state_dir / "runs" / str(st["run_id"])):
                log.warning("stopping orphaned worker pid %s (run %s stage %s)", pid, st["run_id"], st["name"],
                            extra={"run": st["run_id"], "stage": st["name"]})
                await _terminate_pid(pid, self.cfg.daemon.stop_grace_s)
        for run in await self.db("runs_by_state", RunState.interrupted):
            await self.db("transition_run", run["id"], RunState.queued, "daemon", "resuming after daemon restart")

    def _start_scheduler(self) -> None:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{self.state_dir / 'jobs.sqlite'}")},
            # Why these: coalesce collapses runs missed while the daemon was down into one;
            # max_instances=1 stops a slow job overlapping itself; a generous misfire grace
            # (instead of APScheduler's 1 s) means a missed run still happens after a restart.
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": self.cfg.scheduler.misfire_grace_s},
        )
        # Start first so the persistent store is open: jobs left there by an earlier run are then
        # replaced (new interval from config) or removed (monitor switched off).
        self.scheduler.start()
        self.scheduler.add_job("pr1d.daemon.jobs:housekeeping", "interval", seconds=600, id="housekeeping",
                               name="WAL checkpoint and approval expiry", replace_existing=True)
        if self.poller is not None:
            from datetime import UTC, datetime

            self.scheduler.add_job("pr1d.daemon.jobs:poll_scores", "interval",
                                   seconds=self.cfg.scheduler.poll_interval_s, id="poll",
                                   name="poll the scoring API", replace_existing=True,
                                   next_run_time=datetime.now(UTC))
        elif self.scheduler.get_job("poll"):
            self.scheduler.remove_job("poll")
        self.scheduler.add_job("pr1d.daemon.jobs:retry_pushes", "interval",
                               seconds=min(30.0, self.cfg.registry.push_retry_base_s), id="registry_push_retry",
                               name="retry pending profile pushes", replace_existing=True)
        if self.cfg.dataset.gradebook_sync_cron and self.poller is not None:
            from apscheduler.triggers.cron import CronTrigger

            self.scheduler.add_job("pr1d.daemon.jobs:gradebook_sync",
                                   CronTrigger.from_crontab(self.cfg.dataset.gradebook_sync_cron),
                                   id="gradebook_sync", name="sync the local gradebook copy", replace_existing=True)
        elif self.scheduler.get_job("gradebook_sync"):
            self.scheduler.remove_job("gradebook_sync")
        self.scheduler.add_job("pr1d.daemon.jobs:retention", "cron", hour=3, minute=17, id="retention",
                               name="apply the ledger retention policy", replace_existing=True)
        self.scheduler.add_job("pr1d.daemon.jobs:refresh_scoreboard", "interval",
                               seconds=self.cfg.scoreboard.refresh_s, id="scoreboard_refresh",
                               name="recompute scoreboard KPIs", replace_existing=True)

    # == serve: the run dispatcher ================================================================
    async def _dispatch_loop(self) -> None:
        while not self.stopping.is_set():
            self.metrics.tick()  # pr1d_loop_tick_age_seconds: a dispatcher that stops turning shows there
            started = await self._start_queued()
            if self.burst and not self.run_tasks and not started:
                if not await self.db("runs_by_state", RunState.queued):
                    log.info("burst mode: queue empty, exiting")
                    return
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def _start_queued(self) -> int:
        started = 0
        while len(self.run_tasks) < self.cfg.daemon.max_training_stages and not self.stopping.is_set():
            run = await self.db("next_queued_run", set(self.run_tasks))
            if run is None:
                break
            task = asyncio.create_task(self._execute_run(run["id"]))
            self.run_tasks[run["id"]] = task
            task.add_done_callback(lambda _t, rid=run["id"]: self._run_done(rid))
            started += 1
        return started

    def _run_done(self, run_id: int) -> None:
        task = self.run_tasks.pop(run_id, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("run %s: supervisor crashed: %r", run_id, task.exception(), extra={"run": run_id})
        self.wakeup.set()

    async def _set_run(self, run_id: int, dst: str, actor: str, reason: str | None, **fields: Any) -> dict:
        run = await self.db("transition_run", run_id, dst, actor, reason, **fields)
        if dst in RUN_ENDS_SKIPPING_STAGES:
            # The ledger skipped the stages that never ran in the run's own transaction; say so, so that
            # consoles following the run do not keep showing them as waiting.
            for st in await self.db("stages", run_id):
                if st["state"] == StageState.skipped:
                    self.publish("stage", {"run": run_id, "stage": st["name"], "seq": st["seq"],
                                           "state": st["state"], "error": None}, run_id)
        self.publish("run", {"run": run_id, "agent": run["agent_id"], "state": run["state"], "reason": reason,
                             "actor": actor, "kind": run["kind"]}, run_id)
        if self.notifier is not None:
            self.notifier.run_changed(run, reason)  # awaiting approval, failed: page (in the background)
        return run

    async def _set_stage(self, run_id: int, stage: dict, dst: str, reason: str | None = None, **fields: Any) -> dict:
        st = await self.db("transition_stage", stage["id"], dst, "daemon", reason, **fields)
        self.publish("stage", {"run": run_id, "stage": st["name"], "seq": st["seq"], "state": st["state"],
                               "error": st.get("error")}, run_id)
        return st

    async def _execute_run(self, run_id: int) -> None:
        """Run every stage not yet succeeded, in order; the run ends in exactly one legal state."""
        try:
            run = await self._set_run(run_id, RunState.running, "daemon", "dispatched")
        except IllegalTransition:
            return  # cancelled between being picked and being started
        last_result: dict = {}
        for stage in await self.db("stages", run_id):
            if stage["state"] == StageState.succeeded:
                last_result = stage.get("result") or {}
                continue
            outcome = await self._run_stage(run, stage)
            if outcome.state == "succeeded":
                last_result = outcome.result or {}
                stop = last_result.get("stop_run")
                if isinstance(stop, dict):  # a gate said no: the run ends here, with its evidence
                    await self._set_run(run_id, stop.get("state", RunState.rejected), "daemon",
                                        stop.get("reason"), gate=last_result.get("gate"))
                    return
                continue
            if outcome.state == "interrupted":
                await self._set_run(run_id, RunState.interrupted, "daemon", outcome.error)
            elif outcome.state == "cancelled":
                user, reason = self.cancel_requests.pop(run_id, ("daemon", "cancelled"))
                await self._set_run(run_id, RunState.cancelled, user, reason)
            else:
                await self._set_run(run_id, RunState.failed, "daemon", f"stage {stage['name']}: {outcome.error}")
            return
        final = last_result.get("final_state", RunState.succeeded)
        if isinstance(last_result.get("register"), dict):
            # A gate that let the candidate through asks for it to be registered: done here, before the
            # run reaches awaiting_approval, so an approval always finds a version to promote.
            try:
                await self._register_candidate(run, last_result["register"])
            except (LedgerError, OSError, ValueError) as e:
                await self._set_run(run_id, RunState.failed, "daemon", f"registering the candidate failed: {e}",
                                    gate=last_result.get("gate"), current_stage=None)
                return
        await self._set_run(run_id, final, "daemon", last_result.get("final_reason", "all stages done"),
                            gate=last_result.get("gate"), current_stage=None)

    async def _register_candidate(self, run: dict, req: dict) -> dict:
        """Register a gate's candidate as a model version of the run's agent (the daemon is the ledger's
        only writer). With ``req["base"]`` (the agent had no version yet) the base is registered first, as
        the agent's initial deployment under the platform's name for it: the candidate's parent and the
        first rollback target."""
        from ..registry.deploy import record_initial
        from ..registry.versions import register_version

        root, agent = self.registry.models_root, run["agent_id"]
        parent = req.get("parent_id")
        if req.get("base"):
            a = await self.db("get_agent", agent)
            base = await self.db_call(register_version, self.ledger, root, agent, Path(req["base"]),
                                      served_as=a.get("model") or None, profile=a.get("profile") or None)
            await self.db_call(record_initial, self.ledger, root, agent, base["id"], cfg=self.cfg.registry)
            parent = parent or base["id"]
        version = await self.db_call(
            register_version, self.ledger, root, agent, Path(req["candidate"]), run_id=run["id"], parent_id=parent,
            dataset_version=req.get("dataset_version"), config_hash=req.get("config_hash"), policy=req.get("policy"))
        log.info("run %s: candidate registered as %s (parent %s)", run["id"], version["id"], parent)
        return version

    async def _model_in_service(self, agent_id: str) -> str | None:
        from ..registry.deploy import model_in_service

        try:
            agent = await self.db("get_agent", agent_id)
        except LedgerError:
            agent = {}
        path = model_in_service(self.cfg.registry, self.state_dir, agent_id, (agent or {}).get("model"))
        return str(path) if path else None

    async def _run_stage(self, run: dict, stage: dict) -> Outcome:
        run_id = run["id"]
        run_dir = self.state_dir / "runs" / str(run_id)
        stage_dir = run_dir / f"{stage['seq']:02d}-{stage['name']}"
        has_ckpt = bool(stage.get("checkpoint"))
        spec = StageSpec(
            run_id=run_id, stage_id=stage["id"], stage=stage["name"], agent_id=run["agent_id"],
            run_dir=run_dir, stage_dir=stage_dir, checkpoint_dir=stage_dir / "checkpoints",
            params=dict(run.get("params") or {}), resume=has_ckpt,
            heartbeat_s=self._heartbeat_s(),
            extra={"limits": {"memory_mb": self.cfg.daemon.worker_memory_limit_mb,
                              "file_mb": self.cfg.daemon.worker_file_limit_mb},
                   # Where stages reach the platform (gradebook, critic); the token itself is never written
                   # into the spec: the worker reads it from the variable named here.
                   "scoring_url": self.cfg.scoring.base_url, "token_env": self.cfg.scoring.token_env,
                   # The dataset stage: the token file's path (not its content), the run kind (targeted-sft
                   # builds the targeted dataset), how to read evaluations, and the [dataset] section.
                   "token_file": self.cfg.scoring.token_file, "run_kind": run["kind"],
                   "field_map": dict(self.cfg.scoring.field_map),
                   "compliance_keys": list(self.cfg.monitor.signals.compliance_keys),
                   "dataset": self.cfg.dataset.model_dump(),
                   "kb": self.cfg.kb.model_dump(), "state_dir": str(self.state_dir),
                   # The backtest and gate stages: the gate's thresholds and CI settings, and where the
                   # registry keeps versions (the backtest finds the model in service there).
                   "gate": self.cfg.gate.model_dump(), "models_root": str(self.registry.models_root),
                   # The stage's [training.<stage>] defaults (under the run's params), and the model the agent
                   # runs now: training starts from it and the gates compare against it.
                   "defaults": self.cfg.training.for_stage(stage["name"]),
                   # The reward weights, grading weights and critic cache the rl stage starts from.
                   "rewards": self.cfg.rewards.model_dump(),
                   "model_in_service": await self._model_in_service(run["agent_id"])},
        )
        d = self.cfg.daemon
        proc = StageProcess(spec, functools.partial(self._on_event, run_id, stage["id"]),
                            heartbeat_timeout_s=d.heartbeat_timeout_s, stop_grace_s=d.stop_grace_s,
                            python=d.worker_python, launcher=d.launcher, accelerate_config=d.accelerate_config)
        t_start = time.monotonic()
        await proc.start()
        self.stage_procs[run_id] = proc
        await self._set_stage(run_id, stage, StageState.running,
                              "resuming from checkpoint" if has_ckpt else "started",
                              pid=proc.pid, log_path=str(proc.log_path))
        await self.db("update_run_fields", run_id, current_stage=stage["name"])
        if run_id in self.cancel_requests:
            proc.stop("cancel")
        if self.stopping.is_set():
            proc.stop("shutdown")
        tail = asyncio.create_task(self._tail_log(run_id, stage["name"], proc.log_path))
        try:
            outcome = await proc.wait()
        finally:
            tail.cancel()
            self.stage_procs.pop(run_id, None)
        state = {"succeeded": StageState.succeeded, "interrupted": StageState.interrupted,
                 "cancelled": StageState.cancelled}.get(outcome.state, StageState.failed)
        await self._set_stage(run_id, stage, state, outcome.error, exit_code=outcome.exit_code,
                              error=outcome.error, result=outcome.result)
        self.metrics.stage_finished(stage["name"], state, time.monotonic() - t_start)
        # A failed stage is a warning so that `journalctl -p warning` shows it; the others are routine.
        log.log(logging.WARNING if state == StageState.failed else logging.INFO, "run %s stage %s: %s%s", run_id,
                stage["name"], outcome.state, f" ({outcome.error})" if outcome.error else "",
                extra={"run": run_id, "stage": stage["name"]})
        return outcome

    async def _on_event(self, run_id: int, stage_id: int, ev: dict) -> None:
        t = ev["type"]
        if t == "progress":
            total = ev.get("total")
            frac = ev["step"] / total if isinstance(total, int) and total > 0 else None
            await self.db("update_stage_fields", stage_id, progress=frac, eta_s=ev.get("eta_s"))
            self.publish("progress", {"run": run_id, "stage_id": stage_id, "step": ev["step"], "total": total,
                                      "progress": frac, "eta_s": ev.get("eta_s"), "message": ev.get("message", "")},
                         run_id)
        elif t == "metric":
            await self.db("record_metrics", run_id, stage_id, [(ev["name"], ev.get("step"), ev["value"])])
            self.publish("metric", {"run": run_id, "name": ev["name"], "value": ev["value"], "step": ev.get("step")},
                         run_id)
        elif t == "artifact":
            await self.db("record_artifact", run_id, stage_id, ev["name"], ev["path"], ev["sha256"],
                          int(ev.get("size") or 0), str(ev.get("kind") or "file"), ev.get("meta"))
        elif t == "checkpoint":
            await self.db("update_stage_fields", stage_id, checkpoint=ev["path"])

    async def _tail_log(self, run_id: int, stage: str, path: Path) -> None:
        """Push new stage-log lines to subscribers (pr1ctl logs --follow, the console).

        Cancelled when the stage ends; the last lines are flushed then, before the stage's state
        event goes out, so a follower never misses the end of the log.
        """
        offset, partial = 0, b""

        def drain() -> None:
            nonlocal offset, partial
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(1 << 20)
            except FileNotFoundError:
                return
            # Advance even while nobody listens: a follower gets the past from runs.logs (the tail),
            # so pushing from byte 0 to the first subscriber would print the whole log twice.
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if self.server is None or not self.server.subscribers("log"):
                return
            for line in lines:
                self.publish("log", {"run": run_id, "stage": stage, "line": line.decode(errors="replace")}, run_id)

        try:
            while True:
                await asyncio.sleep(0.3)
                drain()
        finally:
            drain()

    def publish(self, topic: str, data: dict, run: int | None = None) -> None:
        if self.server is not None:
            self.server.broadcast(topic, data, run)

    async def poll_cycle(self) -> dict:
        """One poll of every agent: ingest new samples with their cursors, then evaluate signals."""
        from ..monitor.poller import PollError, agent_health

        if self.poller is None:
            raise RpcError(schema.UNAVAILABLE, "monitoring is disabled (monitor.enabled = false)")
        async with self._poll_lock:
            t0, cpu0 = time.monotonic(), time.process_time()
            report: dict[str, Any] = {"started_at": time.time(), "ok": True}
            try:
                agents = await self.poller.fetch_agents()
            except PollError as e:
                report.update(ok=False, error=str(e), duration_s=round(time.monotonic() - t0, 3))
                self.poller.last_cycle = report
                self.metrics.poll_cycle(report)
                log.warning("poll cycle skipped: %s", e)
                return report
            await self.db("upsert_agents", agents)
            if self.registry is not None:
                try:
                    report["agent_manager_drift"] = len(await self.registry.check_agent_manager(agents, report["started_at"]))
                except Exception as e:  # the samples still go in: this check waits for the next cycle
                    log.exception("agent manager drift check failed")
                    report["agent_manager_drift_error"] = f"{type(e).__name__}: {e}"
            known = await self.db_call(store.agent_cursors, self.ledger)
            wanted = {a["id"]: known[a["id"]] for a in agents if a["id"] in known}
            listed = {a["id"]: a["model"] or None for a in agents}
            # Chunks of 1,000 agents, pipelined: while the ledger thread ingests chunk k and evaluates its
            # signals, the loop already fetches chunk k+1. Memory stays bounded at any fleet size, and a
            # kill mid-cycle loses at most HTTP work (samples and cursors commit together).
            polls, outcomes, inserted, t_http, t_db, t_eval = [], [], 0, 0.0, 0.0, 0.0
            mcfg = self.cfg.monitor
            ids = list(wanted)
            pending: asyncio.Future | None = None

            async def settle() -> None:
                nonlocal inserted, t_db, t_eval
                if pending is not None:
                    n, ti, outs, te = await pending
                    inserted, t_db, t_eval = inserted + n, t_db + ti, t_eval + te
                    outcomes.extend(outs)

            for i in range(0, len(ids), 1000):
                th = time.monotonic()
                chunk = await self.poller.poll_agents({a: wanted[a] for a in ids[i:i + 1000]})
                t_http += time.monotonic() - th
                # Each sample is tagged with the model the platform listed for its agent this cycle (unless
                # the evaluation names its own): the monitor judges one version at a time.
                batch = [{"agent_id": p.agent_id, "cursor": p.cursor, "samples": p.samples,
                          "model_version": listed.get(p.agent_id),
                          "health": agent_health(wanted[p.agent_id]["health"], p)} for p in chunk]
                changed = [p.agent_id for p in chunk if p.samples]
                await settle()
                pending = asyncio.ensure_future(self.db_call(_ingest_and_evaluate, self.ledger, batch, changed, mcfg))
                for p in chunk:  # keep a summary; the samples live only in `batch` until written
                    p.samples = [None] * len(p.samples)
                polls.extend(chunk)
            await settle()
            if self.registry is not None:
                await self.registry.check_watches()
            for o in outcomes:
                log.info("trigger %s: agent %s %s -> %s%s", o.trigger_id, o.agent_id, o.signal, o.job_kind,
                         f" (suppressed: {o.suppressed})" if o.suppressed else f", run {o.run_id}",
                         extra={"agent": o.agent_id, "run": o.run_id, "trigger": o.trigger_id})
                self.publish("alert", {"kind": "trigger", "agent": o.agent_id, "signal": o.signal,
                                       "job_kind": o.job_kind, "run": o.run_id, "suppressed": o.suppressed})
                if o.run_id:
                    self.publish("run", {"run": o.run_id, "agent": o.agent_id, "state": "queued", "kind": o.job_kind,
                                         "actor": "daemon", "reason": f"{o.signal} signal fired"}, o.run_id)
                    self.wakeup.set()
            invalid: dict[str, int] = {}
            for p in polls:
                for k, v in p.invalid.items():
                    invalid[k] = invalid.get(k, 0) + v
            fetched = sum(len(p.samples) for p in polls)
            report.update(
                agents=len(agents), fetched=fetched, inserted=inserted, invalid=invalid,
                agent_errors=sum(1 for p in polls if p.error), triggers=len(outcomes),
                runs_created=[o.run_id for o in outcomes if o.run_id], duration_s=round(time.monotonic() - t0, 3),
                http_s=round(t_http, 3), ingest_s=round(t_db, 3),
                ingest_per_s=round(inserted / t_db) if t_db > 0 else None,
                evaluate_s=round(t_eval, 3), cpu_s=round(time.process_time() - cpu0, 3),
            )
            self.poller.last_cycle = report
            self.metrics.poll_cycle(report)
            self.publish("agent", {"kind": "poll", "agents": len(agents), "inserted": inserted})
            return report

    async def gradebook_sync(self) -> dict:
        """Pull new gradebook entries (>= dataset.min_score) since the local copy's cursor, dedupe, append."""
        from ..data.gradebook import LocalGradebook
        from ..monitor.poller import PollError

        if self.poller is None:
            raise RpcError(schema.UNAVAILABLE, "gradebook sync needs the scoring API (monitor.enabled = false)")
        book = LocalGradebook(self.state_dir / "gradebook")
        cursor = await asyncio.to_thread(book.cursor)
        got: list[dict] = []
        for _ in range(1000):  # bounded: 1000 pages x 500 entries per sync
            params = {"min_score": self.cfg.dataset.min_score, "limit": 500}
            if cursor:
                params["since"] = cursor
            try:
                page = await self.poller.client.request("gradebook", "GET", "/v1/gradebook", params=params)
            except PollError as e:
                log.warning("gradebook sync stopped: %s (kept %d new entries)", e, len(got))
                break
            entries = page.get("entries") if isinstance(page, dict) else None
            nxt = page.get("next_cursor") if isinstance(page, dict) else None
            if not isinstance(entries, list):
                break
            # A malformed entry never enters the copy: every dataset build reads it (float(score)).
            got += [e for e in entries if isinstance(e, dict) and e.get("task_id") and e.get("transcript")
                    and isinstance(e.get("score"), int | float) and not isinstance(e.get("score"), bool)]
            if not entries or not nxt or nxt == cursor:
                cursor = nxt or cursor
                break
            cursor = nxt
        added = await asyncio.to_thread(book.append, got, cursor)
        out = {"fetched": len(got), "added": added, "cursor": cursor}
        log.info("gradebook sync: %s", out)
        return out

    async def housekeeping(self) -> None:
        await self.db_call(_wal_checkpoint, self.ledger)
        if self.registry is not None:
            await self.registry.expire_approvals()

    # == stop =====================================================================================
    def request_stop(self, sig: int | None = None) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping (workers checkpoint and exit)", signal.Signals(sig).name if sig else "stop")
            systemd.notify("STOPPING=1\nSTATUS=stopping: asking stage workers to checkpoint")
            self.stopping.set()
            self.wakeup.set()
            for proc in self.stage_procs.values():
                proc.stop("shutdown")

    async def _shutdown(self) -> None:
        self.request_stop()
        if self.server is not None:
            self.server.accepting = False
        if self.run_tasks:
            await asyncio.wait(list(self.run_tasks.values()), timeout=self.cfg.daemon.stop_grace_s + 10)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.server is not None:
            await self.server.close()
        if self.poller is not None:
            await self.poller.close()
        if self.scoreboard is not None:
            await self.scoreboard.close()
        if self.registry is not None:
            await self.registry.close()
        if self.notifier is not None:
            await self.notifier.close()  # last: what the shutdown itself raised still gets sent, briefly
        if self.ledger is not None:
            await self.db_call(self.ledger.close)
        log.info("pr1d stopped")

    async def reload(self) -> None:
        """SIGHUP: re-read every config layer; an invalid new config is refused and the old one stays."""
        try:
            new = await asyncio.to_thread(load_config, self.config_paths, overrides=self.overrides)
        except ConfigError as e:
            self.reload_error = str(e)
            log.error("config reload refused, keeping the running config:\n%s", e)
            systemd.notify("STATUS=config reload refused (see journal); running with the previous config")
            return
        if new.state_path() != self.state_dir or new.socket() != self.cfg.socket():
            log.warning("config reload: state_dir/socket_path changes need a restart; other keys applied")
        self.cfg, self.reload_error = new, None
        if self.server is not None:
            self.server.cfg = new.rpc
            self.server.resolver.update(new.auth)
        if self.registry is not None:
            self.registry.update_config(registry=new.registry, approvals=new.approvals, watch=new.watch)
        if self.scoreboard is not None:
            self.scoreboard.cfg = new.scoreboard
        if self.notifier is not None:
            self.notifier = self.notifier.reconfigured(new.notify)
        log.info("config reloaded")
        systemd.notify("STATUS=config reloaded")

    # == socket API handlers ======================================================================
    def _handlers(self) -> dict[str, Callable]:
        names = {
            "status": self.h_status, "whoami": self.h_whoami, "agents.list": self.h_agents,
            "agents.hold": self.h_hold, "agents.scores": self.h_scores, "agents.unhold": self.h_unhold, "runs.list": self.h_runs,
            "runs.show": self.h_show, "runs.logs": self.h_logs, "runs.metrics": self.h_metrics, "runs.backtest": self.h_backtest,
            "runs.trigger": self.h_trigger, "runs.cancel": self.h_cancel, "runs.approve": self.h_approve,
            "runs.reject": self.h_reject, "deployments.list": self.h_deployments,
            "deployments.rollback": self.h_rollback, "audit.list": self.h_audit,
            "events.subscribe": self.h_subscribe, "events.unsubscribe": self.h_unsubscribe,
            "ledger.backup": self.h_backup, "monitor.poll": self.h_poll, "monitor.triggers": self.h_triggers,
            "scoreboard.show": self.h_scoreboard, "ledger.compact": self.h_compact, "kb.ingest": self.h_kb_ingest,
            "gradebook.sync": self.h_gradebook_sync, "state.backup": self.h_state_backup,
        }
        return {k: _mapped_errors(v) for k, v in names.items()}

    async def h_status(self, conn: Connection, p: Any) -> dict:
        # One hop off the loop and off the ledger thread (WAL reads beside its writes), so status never waits
        # for a poll cycle's ingest; cheap because the ledger's triggers keep the run counts and the registry
        # part is cached until the registry changes (docs/architecture.md, "Status at fleet scale").
        counts, registry = await asyncio.to_thread(
            lambda: (self.ledger.count_runs_by_state(), self.registry.status_now() if self.registry else None))
        jobs_out = []
        if self.scheduler is not None:
            for j in self.scheduler.get_jobs():
                jobs_out.append({"id": j.id, "name": j.name, "trigger": str(j.trigger),
                                 "next_run_time": j.next_run_time.isoformat() if j.next_run_time else None})
        return {
            "version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
            "state_dir": str(self.state_dir), "socket": str(self.cfg.socket()),
            "queue_length": counts.get(RunState.queued, 0), "runs_by_state": counts,
            "running": [{"run": rid, "stage": pr.spec.stage, "pid": pr.pid} for rid, pr in self.stage_procs.items()],
            "scheduler_jobs": jobs_out, "burst": self.burst, "stopping": self.stopping.is_set(),
            "config_reload_error": self.reload_error,
            "clients": len(self.server.conns) if self.server else 0,
            "registry": registry,
            "scoreboard": {"alerts": self.scoreboard.alerts, **self.scoreboard.snapshot()["metrics"]}
            if self.scoreboard else None,
            "notify": self.notifier.stats() if self.notifier else None,
            "monitor": {
                "enabled": self.poller is not None,
                "scoring_url": self.cfg.scoring.base_url,
                "last_cycle": self.poller.last_cycle if self.poller else None,
                "endpoints": {k: v.to_dict() for k, v in self.poller.client.health.items()} if self.poller else {},
            },
        }

    async def h_whoami(self, conn: Connection, p: Any) -> dict:
        return {"user": conn.peer.user, "uid": conn.peer.uid, "role": conn.peer.role}

    async def h_agents(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db("list_agents")

    async def h_scores(self, conn: Connection, p: Any) -> list[list]:
        await self.db("get_agent", p.agent)
        rows = await self.db_call(store.recent_samples, self.ledger, p.agent, p.limit)
        return [[ts, score, status] for ts, score, status, _rubric, _eid in rows]

    async def h_hold(self, conn: Connection, p: Any) -> dict:
        a = await self.db("set_hold", p.agent, True, conn.user, p.reason or None)
        self.publish("agent", {"agent": p.agent, "hold": True, "actor": conn.user})
        return a

    async def h_unhold(self, conn: Connection, p: Any) -> dict:
        a = await self.db("set_hold", p.agent, False, conn.user, p.reason or None)
        self.publish("agent", {"agent": p.agent, "hold": False, "actor": conn.user})
        return a

    async def h_runs(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db("list_runs", state=p.state, agent_id=p.agent, kind=p.kind, limit=p.limit,
                             before_id=p.before_id)

    async def h_show(self, conn: Connection, p: Any) -> dict:
        run = await self.db("run_detail", p.run)
        # Why the run exists, with the numbers: the monitor's trigger row (None for a manual run).
        run["trigger"] = (await self.db_call(store.trigger, self.ledger, run["trigger_id"])
                          if run.get("trigger_id") is not None else None)
        return run

    async def h_metrics(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db("metrics", p.run)

    async def h_backtest(self, conn: Connection, p: Any) -> dict:
        """The newest backtest report of a run, read from its artifact and checked against the recorded hash."""
        run = await self.db("run_detail", p.run)
        arts = [a for a in run["artifacts"] if a["name"] == "backtest.json"]
        if not arts:
            raise RpcError(schema.NOT_FOUND, f"run {p.run} has no backtest report (state {run['state']}, "
                                             f"stage {run.get('current_stage') or '-'})")
        art = arts[-1]
        report = await asyncio.to_thread(_read_report, Path(art["path"]), art["sha256"])
        if not p.items:
            report.pop("items", None)
        figures = [a["path"] for a in run["artifacts"] if a["name"] == "backtest.png"]
        return {"run": p.run, "path": art["path"], "sha256": art["sha256"],
                "figure": figures[-1] if figures else None, "report": report}

    async def h_logs(self, conn: Connection, p: Any) -> dict:
        stages = await self.db("stages", p.run)
        out = []
        for st in stages:
            if p.stage and st["name"] != p.stage:
                continue
            if not st.get("log_path"):
                continue
            out.append({"stage": st["name"], **await asyncio.to_thread(_tail_file, Path(st["log_path"]), p.tail_bytes)})
        return {"run": p.run, "logs": out}

    async def h_trigger(self, conn: Connection, p: Any) -> dict:
        if self.stopping.is_set():
            raise RpcError(schema.UNAVAILABLE, "pr1d is shutting down; trigger again once it is back")
        try:
            stages = plan_for(p.kind)
        except UnknownPlan as e:
            raise RpcError(schema.INVALID_PARAMS, str(e)) from None
        agent = await self.db("get_agent", p.agent)
        if agent["hold"]:
            raise RpcError(schema.CONFLICT, f"agent {p.agent} is on hold ({agent.get('hold_reason') or 'no reason'}, "
                                            f"by {agent.get('hold_by')}); `pr1ctl unhold {p.agent}` first")
        run, created = await self.db("create_run", p.agent, p.kind, conn.user, params=p.params,
                                     idempotency_key=p.idempotency_key, reason=p.reason or f"manual trigger by {conn.user}",
                                     stages=list(stages))
        if created:
            self.publish("run", {"run": run["id"], "agent": p.agent, "state": run["state"], "kind": p.kind,
                                 "actor": conn.user, "reason": run["reason"]}, run["id"])
            self.wakeup.set()
        return {"run": run, "created": created}

    async def h_cancel(self, conn: Connection, p: Any) -> dict:
        run = await self.db("get_run", p.run)
        reason = p.reason or f"cancelled by {conn.user}"
        proc = self.stage_procs.get(p.run)
        if run["state"] == RunState.running and proc is not None:
            self.cancel_requests[p.run] = (conn.user, reason)
            proc.stop("cancel")
            return {"run": p.run, "state": "cancelling"}
        if run["state"] == RunState.running:
            # Between stages: the supervisor sees the request when it starts the next stage.
            self.cancel_requests[p.run] = (conn.user, reason)
            return {"run": p.run, "state": "cancelling"}
        out = await self._set_run(p.run, RunState.cancelled, conn.user, reason)
        return {"run": p.run, "state": out["state"]}

    async def h_approve(self, conn: Connection, p: Any) -> dict:
        return await self.registry.approve(p.run, conn.user, p.reason, accept_inconclusive=p.accept_inconclusive)

    async def h_reject(self, conn: Connection, p: Any) -> dict:
        return await self.registry.reject(p.run, conn.user, p.reason)

    async def h_deployments(self, conn: Connection, p: Any) -> list[dict]:
        if p.agent is not None:
            await self.db("get_agent", p.agent)  # NOT_FOUND "no such agent", as hold says, not an empty list
        return await self.registry.deployments(p.agent, p.limit)

    async def h_rollback(self, conn: Connection, p: Any) -> dict:
        return await self.registry.rollback(p.agent, conn.user, p.reason, p.to)

    async def h_scoreboard(self, conn: Connection, p: Any) -> dict:
        return self.scoreboard.snapshot(p.agent)

    async def h_audit(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db("audit_log", p.entity, p.entity_id, p.limit)

    async def h_subscribe(self, conn: Connection, p: Any) -> dict:
        bad = [t for t in p.topics if t not in schema.TOPICS]
        if bad:
            raise RpcError(schema.INVALID_PARAMS, f"unknown topic(s) {bad}; known: {list(schema.TOPICS)}")
        conn.topics, conn.run_filter = frozenset(p.topics), p.run
        return {"topics": sorted(conn.topics), "run": p.run}

    async def h_unsubscribe(self, conn: Connection, p: Any) -> dict:
        conn.topics = frozenset()
        return {"topics": []}

    async def h_poll(self, conn: Connection, p: Any) -> dict:
        return await self.poll_cycle()

    async def h_triggers(self, conn: Connection, p: Any) -> list[dict]:
        if p.agent is not None:
            await self.db("get_agent", p.agent)  # NOT_FOUND "no such agent", as hold says, not an empty list
        return await self.db_call(store.triggers, self.ledger, p.agent, p.limit)

    async def h_kb_ingest(self, conn: Connection, p: Any) -> dict:
        """Run the kb_ingest stage worker (embedding needs torch, which the daemon never loads)."""
        path = Path(p.path)
        if not path.is_absolute():
            raise RpcError(schema.INVALID_PARAMS, "path must be absolute (the daemon reads it)")
        job = self.state_dir / "jobs" / f"kb-ingest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(conn)}"
        spec = StageSpec(run_id=0, stage_id=0, stage="kb_ingest", run_dir=job, stage_dir=job,
                         checkpoint_dir=job / "checkpoints", params={"path": str(path)}, resume=False,
                         heartbeat_s=self._heartbeat_s(),
                         extra={"kb": self.cfg.kb.model_dump(), "state_dir": str(self.state_dir)})
        d = self.cfg.daemon

        async def sink(ev: dict) -> None:
            if ev["type"] == "progress":
                self.publish("progress", {"job": "kb_ingest", "step": ev["step"], "total": ev.get("total"),
                                          "message": ev.get("message", "")})

        proc = StageProcess(spec, sink, heartbeat_timeout_s=d.heartbeat_timeout_s, stop_grace_s=d.stop_grace_s,
                            python=d.worker_python)
        await proc.start()
        out = await proc.wait()
        await self.db("audit", conn.user, "kb_ingest", "kb", self.cfg.kb.store,
                      details={"path": str(path), "state": out.state, "error": out.error, "result": out.result})
        if out.state != "succeeded":
            raise RpcError(schema.INTERNAL_ERROR, f"kb ingest failed: {out.error} (log: {proc.log_path})")
        return out.result or {}

    async def h_gradebook_sync(self, conn: Connection, p: Any) -> dict:
        return await self.gradebook_sync()

    async def h_compact(self, conn: Connection, p: Any) -> dict:
        return await self.compact(conn.user)

    async def compact(self, actor: str = "daemon") -> dict:
        r = self.cfg.retention
        out = await self.db_call(store.compact, self.ledger, r.samples_days, r.keep_per_agent, r.metrics_days, r.vacuum)
        log.info("ledger compacted by %s: %s", actor, out)
        return out

    async def h_backup(self, conn: Connection, p: Any) -> dict:
        dest = Path(p.path)
        if not dest.is_absolute():
            raise RpcError(schema.INVALID_PARAMS, "backup path must be absolute (it is written by the daemon)")
        # Checked here too (Ledger.backup re-checks) so a refusal is the caller's error, not an internal one.
        why = await asyncio.to_thread(store.backup_refusal, dest, self.state_dir / "ledger.sqlite")
        if why:
            raise RpcError(schema.INVALID_PARAMS, why)
        out = await self.db("backup", dest)
        await self.db("audit", conn.user, "backup", "ledger", "ledger", details={"path": str(out)})
        return {"path": str(out), "bytes": out.stat().st_size}

    async def h_state_backup(self, conn: Connection, p: Any) -> dict:
        """`pr1ctl backup DIR`: the whole state, online; pr1d/backup.py says what goes in and why it is consistent."""
        from .. import backup

        dest = Path(p.path)
        if not dest.is_absolute():
            raise RpcError(schema.INVALID_PARAMS, "backup folder must be absolute (it is written by the daemon)")
        layout = backup.Layout.from_config(self.cfg, self.state_dir)
        try:
            created = await asyncio.to_thread(backup.prepare_destination, dest, layout)
        except (backup.BackupError, OSError) as e:
            raise RpcError(schema.CONFLICT, str(e)) from None
        try:
            # The ledger first, on its own thread (its only writer): the snapshot everything else is chosen from.
            await self.db("backup", dest / "ledger.sqlite")
            out = await asyncio.to_thread(backup.complete_backup, dest, layout, version=__version__, actor=conn.user,
                                          max_run_file_bytes=p.max_run_file_mb << 20)
        except BaseException as e:
            await asyncio.to_thread(backup.discard, dest, created)  # never leave a backup that looks whole
            if isinstance(e, backup.BackupError | OSError | sqlite3.Error):
                raise RpcError(schema.INTERNAL_ERROR, f"backup to {dest} failed (removed again): {e}") from None
            raise
        await self.db("audit", conn.user, "backup", "state", str(self.state_dir), details=out)
        log.info("state backed up by %s to %s: %s files, %s bytes", conn.user, dest, out["files"], out["bytes"])
        return out


def _mapped_errors(fn: Callable) -> Callable:
    """Ledger exceptions become JSON-RPC errors with stable codes."""

    @functools.wraps(fn)
    async def wrapper(conn: Connection, p: Any) -> Any:
        try:
            return await fn(conn, p)
        except NotFound as e:
            raise RpcError(schema.NOT_FOUND, str(e)) from None
        except RegistryError as e:
            raise RpcError(schema.CONFLICT, str(e)) from None
        except (Conflict, IllegalTransition) as e:
            raise RpcError(schema.CONFLICT, str(e), getattr(e, "data", None)) from None
        except LedgerError as e:
            raise RpcError(schema.INTERNAL_ERROR, str(e)) from None

    return wrapper


def _ingest_and_evaluate(ledger: Ledger, batch: list[dict], changed: list[str], mcfg: Any) -> tuple:
    """Ledger-thread half of a poll chunk: write samples+cursors, then evaluate the changed agents."""
    from ..monitor.evaluate import evaluate_agents

    t = time.monotonic()
    n = store.ingest_polls(ledger, batch)
    ti = time.monotonic() - t
    outs = evaluate_agents(ledger, changed, mcfg)
    return n, ti, outs, time.monotonic() - t - ti


def _wal_checkpoint(ledger: Ledger) -> None:
    from sqlalchemy import text

    with ledger.engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def _read_report(path: Path, sha256: str) -> dict:
    """A stage's JSON report, refused when its bytes no longer match the hash recorded with the artifact."""
    import hashlib
    import json

    try:
        data = path.read_bytes()
    except OSError as e:
        raise RpcError(schema.NOT_FOUND, f"backtest report {path}: {e.strerror or e}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RpcError(schema.CONFLICT, f"backtest report {path} changed since the stage recorded it "
                                        f"(sha256 {sha256[:12]}...); it cannot be trusted")
    return json.loads(data)


def _tail_file(path: Path, n: int) -> dict:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - n))
            data = f.read(n)
    except FileNotFoundError:
        return {"text": "", "offset": 0, "truncated": False}
    return {"text": data.decode(errors="replace"), "offset": size, "truncated": size > n}


def _is_our_worker(pid: int, stage: str, run_dir: Path) -> bool:
    """Whether ``pid`` still is that stage's worker: the pid a crashed daemon recorded may since belong to
    anything else, another pr1d's worker included, so both the stage module and this run's spec path must
    be on its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    prefix = str(run_dir).encode() + b"/"
    return f"pr1d.stages.{stage}".encode() in argv and any(a.startswith(prefix) for a in argv)


async def _terminate_pid(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        await asyncio.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
