"""The worker side of a stage: read the spec, emit events, heartbeat, checkpoint-and-exit on SIGTERM.

A stage module does::

    from pr1d.stages.base import Worker, run_stage

    def main(w: Worker) -> dict:
        ...              # w.progress(...), w.metric(...), w.artifact(...), if w.stop_requested: w.interrupt()
        return outputs   # becomes the `result` event

    if __name__ == "__main__":
        run_stage(main)
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..pipeline.events import EXIT_INTERRUPTED, EXIT_OK

PR_SET_PDEATHSIG = 1


class Interrupted(Exception):
    """Raised by a stage after it checkpointed because a stop was requested (exit code 75)."""


class DaemonGone(Exception):
    """The event pipe broke: the daemon died. Checkpoint and leave."""


def sha256_file(path: Path | str, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


class Worker:
    def __init__(self, spec_path: str | Path):
        self.spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
        self.params: dict[str, Any] = self.spec.get("params", {})
        self.run_id: int = self.spec["run_id"]
        self.stage_dir = Path(self.spec["stage_dir"])
        self.run_dir = Path(self.spec["run_dir"])
        self.checkpoint_dir = Path(self.spec["checkpoint_dir"])
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.resume: bool = bool(self.spec.get("resume"))
        self.stop_requested = threading.Event()
        self._lock = threading.Lock()
        fd = os.environ.get("PR1_EVENT_FD")
        # Without the daemon (a person running the stage by hand) events go to stdout.
        self._out = os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout
        self._silent = False
        self._apply_limits(self.spec.get("limits") or {})
        self._arm_parent_death()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        hb = float(self.spec.get("heartbeat_s", 5.0))
        threading.Thread(target=self._heartbeat, args=(hb,), daemon=True, name="pr1-heartbeat").start()

    # -- life cycle --------------------------------------------------------------------------------
    @staticmethod
    def _apply_limits(limits: dict) -> None:
        """Resource limits from the daemon's config: a stage that runs out fails with a clear error."""
        import resource

        if limits.get("memory_mb"):
            b = int(limits["memory_mb"]) << 20
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if limits.get("file_mb"):
            b = int(limits["file_mb"]) << 20
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
        if expected and os.getppid() != int(expected):
            # The daemon died between fork and prctl: behave as if the signal came.
            self.stop_requested.set()

    def _on_term(self, signum: int, _frame: object) -> None:
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
        print(f"[{level}] {message}", file=sys.stderr, flush=True)
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


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name the file in any OSError raised while writing it: a full disk (ENOSPC) or a file-size limit
    (EFBIG) from a plain write() carries no file name, and "which file" is the operator's first question."""
    try:
        yield
    except OSError as e:
        if getattr(e, "filename", None):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


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
    w = Worker(sys.argv[1])
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
