"""The pr1d daemon's lifecycle: lock, ledger thread, scheduler, recovery, and the parts it composes.

Reads top to bottom as the process lives: start (lock, recover, listen, READY), serve (dispatch
queued runs into stage workers, answer the socket), stop (STOPPING, ask workers to checkpoint,
mark them interrupted, exit). The parts: run supervision (pr1d/daemon/runs.py), the socket API's
handlers (pr1d/daemon/handlers.py), the poll cycle (pr1d/monitor/cycle.py), the gradebook sync
(pr1d/data/gradebook_sync.py), the registry, the scoreboard and the notifier.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..ledger import store
from ..ledger.states import RunState, StageState
from ..ledger.store import Ledger
from ..pipeline.slurm import pending_job
from ..rpc import schema
from ..rpc.auth import RoleResolver
from ..rpc.schema import RpcError
from ..rpc.server import RpcServer
from . import jobs, metrics, systemd
from .handlers import Handlers, check_handlers
from .lock import StateLock
from .runs import RunSupervisor, is_our_worker, terminate_pid

if TYPE_CHECKING:
    from ..monitor.cycle import PollCycle

log = logging.getLogger("pr1d")
T = TypeVar("T")


class Daemon:
    """One pr1d process: holds the state directory's lock, the ledger's thread and the socket, and composes
    run supervision, the handlers, the poll cycle, the registry, the scoreboard and the notifier."""

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
        self.reload_error: str | None = None
        self.poller: Any = None  # pr1d.monitor.poller.Poller when monitor.enabled
        self.poll_cycle: PollCycle | None = None  # when monitor.enabled: the poller's cycle (pr1d/monitor/cycle.py)
        self.registry: Any = None  # pr1d.registry.service.RegistryService
        self.scoreboard: Any = None  # pr1d.scoreboard.ParallelScoreboard
        self.notifier: Any = None  # pr1d.notify.Notifier: [notify] webhooks
        self.metrics = metrics.DaemonMetrics()  # the daemon's own health on /metrics (pr1d/daemon/metrics.py)
        self.runs = RunSupervisor(self)
        check_handlers()  # a schema method without its handler stops the daemon here, not on first call

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
        if self.poller is not None:
            from ..monitor.cycle import PollCycle

            self.poll_cycle = PollCycle(self.poller, self.ledger, self.cfg.monitor, db_call=self.db_call,
                                        publish=self.publish, wake=self.wakeup.set, record=self.metrics.poll_cycle,
                                        registry=self.registry)
        self.server = RpcServer(self.cfg.socket(), self.cfg.rpc, RoleResolver(self.cfg.auth), Handlers(self).table())
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
            if self.burst and self.poll_cycle is not None:
                await self.poll_cycle.run()  # burst: one real poll cycle, then drain what it queued
            await self.runs.dispatch_loop()
        finally:
            watchdog.cancel()
            await self._shutdown()
        return 0

    async def db_call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a ledger call on the single ledger thread: the loop never blocks on disk."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *args, **kw))

    async def _recover(self) -> None:
        """After a crash: stop orphaned workers, mark their stages interrupted, requeue interrupted runs; and
        mark skipped the stages an older release left pending in runs that had already ended."""
        orphans = await self.db_call(self.ledger.recover_after_restart)
        stranded = await self.db_call(self.ledger.skip_stranded_stages)
        if stranded:
            log.info("marked %d never-run stage(s) of ended runs skipped (ledger written before `skipped`)",
                     len(stranded))
        for st in orphans:
            pid = st.get("pid")
            if pid and is_our_worker(pid, st["name"], self.state_dir / "runs" / str(st["run_id"])):
                log.warning("stopping orphaned worker pid %s (run %s stage %s)", pid, st["run_id"], st["name"],
                            extra={"run": st["run_id"], "stage": st["name"]})
                await terminate_pid(pid, self.cfg.daemon.stop_grace_s)
        for run in await self.db_call(self.ledger.runs_by_state, RunState.interrupted):
            # A Slurm job is no orphan: it outlives the daemon by design. Its run is not requeued behind others
            # but started first, and its stage re-attaches to the job (or records how it ended meanwhile).
            job = next((j for st in await self.db_call(self.ledger.stages, run["id"])
                        if st["state"] == StageState.interrupted and st.get("log_path")
                        and (j := pending_job(Path(st["log_path"]).parent))), None)
            if job is not None:
                log.info("run %s: its Slurm job %s outlived the daemon; re-attaching", run["id"], job,
                         extra={"run": run["id"]})
                self.runs.reattach.append((run["id"], job))
                continue
            await self.db_call(self.ledger.transition_run, run["id"], RunState.queued, "daemon", "resuming after daemon restart")

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

    # == serve: what the parts share, and the scheduled jobs' work ==================================
    def publish(self, topic: str, data: dict, run: int | None = None) -> None:
        """Push an event to the subscribers of ``topic`` (and of ``run``, when given)."""
        if self.server is not None:
            self.server.broadcast(topic, data, run)

    async def housekeeping(self) -> None:
        """Every 10 minutes: checkpoint the WAL, expire stale approvals."""
        await self.db_call(_wal_checkpoint, self.ledger)
        if self.registry is not None:
            await self.registry.expire_approvals()

    async def compact(self, actor: str = "daemon") -> dict:
        """Apply [retention]: the daily job, and `pr1ctl ledger compact`."""
        r = self.cfg.retention
        out = await self.db_call(store.compact, self.ledger, r.samples_days, r.keep_per_agent, r.metrics_days, r.vacuum)
        log.info("ledger compacted by %s: %s", actor, out)
        return out

    async def gradebook_sync(self) -> dict:
        """Bring the local gradebook copy (state_dir/gradebook) up to date: the nightly job and `gradebook.sync`."""
        from ..data.gradebook import LocalGradebook
        from ..data.gradebook_sync import sync_gradebook

        if self.poller is None:
            raise RpcError(schema.UNAVAILABLE, "gradebook sync needs the scoring API (monitor.enabled = false)")
        return await sync_gradebook(self.poller.client, LocalGradebook(self.state_dir / "gradebook"),
                                    self.cfg.dataset.min_score)

    # == stop =====================================================================================
    def request_stop(self, sig: int | None = None) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping (workers checkpoint and exit)", signal.Signals(sig).name if sig else "stop")
            systemd.notify("STOPPING=1\nSTATUS=stopping: asking stage workers to checkpoint")
            self.stopping.set()
            self.wakeup.set()
            self.runs.stop_all("shutdown")

    async def _shutdown(self) -> None:
        self.request_stop()
        if self.server is not None:
            self.server.accepting = False
        await self.runs.drain(timeout=self.cfg.daemon.stop_grace_s + 10)
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
        if self.poll_cycle is not None:
            self.poll_cycle.cfg = new.monitor
        if self.notifier is not None:
            self.notifier = self.notifier.reconfigured(new.notify)
        log.info("config reloaded")
        systemd.notify("STATUS=config reloaded")


def _wal_checkpoint(ledger: Ledger) -> None:
    from sqlalchemy import text

    with ledger.engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
