"""Stage workers as Slurm jobs (``[daemon] launcher = "slurm"``): the batch script, sbatch/scontrol/scancel, and
the event file the daemon follows instead of a pipe.

A Slurm job must outlive the daemon (that is what lets a daemon restart re-attach to it), so nothing here ties
the two together: the job reads its spec from the shared run folder and appends its events, one JSON line each,
to ``<stage_dir>/events.<job>.jsonl`` (``$PR1_EVENT_FILE``, see ``pr1d/stages/base.py``); its output goes to the
stage log; the batch script writes the step's exit status to ``<stage_dir>/exit.<job>`` as its last act. The
daemon keeps ``<stage_dir>/slurm.json`` (the job id, how far it has read the event file, whether the job's end
is in the ledger): after a restart it re-attaches from there. Torch-free: the daemon imports this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import EXIT_INTERRUPTED, EXIT_OK, MAX_EVENT_BYTES
from .launcher import EventHandling, EventSink, Outcome
from .spec import StageSpec

if TYPE_CHECKING:
    from ..config import SlurmConfig

log = logging.getLogger("pr1d.slurm")

JOB_FILE = "slurm.json"
# Job states after which the job runs no more (scontrol's JobState). Anything else (PENDING, RUNNING,
# COMPLETING, SUSPENDED, REQUEUED, ...) is still Slurm's to finish.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})
# What a job that ended without an exit status of its step says, worded for the stage's error.
_ENDED_WHY = {
    "TIMEOUT": "hit its time limit (daemon.slurm.time_limit)",
    "CANCELLED": "was cancelled outside pr1d (scancel)",
    "NODE_FAIL": "lost its node (NODE_FAIL)",
    "OUT_OF_MEMORY": "ran out of memory (OUT_OF_MEMORY)",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not boot its node (BOOT_FAIL)",
    "DEADLINE": "missed its deadline",
}
_SLURM_TIMEOUT_S = 30.0  # one sbatch/scontrol/scancel call: slurmctld answers in milliseconds when it is up


class SlurmError(Exception):
    """A Slurm command failed; the message has the command and what it said."""


# == the batch script ========================================================================================
def uses_accelerate(cfg: SlurmConfig) -> bool:
    """Several processes per job (more than one node or GPU) run under `accelerate launch`; one runs plain."""
    return cfg.nodes > 1 or cfg.gpus_per_node > 1


def sbatch_args(spec: StageSpec, cfg: SlurmConfig) -> list[str]:
    """The ``sbatch`` options of a stage's job (given on the command line, so paths need no quoting rules)."""
    args = [f"--job-name=pr1-r{spec.run_id}-{spec.stage}", f"--output={spec.stage_dir / 'stage.log'}",
            "--open-mode=append", f"--chdir={spec.stage_dir}", f"--nodes={cfg.nodes}", "--ntasks-per-node=1",
            "--parsable"]
    if cfg.partition:
        args.append(f"--partition={cfg.partition}")
    if cfg.gpus_per_node:
        args.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if cfg.cpus_per_task:
        args.append(f"--cpus-per-task={cfg.cpus_per_task}")
    if cfg.time_limit:
        args.append(f"--time={cfg.time_limit}")
    return args + list(cfg.extra_args)


def batch_script(spec: StageSpec, spec_path: Path, cfg: SlurmConfig, *, python: str = "", accelerate_config: str = "",
                 stop_grace_s: float = 20.0) -> str:
    """The job: one ``srun`` task per node running the stage (under ``accelerate launch`` when the job has
    several processes), then the step's exit status into ``exit.$SLURM_JOB_ID``."""
    py = python or sys.executable
    stage_dir = spec.stage_dir
    module = ["-m", f"pr1d.stages.{spec.stage}", str(spec_path)]
    if uses_accelerate(cfg):
        per_node = max(1, cfg.gpus_per_node)
        fixed = [py, "-m", "accelerate.commands.launch"]
        if accelerate_config:
            fixed += ["--config_file", accelerate_config]
        # $SLURM_NODEID differs per node, so it is expanded by the shell srun starts there, not by this one.
        task = (shlex.join(fixed) + " --num_machines \"$SLURM_NNODES\" --machine_rank \"$SLURM_NODEID\""
                " --main_process_ip \"$PR1_MAIN_HOST\"" + f" --main_process_port {cfg.main_process_port}"
                + f" --num_processes $(( SLURM_NNODES * {per_node} )) " + shlex.join(module))
        launch = [
            "# The first node of the allocation hosts the rendezvous; every node's accelerate gets its rank.",
            'PR1_MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            "export PR1_MAIN_HOST",
            f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
        ]
    else:
        launch = [f"srun --kill-on-bad-exit=1 {shlex.join([py, *module])}"]
    q = shlex.quote
    return "\n".join([
        "#!/bin/bash",
        f"# pr1d: run {spec.run_id}, stage {spec.stage}. Submitted with sbatch (options on its command line, also in",
        f"# {JOB_FILE}); the daemon follows $PR1_EVENT_FILE and exit.<job>, and cancels with scancel.",
        "# A stop is `scancel --signal=TERM` (the steps, not this shell): the stage checkpoints and exits 75,",
        "# and this script still writes the exit status.",
        f"export PR1_EVENT_FILE={q(str(stage_dir))}/events.\"$SLURM_JOB_ID\".jsonl",
        "export PYTHONUNBUFFERED=1",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(1, int(stop_grace_s))}",
        "unset PR1_EVENT_FD PR1_DAEMON_PID  # the job does not belong to a daemon process",
        *launch,
        "rc=$?",
        f"echo \"$rc\" > {q(str(stage_dir))}/exit.\"$SLURM_JOB_ID\"",
        'exit "$rc"',
        "",
    ])


# == talking to Slurm ========================================================================================
async def _slurm(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not found (is slurm-wlm's client installed and on PATH?)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _SLURM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmError(f"{argv[0]}: no answer within {_SLURM_TIMEOUT_S:g} s") from None
    return proc.returncode or 0, out.decode(errors="replace").strip(), err.decode(errors="replace").strip()


async def submit(script: Path, args: list[str]) -> str:
    """``sbatch --parsable``; the job id."""
    env = {k: v for k, v in os.environ.items() if k not in ("PR1_EVENT_FD", "PR1_DAEMON_PID")}
    rc, out, err = await _slurm("sbatch", *args, str(script), env=env)
    if rc != 0:
        raise SlurmError(f"sbatch refused the stage's job: {err or out or f'exit {rc}'}")
    job = out.splitlines()[-1].split(";")[0].strip() if out else ""
    if not job.isdigit():
        raise SlurmError(f"sbatch --parsable printed no job id: {out!r}")
    return job


@dataclass
class JobState:
    state: str  # scontrol's JobState; "" when Slurm no longer knows the job (purged after MinJobAge)
    exit_code: int | None = None  # the batch script's, from ExitCode=rc:signal (-signal when killed)
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.state == ""


async def job_state(job: str) -> JobState:
    """The job's state from ``scontrol show job``; raises SlurmError when Slurm does not answer."""
    rc, out, err = await _slurm("scontrol", "show", "job", "-o", job)
    if rc != 0:
        if "Invalid job id" in err:
            return JobState("")
        raise SlurmError(f"scontrol show job {job}: {err or out or f'exit {rc}'}")
    fields = dict(re.findall(r"(\w+)=(\S*)", out))
    code: int | None = None
    if m := re.fullmatch(r"(\d+):(\d+)", fields.get("ExitCode", "")):
        code = -int(m[2]) if int(m[2]) else int(m[1])
    return JobState(fields.get("JobState", "UNKNOWN"), code, fields.get("Reason", ""))


async def signal_job(job: str, sig: str = "TERM") -> None:
    """Signal the job's steps (the stage processes), not its batch shell, so the script outlives the stage."""
    rc, out, err = await _slurm("scancel", f"--signal={sig}", job)
    if rc != 0:
        raise SlurmError(f"scancel --signal={sig} {job}: {err or out}")


async def cancel_job(job: str) -> None:
    rc, out, err = await _slurm("scancel", job)
    if rc != 0:
        raise SlurmError(f"scancel {job}: {err or out}")


# == the daemon's record of the job, in the stage folder ======================================================
def read_record(stage_dir: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((stage_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and str(rec.get("job", "")).isdigit() else None


def pending_job(stage_dir: Path) -> str | None:
    """The Slurm job of a stage whose end the ledger does not have yet (a job to re-attach to), or None."""
    rec = read_record(stage_dir)
    return str(rec["job"]) if rec is not None and not rec.get("recorded") else None


def _write_record(stage_dir: Path, rec: dict[str, Any]) -> None:
    tmp = stage_dir / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    tmp.replace(stage_dir / JOB_FILE)  # atomic: a daemon killed mid-write leaves the old record


class EventFile:
    """Follows an append-only file of JSON lines by byte offset; a line not yet ended waits for its end."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = path, offset

    def read_lines(self) -> list[tuple[bytes, int]]:
        """The whole lines written since the last call, each with the offset just past it; the offset moves
        past them only. A line over the event size limit that never ends is skipped (``b""``)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(64 << 20)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) > MAX_EVENT_BYTES:  # a line that never ends: skip it rather than stall on it
                self.offset += len(chunk)
                return [(b"", self.offset)]
            return []
        out, pos = [], self.offset
        for line in chunk[:end].split(b"\n"):
            pos += len(line) + 1
            out.append((line, pos))
        self.offset = pos
        return out


# == the stage as a Slurm job =================================================================================
class SlurmStageProcess(EventHandling):
    """One stage as one Slurm job, with :class:`~pr1d.pipeline.launcher.StageProcess`'s interface: ``start()``
    submits (or ``attach()`` takes over a job a previous daemon started), ``wait()`` returns the outcome,
    ``stop(reason)`` cancels (``cancel``: the stage checkpoints, then the job is cancelled after the grace) or
    lets go of the job (``shutdown``: it keeps running and the next daemon re-attaches)."""

    pid = None  # no local process: the job id is the handle

    def __init__(self, spec: StageSpec, sink: EventSink, *, heartbeat_timeout_s: float, stop_grace_s: float,
                 slurm: SlurmConfig, python: str = "", accelerate_config: str = ""):
        self.spec, self.sink, self.cfg = spec, sink, slurm
        self.heartbeat_timeout_s, self.stop_grace_s = heartbeat_timeout_s, stop_grace_s
        self.python, self.accelerate_config = python, accelerate_config
        self.log_path = spec.stage_dir / "stage.log"
        self.job_id: str | None = None
        self.events: EventFile | None = None
        self.last_event = time.monotonic()
        self.last_error: str | None = None
        self.result: dict[str, Any] | None = None
        self.stop_reason: str | None = None  # "cancel" | "shutdown" | "heartbeat"
        self._stop_at = 0.0
        self.detached = False  # let go at a daemon shutdown: the job runs on, its end is not ours to record
        self._signalled = self._hard_cancelled = False
        self._wake = asyncio.Event()
        self._rec: dict[str, Any] = {}

    async def start(self) -> None:
        """Write the spec and the batch script into the stage folder and submit the job."""
        d = self.spec.stage_dir
        d.mkdir(parents=True, exist_ok=True)
        spec_path = self.spec.dump(d / "spec.json")
        script = d / "job.sh"
        script.write_text(batch_script(self.spec, spec_path, self.cfg, python=self.python,
                                       accelerate_config=self.accelerate_config, stop_grace_s=self.stop_grace_s))
        args = sbatch_args(self.spec, self.cfg)
        job = await submit(script, args)
        self._follow(job, {"job": job, "submitted_at": time.time(), "sbatch": args, "offset": 0, "recorded": False})
        _write_record(d, self._rec)
        log.info("run %s stage %s: submitted as Slurm job %s", self.spec.run_id, self.spec.stage, job,
                 extra={"run": self.spec.run_id, "stage": self.spec.stage})

    def attach(self) -> str:
        """Take over the job recorded in the stage folder (a previous daemon's), from where its events were
        read: the events it wrote since are handled now, as if they had just arrived."""
        rec = read_record(self.spec.stage_dir)
        if rec is None or rec.get("recorded"):
            raise SlurmError(f"{self.spec.stage_dir / JOB_FILE}: no Slurm job to re-attach to")
        self._follow(str(rec["job"]), rec)
        return self.job_id  # type: ignore[return-value]

    def _follow(self, job: str, rec: dict[str, Any]) -> None:
        self.job_id, self._rec = job, rec
        self.events = EventFile(self.spec.stage_dir / f"events.{job}.jsonl", int(rec.get("offset") or 0))
        self.last_event = time.monotonic()

    def mark_recorded(self) -> None:
        """The ledger has the job's end: a later start must not re-attach to it."""
        self._rec["recorded"] = True
        _write_record(self.spec.stage_dir, self._rec)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop_at = time.monotonic()
            self._wake.set()

    async def _drain(self) -> None:
        assert self.events is not None
        lines = self.events.read_lines()
        if not lines:
            return
        self.last_event = time.monotonic()
        for line, end in lines:
            if not line.strip():
                if line == b"":
                    self._bad_event("event line over 1 MiB")
                continue
            await self.handle_line(line)
            # Saved after each event the daemon acted on: a daemon killed between the two handles that one
            # event again after re-attaching (at least once; never lost).
            self._save_offset(end)
        self._save_offset(self.events.offset)

    def _save_offset(self, offset: int) -> None:
        if self._rec.get("offset") != offset:
            self._rec["offset"] = offset
            _write_record(self.spec.stage_dir, self._rec)


    async def _query(self) -> JobState | None:
        try:
            return await job_state(self.job_id)  # type: ignore[arg-type]
        except SlurmError as e:  # slurmctld restarting or unreachable: the job is not lost, keep asking
            log.warning("run %s stage %s: %s", self.spec.run_id, self.spec.stage, e,
                        extra={"run": self.spec.run_id, "stage": self.spec.stage})
            return None

    async def _act_on_stop(self, st: JobState | None) -> None:
        job = self.job_id
        assert job is not None
        try:
            if not self._signalled:
                self._signalled = True
                if st is not None and st.state == "PENDING":  # nothing runs yet: nothing to checkpoint
                    self._hard_cancelled = True
                    await cancel_job(job)
                else:
                    await signal_job(job, "TERM")
            elif not self._hard_cancelled and time.monotonic() - self._stop_at > self.stop_grace_s:
                self._hard_cancelled = True
                await cancel_job(job)
        except SlurmError as e:
            log.warning("run %s stage %s: %s", self.spec.run_id, self.spec.stage, e,
                        extra={"run": self.spec.run_id, "stage": self.spec.stage})

    async def wait(self) -> Outcome:
        assert self.job_id is not None, "start() or attach() first"
        running_seen = False
        next_query = 0.0
        st: JobState | None = None
        while True:
            await self._drain()
            if self.stop_reason == "shutdown":
                self.detached = True
                return Outcome("interrupted", None, f"daemon stopped; Slurm job {self.job_id} keeps running and is "
                                                    "re-attached at the next start")
            now = time.monotonic()
            if now >= next_query:
                next_query = now + self.cfg.poll_s
                st = await self._query() or st
                if st is not None and st.ended:
                    break
                if st is not None and st.state == "RUNNING" and not running_seen:
                    # The watchdog counts from the job's start: a job waiting for nodes sends nothing.
                    running_seen, self.last_event = True, now
            if (running_seen and self.stop_reason is None
                    and time.monotonic() - self.last_event > self.heartbeat_timeout_s):
                self.last_error = f"missed heartbeat: no event for {self.heartbeat_timeout_s:g} s"
                self.stop("heartbeat")
            if self.stop_reason in ("cancel", "heartbeat"):  # a shutdown lets go at the top of the loop
                await self._act_on_stop(st)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(0.25, self.cfg.poll_s))
        await self._drain()  # what the job wrote before it ended
        assert st is not None
        return self._outcome(st)

    def _exit_status(self, st: JobState) -> int | None:
        """The stage step's exit status as the batch script recorded it, else Slurm's for the job."""
        try:
            return int((self.spec.stage_dir / f"exit.{self.job_id}").read_text().strip())
        except (OSError, ValueError):
            return st.exit_code if st.state in ("COMPLETED", "FAILED") else None

    def _outcome(self, st: JobState) -> Outcome:
        rc = self._exit_status(st)
        job = f"Slurm job {self.job_id}"
        if self.stop_reason == "heartbeat":
            return Outcome("failed", rc, self.last_error)
        if self.stop_reason == "cancel":
            return Outcome("cancelled", rc, "cancelled")
        if rc == EXIT_OK and self.result is not None:
            return Outcome("succeeded", rc, None, self.result)
        if rc == EXIT_OK:
            return Outcome("failed", rc, "worker exited 0 without a result event")
        if rc == EXIT_INTERRUPTED:
            return Outcome("interrupted", rc, f"{job} stopped after checkpointing ({st.state or 'ended'})")
        if rc is None:
            why = _ENDED_WHY.get(st.state, f"ended ({st.state})" if st.state else "ended without an exit status")
            return Outcome("failed", None, self.last_error or f"{job} {why}")
        if rc < 0 or rc > 128:
            return Outcome("failed", rc, self.last_error or f"worker killed by signal {abs(rc) % 128} ({job})")
        return Outcome("failed", rc, self.last_error or f"worker exited with code {rc} (see {self.log_path})")
