"""The socket API's handlers: one method of :class:`Handlers` per method in pr1d/rpc/schema.py's METHODS.

The name says which: ``runs.show`` is answered by ``Handlers.runs_show`` (dots become underscores).
:meth:`Handlers.table` builds the server's method table from METHODS by that rule, and
:func:`check_handlers` refuses to start the daemon when a schema method has no handler or a handler no
schema method. Ledger and registry exceptions become JSON-RPC errors with stable codes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..ledger import samples, store
from ..ledger.states import IllegalTransition, RunState
from ..ledger.store import Conflict, LedgerError, NotFound
from ..params import ParamsError, validate_run_params
from ..pipeline.launcher import StageProcess
from ..pipeline.plans import UnknownPlan, plan_for
from ..pipeline.spec import Registry, StageSpec
from ..registry.versions import RegistryError
from ..rpc import schema
from ..rpc.schema import RpcError
from ..rpc.server import Connection, Handler
from .runs import heartbeat_s

if TYPE_CHECKING:
    from ..config import Config
    from .core import Daemon

log = logging.getLogger("pr1d")


class HandlerMismatch(RuntimeError):
    """The handlers and the schema disagree: a programming error, caught when the daemon starts."""


def handler_name(method: str) -> str:
    """The :class:`Handlers` method that answers ``method``: ``runs.show`` -> ``runs_show``."""
    return method.replace(".", "_")


def check_handlers(cls: type | None = None, methods: Mapping[str, Any] = schema.METHODS) -> None:
    """Raise :class:`HandlerMismatch` unless every schema method has a handler and every handler a method.

    A handler is a public coroutine method of ``cls``; helpers are private (``_name``).
    """
    cls = cls or Handlers
    handlers = {n for klass in cls.__mro__ if klass is not object for n, f in vars(klass).items()
                if not n.startswith("_") and inspect.iscoroutinefunction(f)}
    wanted = {handler_name(m): m for m in methods}
    problems = [f"schema method {m!r} has no handler (expected {cls.__name__}.{h})"
                for h, m in sorted(wanted.items()) if h not in handlers]
    problems += [f"handler {cls.__name__}.{h} answers no schema method (add it to METHODS, or make it private)"
                 for h in sorted(handlers - wanted.keys())]
    if problems:
        raise HandlerMismatch("pr1d/daemon/handlers.py and pr1d/rpc/schema.py METHODS disagree: "
                              + "; ".join(problems))


class Handlers:
    """What the daemon answers on its socket; each handler gets the connection and the validated params."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.ledger, self.registry, self.state_dir = daemon.ledger, daemon.registry, daemon.state_dir
        self.db_call, self.publish = daemon.db_call, daemon.publish
        self.stopping, self.wakeup = daemon.stopping, daemon.wakeup

    @property
    def cfg(self) -> Config:
        """The daemon's config as it is now (SIGHUP replaces it)."""
        return self.d.cfg

    def _heartbeat_s(self) -> float:
        return heartbeat_s(self.cfg)

    def table(self) -> dict[str, Handler]:
        """The server's method table: every schema method to its handler, with errors mapped."""
        return {name: _mapped_errors(getattr(self, handler_name(name))) for name in schema.METHODS}

    async def status(self, conn: Connection, p: Any) -> dict:
        # One hop off the loop and off the ledger thread (WAL reads beside its writes), so status never waits
        # for a poll cycle's ingest; cheap because the ledger's triggers keep the run counts and the registry
        # part is cached until the registry changes (docs/architecture.md, "Status at fleet scale").
        counts, registry = await asyncio.to_thread(
            lambda: (self.ledger.count_runs_by_state(), self.registry.status_now() if self.registry else None))
        jobs_out = []
        if self.d.scheduler is not None:
            for j in self.d.scheduler.get_jobs():
                jobs_out.append({"id": j.id, "name": j.name, "trigger": str(j.trigger),
                                 "next_run_time": j.next_run_time.isoformat() if j.next_run_time else None})
        return {
            "version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.d.started, 3),
            "state_dir": str(self.state_dir), "socket": str(self.cfg.socket()),
            "queue_length": counts.get(RunState.queued, 0), "runs_by_state": counts,
            "running": [{"run": rid, "stage": pr.spec.stage, "pid": pr.pid,
                         **({"slurm_job": pr.job_id} if getattr(pr, "job_id", None) else {})}
                        for rid, pr in self.d.runs.stage_procs.items()],
            "scheduler_jobs": jobs_out, "burst": self.d.burst, "stopping": self.stopping.is_set(),
            "config_reload_error": self.d.reload_error,
            "clients": len(self.d.server.conns) if self.d.server else 0,
            "registry": registry,
            "scoreboard": {"alerts": self.d.scoreboard.alerts, **self.d.scoreboard.snapshot()["metrics"]}
            if self.d.scoreboard else None,
            "notify": self.d.notifier.stats() if self.d.notifier else None,
            "monitor": {
                "enabled": self.d.poller is not None,
                "scoring_url": self.cfg.scoring.base_url,
                "last_cycle": self.d.poller.last_cycle if self.d.poller else None,
                "endpoints": {k: v.to_dict() for k, v in self.d.poller.client.health.items()} if self.d.poller else {},
            },
        }

    async def whoami(self, conn: Connection, p: Any) -> dict:
        return {"user": conn.peer.user, "uid": conn.peer.uid, "role": conn.peer.role}

    async def agents_list(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db_call(self.ledger.list_agents)

    async def agents_scores(self, conn: Connection, p: Any) -> list[list]:
        await self.db_call(self.ledger.get_agent, p.agent)
        rows = await self.db_call(samples.recent_samples, self.ledger, p.agent, p.limit)
        return [[ts, score, status] for ts, score, status, _rubric, _eid in rows]

    async def agents_hold(self, conn: Connection, p: Any) -> dict:
        a = await self.db_call(self.ledger.set_hold, p.agent, True, conn.user, p.reason or None)
        self.publish("agent", {"agent": p.agent, "hold": True, "actor": conn.user})
        return a

    async def agents_unhold(self, conn: Connection, p: Any) -> dict:
        a = await self.db_call(self.ledger.set_hold, p.agent, False, conn.user, p.reason or None)
        self.publish("agent", {"agent": p.agent, "hold": False, "actor": conn.user})
        return a

    async def runs_list(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db_call(self.ledger.list_runs, state=p.state, agent_id=p.agent, kind=p.kind, limit=p.limit,
                                  before_id=p.before_id)

    async def runs_show(self, conn: Connection, p: Any) -> dict:
        run = await self.db_call(self.ledger.run_detail, p.run)
        # Why the run exists, with the numbers: the monitor's trigger row (None for a manual run).
        run["trigger"] = (await self.db_call(store.trigger, self.ledger, run["trigger_id"])
                          if run.get("trigger_id") is not None else None)
        return run

    async def runs_logs(self, conn: Connection, p: Any) -> dict:
        stages = await self.db_call(self.ledger.stages, p.run)
        out = []
        for st in stages:
            if p.stage and st["name"] != p.stage:
                continue
            if not st.get("log_path"):
                continue
            out.append({"stage": st["name"], **await asyncio.to_thread(_tail_file, Path(st["log_path"]), p.tail_bytes)})
        return {"run": p.run, "logs": out}

    async def runs_metrics(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db_call(self.ledger.metrics, p.run)

    async def runs_backtest(self, conn: Connection, p: Any) -> dict:
        """The newest backtest report of a run, read from its artifact and checked against the recorded hash."""
        run = await self.db_call(self.ledger.run_detail, p.run)
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

    async def runs_trigger(self, conn: Connection, p: Any) -> dict:
        if self.stopping.is_set():
            raise RpcError(schema.UNAVAILABLE, "pr1d is shutting down; trigger again once it is back")
        try:
            stages = plan_for(p.kind)
            validate_run_params(p.kind, p.params, stages)  # a param no stage of the plan reads: refused here
        except (UnknownPlan, ParamsError) as e:
            raise RpcError(schema.INVALID_PARAMS, str(e)) from None
        agent = await self.db_call(self.ledger.get_agent, p.agent)
        if agent["hold"]:
            raise RpcError(schema.CONFLICT, f"agent {p.agent} is on hold ({agent.get('hold_reason') or 'no reason'}, "
                                            f"by {agent.get('hold_by')}); `pr1ctl unhold {p.agent}` first")
        run, created = await self.db_call(self.ledger.create_run, p.agent, p.kind, conn.user, params=p.params,
                                          idempotency_key=p.idempotency_key, reason=p.reason or f"manual trigger by {conn.user}",
                                          stages=list(stages))
        if created:
            self.publish("run", {"run": run["id"], "agent": p.agent, "state": run["state"], "kind": p.kind,
                                 "actor": conn.user, "reason": run["reason"]}, run["id"])
            self.wakeup.set()
        return {"run": run, "created": created}

    async def runs_cancel(self, conn: Connection, p: Any) -> dict:
        return await self.d.runs.cancel(p.run, conn.user, p.reason or f"cancelled by {conn.user}")

    async def runs_approve(self, conn: Connection, p: Any) -> dict:
        return await self.registry.approve(p.run, conn.user, p.reason, accept_inconclusive=p.accept_inconclusive)

    async def runs_reject(self, conn: Connection, p: Any) -> dict:
        return await self.registry.reject(p.run, conn.user, p.reason)

    async def deployments_list(self, conn: Connection, p: Any) -> list[dict]:
        if p.agent is not None:
            await self.db_call(self.ledger.get_agent, p.agent)  # NOT_FOUND "no such agent", as hold says, not an empty list
        return await self.registry.deployments(p.agent, p.limit)

    async def deployments_rollback(self, conn: Connection, p: Any) -> dict:
        return await self.registry.rollback(p.agent, conn.user, p.reason, p.to)

    async def audit_list(self, conn: Connection, p: Any) -> list[dict]:
        return await self.db_call(self.ledger.audit_log, p.entity, p.entity_id, p.limit)

    async def events_subscribe(self, conn: Connection, p: Any) -> dict:
        bad = [t for t in p.topics if t not in schema.TOPICS]
        if bad:
            raise RpcError(schema.INVALID_PARAMS, f"unknown topic(s) {bad}; known: {list(schema.TOPICS)}")
        conn.topics, conn.run_filter = frozenset(p.topics), p.run
        return {"topics": sorted(conn.topics), "run": p.run}

    async def events_unsubscribe(self, conn: Connection, p: Any) -> dict:
        conn.topics = frozenset()
        return {"topics": []}

    async def ledger_backup(self, conn: Connection, p: Any) -> dict:
        dest = Path(p.path)
        if not dest.is_absolute():
            raise RpcError(schema.INVALID_PARAMS, "backup path must be absolute (it is written by the daemon)")
        # Checked here too (Ledger.backup re-checks) so a refusal is the caller's error, not an internal one.
        why = await asyncio.to_thread(store.backup_refusal, dest, self.state_dir / "ledger.sqlite")
        if why:
            raise RpcError(schema.INVALID_PARAMS, why)
        out = await self.db_call(self.ledger.backup, dest)
        await self.db_call(self.ledger.audit, conn.user, "backup", "ledger", "ledger", details={"path": str(out)})
        return {"path": str(out), "bytes": out.stat().st_size}

    async def state_backup(self, conn: Connection, p: Any) -> dict:
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
            await self.db_call(self.ledger.backup, dest / "ledger.sqlite")
            out = await asyncio.to_thread(backup.complete_backup, dest, layout, version=__version__, actor=conn.user,
                                          max_run_file_bytes=p.max_run_file_mb << 20)
        except BaseException as e:
            await asyncio.to_thread(backup.discard, dest, created)  # never leave a backup that looks whole
            if isinstance(e, backup.BackupError | OSError | sqlite3.Error):
                raise RpcError(schema.INTERNAL_ERROR, f"backup to {dest} failed (removed again): {e}") from None
            raise
        await self.db_call(self.ledger.audit, conn.user, "backup", "state", str(self.state_dir), details=out)
        log.info("state backed up by %s to %s: %s files, %s bytes", conn.user, dest, out["files"], out["bytes"])
        return out

    async def kb_ingest(self, conn: Connection, p: Any) -> dict:
        """Run the kb_ingest stage worker (embedding needs torch, which the daemon never loads)."""
        path = Path(p.path)
        if not path.is_absolute():
            raise RpcError(schema.INVALID_PARAMS, "path must be absolute (the daemon reads it)")
        job = self.state_dir / "jobs" / f"kb-ingest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(conn)}"
        spec = StageSpec(run_id=0, stage_id=0, stage="kb_ingest", run_dir=job, stage_dir=job,
                         checkpoint_dir=job / "checkpoints", params={"path": str(path)}, resume=False,
                         heartbeat_s=self._heartbeat_s(), kb=self.cfg.kb,
                         registry=Registry(state_dir=str(self.state_dir)))
        d = self.cfg.daemon

        async def sink(ev: dict) -> None:
            if ev["type"] == "progress":
                self.publish("progress", {"job": "kb_ingest", "step": ev["step"], "total": ev.get("total"),
                                          "message": ev.get("message", "")})

        proc = StageProcess(spec, sink, heartbeat_timeout_s=d.heartbeat_timeout_s, stop_grace_s=d.stop_grace_s,
                            python=d.worker_python)
        await proc.start()
        out = await proc.wait()
        await self.db_call(self.ledger.audit, conn.user, "kb_ingest", "kb", self.cfg.kb.store,
                           details={"path": str(path), "state": out.state, "error": out.error, "result": out.result})
        if out.state != "succeeded":
            raise RpcError(schema.INTERNAL_ERROR, f"kb ingest failed: {out.error} (log: {proc.log_path})")
        return out.result or {}

    async def gradebook_sync(self, conn: Connection, p: Any) -> dict:
        return await self.d.gradebook_sync()

    async def ledger_compact(self, conn: Connection, p: Any) -> dict:
        return await self.d.compact(conn.user)

    async def monitor_poll(self, conn: Connection, p: Any) -> dict:
        if self.d.poll_cycle is None:
            raise RpcError(schema.UNAVAILABLE, "monitoring is disabled (monitor.enabled = false)")
        return await self.d.poll_cycle.run()

    async def scoreboard_show(self, conn: Connection, p: Any) -> dict:
        return self.d.scoreboard.snapshot(p.agent)

    async def monitor_triggers(self, conn: Connection, p: Any) -> list[dict]:
        if p.agent is not None:
            await self.db_call(self.ledger.get_agent, p.agent)  # NOT_FOUND "no such agent", as hold says, not an empty list
        return await self.db_call(store.triggers, self.ledger, p.agent, p.limit)


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
