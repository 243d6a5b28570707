"""Run supervision: the dispatcher that starts queued runs, and each run's stages as supervised workers.

A run's stages run in order, each in its own :class:`~pr1d.pipeline.launcher.StageProcess` (or, with
``launcher = "slurm"``, a :class:`~pr1d.pipeline.slurm.SlurmStageProcess`: a Slurm job); the worker's
events become ledger rows and pushed events, and the last stage's result says how the run ends (a gate
that stops it, the state it ends in, a candidate to register). Also here: telling a crashed daemon's
orphaned workers from unrelated processes that took over their pids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ledger.states import RUN_ENDS_SKIPPING_STAGES, IllegalTransition, RunState, StageState
from ..ledger.store import Ledger, LedgerError
from ..pipeline.events import EventError, StageVerdict
from ..pipeline.launcher import Outcome, StageProcess
from ..pipeline.slurm import SlurmError, SlurmStageProcess, pending_job
from ..pipeline.spec import build_stage_spec

if TYPE_CHECKING:
    from ..config import Config
    from .core import Daemon

log = logging.getLogger("pr1d")


def heartbeat_s(cfg: Config) -> float:
    """How often workers send a heartbeat: four per watchdog timeout, between 50 ms and 5 s."""
    return max(0.05, min(5.0, cfg.daemon.heartbeat_timeout_s / 4))


class RunSupervisor:
    """The daemon's runs: up to ``daemon.max_training_stages`` at once, one stage worker each."""

    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.state_dir = daemon.state_dir
        self.db_call, self.publish, self.metrics = daemon.db_call, daemon.publish, daemon.metrics
        self.stopping, self.wakeup = daemon.stopping, daemon.wakeup
        self.run_tasks: dict[int, asyncio.Task] = {}
        self.stage_procs: dict[int, StageProcess | SlurmStageProcess] = {}  # run id -> running worker
        # Runs whose Slurm job outlived the previous daemon (core.Daemon._recover), with the job id: started
        # before the queue.
        self.reattach: list[tuple[int, str]] = []
        self.cancel_requests: dict[int, tuple[str, str]] = {}  # run id -> (user, reason)

    # Read through the daemon on each use: SIGHUP replaces its config, and the ledger and registry open
    # only once it starts.
    @property
    def cfg(self) -> Config:
        return self.d.cfg

    @property
    def ledger(self) -> Ledger:
        return self.d.ledger

    @property
    def registry(self) -> Any:  # pr1d.registry.service.RegistryService
        return self.d.registry

    def _heartbeat_s(self) -> float:
        return heartbeat_s(self.cfg)

    # == the dispatcher ===========================================================================
    async def dispatch_loop(self) -> None:
        """Start queued runs as slots free up, until the daemon stops (burst mode: until none is left)."""
        while not self.stopping.is_set():
            self.metrics.tick()  # pr1d_loop_tick_age_seconds: a dispatcher that stops turning shows there
            started = await self._start_queued()
            if self.d.burst and not self.run_tasks and not started:
                if not await self.db_call(self.ledger.runs_by_state, RunState.queued):
                    log.info("burst mode: queue empty, exiting")
                    return
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def _start_queued(self) -> int:
        started = 0
        while self.reattach and not self.stopping.is_set():
            run_id, job = self.reattach.pop(0)
            task = asyncio.create_task(self._execute_run(run_id, f"re-attaching to Slurm job {job} after a restart"))
            self.run_tasks[run_id] = task
            task.add_done_callback(lambda _t, rid=run_id: self._run_done(rid))
            started += 1
        while len(self.run_tasks) < self.cfg.daemon.max_training_stages and not self.stopping.is_set():
            run = await self.db_call(self.ledger.next_queued_run, set(self.run_tasks))
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

    async def cancel(self, run_id: int, user: str, reason: str) -> dict:
        """runs.cancel: a queued or awaiting run ends now; a running one when its worker has stopped."""
        run = await self.db_call(self.ledger.get_run, run_id)
        proc = self.stage_procs.get(run_id)
        if run["state"] == RunState.running and proc is not None:
            self.cancel_requests[run_id] = (user, reason)
            proc.stop("cancel")
            return {"run": run_id, "state": "cancelling"}
        if run["state"] == RunState.running:
            # Between stages: the supervisor sees the request when it starts the next stage.
            self.cancel_requests[run_id] = (user, reason)
            return {"run": run_id, "state": "cancelling"}
        out = await self._set_run(run_id, RunState.cancelled, user, reason)
        return {"run": run_id, "state": out["state"]}

    def stop_all(self, why: str) -> None:
        """Ask every running worker to checkpoint and exit (``why``: "shutdown")."""
        for proc in self.stage_procs.values():
            proc.stop(why)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the runs in progress to settle after :meth:`stop_all`."""
        if self.run_tasks:
            await asyncio.wait(list(self.run_tasks.values()), timeout=timeout)

    # == one run, stage by stage ==================================================================
    async def _set_run(self, run_id: int, dst: str, actor: str, reason: str | None, **fields: Any) -> dict:
        run = await self.db_call(self.ledger.transition_run, run_id, dst, actor, reason, **fields)
        if dst in RUN_ENDS_SKIPPING_STAGES:
            # The ledger skipped the stages that never ran in the run's own transaction; say so, so that
            # consoles following the run do not keep showing them as waiting.
            for st in await self.db_call(self.ledger.stages, run_id):
                if st["state"] == StageState.skipped:
                    self.publish("stage", {"run": run_id, "stage": st["name"], "seq": st["seq"],
                                           "state": st["state"], "error": None}, run_id)
        self.publish("run", {"run": run_id, "agent": run["agent_id"], "state": run["state"], "reason": reason,
                             "actor": actor, "kind": run["kind"]}, run_id)
        if self.d.notifier is not None:
            self.d.notifier.run_changed(run, reason)  # awaiting approval, failed: page (in the background)
        return run

    async def _set_stage(self, run_id: int, stage: dict, dst: str, reason: str | None = None, **fields: Any) -> dict:
        st = await self.db_call(self.ledger.transition_stage, stage["id"], dst, "daemon", reason, **fields)
        self.publish("stage", {"run": run_id, "stage": st["name"], "seq": st["seq"], "state": st["state"],
                               "error": st.get("error")}, run_id)
        return st

    async def _execute_run(self, run_id: int, why: str = "dispatched") -> None:
        """Run every stage not yet succeeded, in order; the run ends in exactly one legal state."""
        try:
            run = await self._set_run(run_id, RunState.running, "daemon", why)
        except IllegalTransition:
            return  # cancelled between being picked and being started
        verdict = StageVerdict()
        for stage in await self.db_call(self.ledger.stages, run_id):
            if stage["state"] == StageState.succeeded:
                verdict = StageVerdict.from_result(stage.get("result"))
                continue
            outcome = await self._run_stage(run, stage)
            if outcome.state == "succeeded":
                try:
                    verdict = StageVerdict.from_result(outcome.result)
                except EventError as e:  # a stage that says how the run ends must say it in the contract's terms
                    await self._set_run(run_id, RunState.failed, "daemon", f"stage {stage['name']}: {e}")
                    return
                if verdict.stop_run is not None:  # a gate said no: the run ends here, with its evidence
                    await self._set_run(run_id, verdict.stop_run.state, "daemon", verdict.stop_run.reason,
                                        gate=verdict.gate)
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
        if verdict.registration is not None:
            # A gate that let the candidate through asks for it to be registered: done here, before the
            # run reaches awaiting_approval, so an approval always finds a version to promote.
            try:
                await self._register_candidate(run, verdict.registration.model_dump())
            except (LedgerError, OSError, ValueError) as e:
                await self._set_run(run_id, RunState.failed, "daemon", f"registering the candidate failed: {e}",
                                    gate=verdict.gate, current_stage=None)
                return
        await self._set_run(run_id, verdict.final_state, "daemon", verdict.final_reason,
                            gate=verdict.gate, current_stage=None)

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
            a = await self.db_call(self.ledger.get_agent, agent)
            base = await self.db_call(register_version, self.ledger, root, agent, Path(req["base"]),
                                      served_as=a.get("model") or None, profile=a.get("profile") or None)
            await self.db_call(record_initial, self.ledger, root, agent, base["id"], cfg=self.cfg.registry)
            parent = parent or base["id"]
        version = await self.db_call(
            register_version, self.ledger, root, agent, Path(req["candidate"]), run_id=run["id"], parent_id=parent,
            dataset_version=req.get("dataset_version"), config_hash=req.get("config_hash"), policy=req.get("policy"))
        log.info("run %s: candidate registered as %s (parent %s)", run["id"], version["id"], parent)
        return version

    async def _agent_profile(self, agent_id: str) -> str | None:
        """The agent's platform profile as the monitor last saw it (None for an agent it never listed)."""
        try:
            agent = await self.db_call(self.ledger.get_agent, agent_id)
        except LedgerError:
            return None
        return (agent or {}).get("profile") or None

    async def _model_in_service(self, agent_id: str) -> str | None:
        from ..registry.deploy import model_in_service

        try:
            agent = await self.db_call(self.ledger.get_agent, agent_id)
        except LedgerError:
            agent = {}
        path = model_in_service(self.cfg.registry, self.state_dir, agent_id, (agent or {}).get("model"))
        return str(path) if path else None

    async def _run_stage(self, run: dict, stage: dict) -> Outcome:
        run_id = run["id"]
        has_ckpt = bool(stage.get("checkpoint"))
        # What the worker needs of the config, by section (pr1d/pipeline/spec.py); the token itself is never
        # written into the spec: the worker reads it from the variable or file named there.
        spec = build_stage_spec(self.cfg, run=run, stage=stage, state_dir=self.state_dir,
                                models_root=self.registry.models_root,
                                model_in_service=await self._model_in_service(run["agent_id"]),
                                heartbeat_s=self._heartbeat_s(), resume=has_ckpt,
                                profile=await self._agent_profile(run["agent_id"]))
        d = self.cfg.daemon
        sink = functools.partial(self._on_event, run_id, stage["id"])
        # A stage whose Slurm job outlived the last daemon is followed again, whatever the launcher is now.
        job = pending_job(spec.stage_dir) if stage["state"] == StageState.interrupted else None
        proc: StageProcess | SlurmStageProcess
        if d.launcher == "slurm" or job is not None:
            proc = SlurmStageProcess(spec, sink, heartbeat_timeout_s=d.heartbeat_timeout_s, stop_grace_s=d.stop_grace_s,
                                     slurm=d.slurm, python=d.worker_python, accelerate_config=d.accelerate_config)
        else:
            proc = StageProcess(spec, sink, heartbeat_timeout_s=d.heartbeat_timeout_s, stop_grace_s=d.stop_grace_s,
                                python=d.worker_python, launcher=d.launcher, accelerate_config=d.accelerate_config)
        t_start = time.monotonic()
        if job is not None:
            assert isinstance(proc, SlurmStageProcess)
            proc.attach()
            # The same attempt, followed by another daemon: its number and start time stay.
            why, keep = f"re-attached to Slurm job {job}", dict(attempt=stage["attempt"], started_at=stage["started_at"])
        else:
            try:
                await proc.start()
            except (SlurmError, OSError) as e:
                if not isinstance(proc, SlurmStageProcess):
                    raise
                # sbatch refused (a bad partition, an account limit): the stage fails saying so.
                await self._set_stage(run_id, stage, StageState.running, "submitting to Slurm")
                return await self._stage_ended(run_id, stage, Outcome("failed", None, str(e)), t_start)
            why = "resuming from checkpoint" if has_ckpt else "started"
            keep = {}
            if isinstance(proc, SlurmStageProcess):
                why += f" as Slurm job {proc.job_id}"
        self.stage_procs[run_id] = proc
        # The job id goes to the ledger in the transition's audit row ("started as Slurm job N") and, for
        # re-attaching, to <stage_dir>/slurm.json beside the job's event file.
        await self._set_stage(run_id, stage, StageState.running, why, pid=proc.pid, log_path=str(proc.log_path),
                              **keep)
        await self.db_call(self.ledger.update_run_fields, run_id, current_stage=stage["name"])
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
        out = await self._stage_ended(run_id, stage, outcome, t_start)
        if isinstance(proc, SlurmStageProcess) and not proc.detached:
            proc.mark_recorded()  # the job's end is in the ledger: never re-attach to it
        return out

    async def _stage_ended(self, run_id: int, stage: dict, outcome: Outcome, t_start: float) -> Outcome:
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
            await self.db_call(self.ledger.update_stage_fields, stage_id, progress=frac, eta_s=ev.get("eta_s"))
            self.publish("progress", {"run": run_id, "stage_id": stage_id, "step": ev["step"], "total": total,
                                      "progress": frac, "eta_s": ev.get("eta_s"), "message": ev.get("message", "")},
                         run_id)
        elif t == "metric":
            await self.db_call(self.ledger.record_metrics, run_id, stage_id, [(ev["name"], ev.get("step"), ev["value"])])
            self.publish("metric", {"run": run_id, "name": ev["name"], "value": ev["value"], "step": ev.get("step")},
                         run_id)
        elif t == "artifact":
            await self.db_call(self.ledger.record_artifact, run_id, stage_id, ev["name"], ev["path"], ev["sha256"],
                               int(ev.get("size") or 0), str(ev.get("kind") or "file"), ev.get("meta"))
        elif t == "checkpoint":
            await self.db_call(self.ledger.update_stage_fields, stage_id, checkpoint=ev["path"])

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
            if self.d.server is None or not self.d.server.subscribers("log"):
                return
            for line in lines:
                self.publish("log", {"run": run_id, "stage": stage, "line": line.decode(errors="replace")}, run_id)

        try:
            while True:
                await asyncio.sleep(0.3)
                drain()
        finally:
            drain()


# == a crashed daemon's workers =============================================================================
def is_our_worker(pid: int, stage: str, run_dir: Path) -> bool:
    """Whether ``pid`` still is that stage's worker: the pid a crashed daemon recorded may since belong to
    anything else, another pr1d's worker included, so both the stage module and this run's spec path must
    be on its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    prefix = str(run_dir).encode() + b"/"
    return f"pr1d.stages.{stage}".encode() in argv and any(a.startswith(prefix) for a in argv)


async def terminate_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still there (and not a zombie) after ``grace`` seconds."""
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
