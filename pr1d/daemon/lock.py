"""One daemon per state dir: an flock on <state-dir>/pr1d.lock that holds the owner's PID."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    def __init__(self, path: Path, pid: str):
        super().__init__(f"another pr1d holds the lock {path} (pid {pid or 'unknown'}); "
                         "stop it first or use another --state-dir")
        self.path, self.pid = path, pid


class StateLock:
    """Held for the daemon's lifetime; the kernel releases it if the process dies, so no stale locks."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "pr1d.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
