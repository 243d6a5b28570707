"""Spawns one stage worker process and turns its event pipe and exit status into an outcome.

The worker writes JSON-line events to a pipe of its own (not stdout), its stdout/stderr go to the
stage log file, it lives in its own process group (a Ctrl+C at the daemon's terminal does not reach
it; cancel signals the whole group), and it dies with the daemon (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import EXIT_INTERRUPTED, EXIT_OK, MAX_EVENT_BYTES, EventError, validate_event
from .spec import StageSpec

log = logging.getLogger("pr1d.launcher")


@dataclass
class Outcome:
    state: str  # succeeded | failed | interrupted | cancelled
    exit_code: int | None
    error: str | None = None
    result: dict[str, Any] | None = None


EventSink = Callable[[dict[str, Any]], Awaitable[None]]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def worker_command(stage: str, spec_path: Path, *, python: str = "", launcher: str = "python",
                   accelerate_config: str = "") -> list[str]:
    py = python or sys.executable
    if launcher == "accelerate":
        cmd = [py, "-m", "accelerate.commands.launch"]
        if accelerate_config:
            cmd += ["--config_file", accelerate_config]
        return cmd + ["-m", f"pr1d.stages.{stage}", str(spec_path)]
    return [py, "-m", f"pr1d.stages.{stage}", str(spec_path)]


class EventHandling:
    """What a supervisor does with one event line, wherever it came from (a pipe here, a Slurm job's events
    file in :mod:`pr1d.pipeline.slurm`): validate it, keep the last error and the result, hand the rest but
    heartbeats to the sink. A malformed line is logged and skipped; a sink that raises is logged, never fatal."""

    spec: StageSpec
    sink: EventSink
    last_error: str | None
    result: dict[str, Any] | None

    async def handle_line(self, line: bytes) -> None:
        try:
            ev = validate_event(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError, EventError) as e:
            self._bad_event(str(e))
            return
        if ev["type"] == "error":
            self.last_error = ev["message"]
        elif ev["type"] == "result":
            self.result = ev["outputs"]
        if ev["type"] == "heartbeat":
            return
        try:
            await self.sink(ev)
        except Exception:  # a sink bug must not stop the reader and stall the stage
            log.exception("stage %s: handling event %s", self.spec.stage, ev.get("type"),
                          extra={"run": self.spec.run_id, "stage": self.spec.stage})

    def _bad_event(self, why: str) -> None:
        log.warning("run %s stage %s: ignored malformed event: %s", self.spec.run_id, self.spec.stage, why,
                    extra={"run": self.spec.run_id, "stage": self.spec.stage})


class StageProcess(EventHandling):
    """One running worker. `wait()` returns the outcome; `stop()` asks it to checkpoint and leave."""

    def __init__(self, spec: StageSpec, sink: EventSink, *, heartbeat_timeout_s: float, stop_grace_s: float,
                 python: str = "", launcher: str = "python", accelerate_config: str = ""):
        self.spec, self.sink = spec, sink
        self.heartbeat_timeout_s, self.stop_grace_s = heartbeat_timeout_s, stop_grace_s
        self.cmd_opts = dict(python=python, launcher=launcher, accelerate_config=accelerate_config)
        self.proc: asyncio.subprocess.Process | None = None
        self.last_event = time.monotonic()
        self.last_error: str | None = None
        self.result: dict[str, Any] | None = None
        self.stop_reason: str | None = None  # "cancel" | "shutdown" | "heartbeat"
        self.log_path = spec.stage_dir / "stage.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        self.spec.stage_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.spec.dump(self.spec.stage_dir / "spec.json")
        r, w = os.pipe()
        logf = open(self.log_path, "ab")
        env = dict(os.environ, PR1_EVENT_FD=str(w), PR1_DAEMON_PID=str(os.getpid()), PYTHONUNBUFFERED="1")
        # torchrun (under `accelerate launch`) gives the ranks 30 s after a SIGTERM before SIGKILL: give them
        # the daemon's own grace, so a large model's checkpoint is not cut short (docs/multi_gpu.md).
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(max(1, int(self.stop_grace_s))))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *worker_command(self.spec.stage, spec_path, **self.cmd_opts),
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(w,),
                cwd=str(self.spec.stage_dir), env=env, start_new_session=True,
            )
        finally:
            os.close(w)
            logf.close()
        self._reader_task = asyncio.create_task(self._read_events(r))

    async def _read_events(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_EVENT_BYTES)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    self._bad_event("event line over 1 MiB")
                    continue
                if not line:
                    return
                self.last_event = time.monotonic()
                await self.handle_line(line)
        finally:
            transport.close()

    def stop(self, reason: str) -> None:
        """SIGTERM the worker's group now; `wait()` escalates to SIGKILL after stop_grace_s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop_at = time.monotonic()
            _signal_group(self.proc.pid, signal.SIGTERM)

    async def wait(self) -> Outcome:
        assert self.proc is not None
        while True:
            try:
                rc = await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout=0.5)
                break
            except TimeoutError:
                pass
            now = time.monotonic()
            if self.stop_reason is None and now - self.last_event > self.heartbeat_timeout_s:
                self.last_error = f"missed heartbeat: no event for {self.heartbeat_timeout_s:g} s"
                self.stop("heartbeat")
            if self.stop_reason is not None and now - self._stop_at > self.stop_grace_s:
                _signal_group(self.proc.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(self._reader_task, timeout=5)
        except TimeoutError:
            # A grandchild still holds the pipe open; the worker itself is gone, so stop listening.
            self._reader_task.cancel()
        # Make sure nothing of the group outlives the stage (accelerate spawns children).
        _signal_group(self.proc.pid, signal.SIGKILL)
        return self._outcome(rc)

    def _outcome(self, rc: int) -> Outcome:
        if self.stop_reason == "heartbeat":
            return Outcome("failed", rc, self.last_error)
        if self.stop_reason == "cancel":
            return Outcome("cancelled", rc, "cancelled")
        if rc == EXIT_OK and self.result is not None:
            return Outcome("succeeded", rc, None, self.result)
        if rc == EXIT_OK:
            return Outcome("failed", rc, "worker exited 0 without a result event")
        # `accelerate launch` (torchrun) exits 1 after forwarding a SIGTERM, whatever its ranks did (they
        # checkpointed and exited 75): under it, any exit after a shutdown request is an interruption.
        accelerate_stopped = self.cmd_opts["launcher"] == "accelerate" and self.stop_reason == "shutdown"
        if rc == EXIT_INTERRUPTED or accelerate_stopped or (
                self.stop_reason == "shutdown" and rc in (-signal.SIGTERM, -signal.SIGKILL)):
            return Outcome("interrupted", rc, "stopped for daemon shutdown")
        if rc < 0:
            sig = signal.Signals(-rc).name
            why = "killed by the kernel OOM killer or an operator" if -rc == signal.SIGKILL else "killed"
            return Outcome("failed", rc, self.last_error or f"worker {why} ({sig})")
        return Outcome("failed", rc, self.last_error or f"worker exited with code {rc} (see {self.log_path})")
