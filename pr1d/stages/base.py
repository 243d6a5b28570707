"""The worker side of a stage: read the spec, emit events, heartbeat, checkpoint-and-exit on SIGTERM.

A stage module does::

    from pr1d.stages.base import Worker, run_stage

    def main(w: Worker) -> dict:
        ...              # w.progress(...), w.metric(...), w.artifact(...), if w.stop_requested: w.interrupt()
        return outputs   # becomes the `result` event

    if __name__ == "__main__":
        run_stage(main)

Under `accelerate launch` every rank runs ``main``; only the main process (``w.is_main``) sends events and
the ``result`` to the daemon, and it alone should write shared artifacts. The exit code is each rank's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ..pipeline.events import EXIT_INTERRUPTED, EXIT_OK
from ..pipeline.spec import ORPHAN_GRACE_S, Limits, SpecError, StageSpec

PR_SET_PDEATHSIG = 1
P = TypeVar("P", bound=BaseModel)


class Interrupted(Exception):
    """Raised by a stage after it checkpointed because a stop was requested (exit code 75)."""


class DaemonGone(Exception):
    """The event pipe broke: the daemon died. Checkpoint and leave."""


def process_rank() -> tuple[int, int]:
    """``(global rank, world size)`` of this process as a distributed launcher set them; ``(0, 1)`` alone.

    Read from the environment (torchrun's ``RANK``/``WORLD_SIZE``, or an MPI launcher's), the variables
    accelerate itself reads, so the answer is known before torch is imported.
    """
    def first(names: tuple[str, ...], default: int) -> int:
        for n in names:
            if os.environ.get(n, "").strip():
                return int(os.environ[n])
        return default

    rank = first(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"), 0)
    world = first(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"), 1)
    return rank, world


def _is_pipe(path: str) -> bool:
    try:
        return os.readlink(path).startswith("pipe:")
    except OSError:
        return False


def _event_stream():
    """Where events go: the file ``$PR1_EVENT_FILE`` (a Slurm job: docs/multi_gpu.md), the daemon's pipe
    (``$PR1_EVENT_FD``), else stdout (a person running the stage by hand).

    The file is opened for appending and written one whole line at a time, flushed per line (``emit``): the
    daemon follows it by byte offset from another host, through the shared run folder, and across its own
    restarts, so nothing on this side depends on the daemon being alive.

    `accelerate launch` starts the stage with ``close_fds`` (its simple launcher and torchrun's both use
    ``subprocess.Popen`` defaults), so the descriptor the daemon passed is open only in the launcher, our
    parent. Linux lets a process of the same user open that pipe again through ``/proc/<ppid>/fd/<n>``.
    """
    path = os.environ.get("PR1_EVENT_FILE")
    if path:
        return open(path, "a", buffering=1)
    fd = os.environ.get("PR1_EVENT_FD")
    if not fd:
        return sys.stdout
    n = int(fd)
    via_parent = f"/proc/{os.getppid()}/fd/{n}"
    if not _is_pipe(f"/proc/self/fd/{n}") and _is_pipe(via_parent):
        return open(via_parent, "w", buffering=1)
    if os.path.exists(f"/proc/self/fd/{n}"):  # inherited (a pipe from the daemon, or a file given by hand)
        return os.fdopen(n, "w", buffering=1)
    raise RuntimeError(
        f"PR1_EVENT_FD={n} is not an open pipe here nor in the parent process {os.getppid()}: "
        "the launcher between the daemon and this stage closed it"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: Path | str, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


class Worker:
    def __init__(self, spec_path: str | Path):
        self.spec: StageSpec = StageSpec.load(spec_path)
        self.params: dict[str, Any] = dict(self.spec.params)
        self.run_id: int = self.spec.run_id
        self.stage_dir = self.spec.stage_dir
        self.run_dir = self.spec.run_dir
        self.checkpoint_dir = self.spec.checkpoint_dir
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.resume: bool = self.spec.resume
        self.stop_requested = threading.Event()
        self._lock = threading.Lock()
        # Under `accelerate launch` every rank runs this stage; only the main process (global rank 0) talks
        # to the daemon, so it sees one progress stream and one result, as with a single process.
        self.rank, self.world_size = process_rank()
        self.is_main = self.rank == 0
        self._out = _event_stream() if self.is_main else None
        self._silent = False
        self._apply_limits(self.spec.limits)
        # Signals reach stop_requested through a pipe and a relay thread, never directly: see _on_term.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        threading.Thread(target=self._signal_relay, daemon=True, name="pr1-signal-relay").start()
        self._arm_parent_death()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        threading.Thread(target=self._heartbeat, args=(self.spec.heartbeat_s,), daemon=True,
                         name="pr1-heartbeat").start()

    def stage_params(self, model: type[P], where: str = "", base: dict[str, Any] | None = None) -> P:
        """The stage's parameter model: ``base`` under the config's ``[training.<stage>]`` defaults (spec
        ``training``) under the run's params that are fields of ``model`` (:func:`pr1d.params.stage_view`, the
        view the trigger checked). Raises :class:`pr1d.params.ParamsError` naming the bad key."""
        from ..params import stage_view

        return stage_view(model, self.params, where or self.spec.stage, defaults=self.spec.training, base=base)

    # -- life cycle --------------------------------------------------------------------------------
    @staticmethod
    def _apply_limits(limits: Limits) -> None:
        """Resource limits from the daemon's config: a stage that runs out fails with a clear error."""
        import resource

        if limits.memory_mb:
            b = limits.memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if limits.file_mb:
            b = limits.file_mb << 20
            resource.setrlimit(resource.RLIMIT_FSIZE, (b, b))
            # Without this the kernel kills us with SIGXFSZ; ignored, the write fails with EFBIG and
            # the stage reports which file, like a full disk (ENOSPC) does.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def _arm_parent_death(self) -> None:
        """Ask the kernel for SIGTERM if the daemon dies, so no orphan keeps writing artifacts."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        expected = os.environ.get("PR1_DAEMON_PID")
        # Under `accelerate launch` our parent is the launcher, not the daemon, so a different parent alone
        # proves nothing; a daemon that is gone does: it died between fork and prctl, act as if the signal came.
        if expected and os.getppid() != int(expected) and not _alive(int(expected)):
            self.stop_requested.set()
        if expected:
            grace = self.spec.orphan_grace_s
            threading.Thread(target=self._orphan_watchdog, args=(int(expected), grace), daemon=True,
                             name="pr1-orphan-watchdog").start()

    def _orphan_watchdog(self, daemon_pid: int, grace_s: float = ORPHAN_GRACE_S) -> None:
        """The last line behind PDEATHSIG: once the daemon is gone, the stage gets ``grace_s`` to checkpoint
        and leave; after that the process ends itself (exit 75, resumable), however stuck its other threads
        are. This thread takes no lock the stage or the event writer use, so their deadlock cannot hold it."""
        gone_at: float | None = None
        while True:
            time.sleep(1.0)
            if gone_at is None:
                if not _alive(daemon_pid):
                    gone_at = time.monotonic()
            elif time.monotonic() - gone_at > grace_s:
                os.write(2, f"[error] daemon {daemon_pid} gone for {grace_s:.0f}s and the stage has not "
                            "stopped: exiting (75) so no orphan keeps running\n".encode())
                os._exit(EXIT_INTERRUPTED)

    def _on_term(self, signum: int, _frame: object) -> None:
        """Takes no lock. A Python signal handler runs between two bytecodes of the main thread, which may
        hold stop_requested's own (non-reentrant) lock at that moment: when the daemon is SIGKILLed, the
        main thread's write fails with EPIPE and it calls stop_requested.set() just as PDEATHSIG's SIGTERM
        lands. Event.set() in here then waits for itself forever, and the heartbeat thread queues behind
        the main thread's event lock: a stage outliving its daemon with every thread in futex_wait, as
        seen under load. os.write takes no lock; the relay thread sets the Event."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # the pipe is full: a wake-up is already pending
            pass

    def _signal_relay(self) -> None:
        while True:
            try:
                if not os.read(self._wake_r, 64):
                    return
            except InterruptedError:
                continue
            except OSError:
                return
            self.stop_requested.set()

    def _heartbeat(self, every: float) -> None:
        while True:
            time.sleep(every)
            if not self._silent:
                try:
                    self.emit("heartbeat")
                except DaemonGone:
                    self.stop_requested.set()
                    return

    def silence_heartbeat(self) -> None:
        """For tests of the daemon's heartbeat watchdog: stop the background heartbeat."""
        self._silent = True

    # -- events ------------------------------------------------------------------------------------
    def emit(self, type_: str, **fields: Any) -> None:
        if self._out is None:  # a non-main rank: the main one reports for all of them
            return
        line = json.dumps({"type": type_, "ts": time.time(), **fields}, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.stop_requested.set()
                raise DaemonGone() from None

    def progress(self, step: int, total: int | None = None, eta_s: float | None = None, message: str = "") -> None:
        self.emit("progress", step=int(step), total=total, eta_s=eta_s, message=message)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.emit("metric", name=name, value=float(value), step=step)

    def log(self, message: str, level: str = "info") -> None:
        # stderr lands in the stage log file, which the daemon tails for `pr1ctl logs --follow`.
        # With several ranks all of them write to the one log file: say which one speaks.
        rank = f" rank {self.rank}/{self.world_size}" if self.world_size > 1 else ""
        print(f"[{level}]{rank} {message}", file=sys.stderr, flush=True)
        self.emit("log", level=level, message=message)

    def artifact(self, name: str, path: Path | str, kind: str = "file", meta: dict | None = None) -> str:
        p = Path(path)
        digest = sha256_file(p) if p.is_file() else _sha256_dir(p)
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        self.emit("artifact", name=name, path=str(p), sha256=digest, size=size, kind=kind, meta=meta or {})
        return digest

    def checkpoint(self, path: Path | str, step: int) -> None:
        self.emit("checkpoint", path=str(path), step=int(step))

    def interrupt(self) -> None:
        raise Interrupted()


def _sha256_dir(root: Path) -> str:
    """Content hash of a folder: its files' relative paths and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def run_stage(main: Callable[[Worker], dict | None]) -> None:
    """Entry point for `python -m pr1d.stages.X SPEC.json`: runs main and maps the outcome to an exit code."""
    if len(sys.argv) != 2:
        print(f"usage: python -m {main.__module__} SPEC.json", file=sys.stderr)
        sys.exit(2)
    try:
        w = Worker(sys.argv[1])
    except SpecError as e:  # before any event stream is set up: say why on stderr and, if possible, the pipe
        print(f"stage failed: {e}", file=sys.stderr)
        with contextlib.suppress(Exception):
            out = _event_stream()
            out.write(json.dumps({"type": "error", "ts": time.time(), "message": str(e), "kind": "spec"}) + "\n")
            out.flush()
        sys.exit(1)
    try:
        outputs = main(w) or {}
        w.emit("result", outputs=outputs)
        code = EXIT_OK
    except (Interrupted, DaemonGone):
        print("stage stopped on request after checkpointing", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except MemoryError:
        _report(w, "out of memory", "oom")
        code = 1
    except OSError as e:
        # Disk full and friends: say which file, keep earlier artifacts as they are.
        _report(w, f"{e.strerror or e} ({getattr(e, 'filename', '') or 'no file'})", "os_error")
        code = 1
    except Exception as e:
        traceback.print_exc()
        _report(w, f"{type(e).__name__}: {e}", "exception")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: torch thread pools can hang it after a signal


def _report(w: Worker, message: str, kind: str) -> None:
    print(f"stage failed: {message}", file=sys.stderr)
    try:
        w.emit("error", message=message, kind=kind)
    except DaemonGone:
        pass
