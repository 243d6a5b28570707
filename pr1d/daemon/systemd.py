"""systemd without libsystemd: sd_notify datagrams (READY/STATUS/WATCHDOG/STOPPING) and journald-ready log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any


def notify(message: str) -> bool:
    """Send one notification; returns False (and does nothing) when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is armed for this very process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


async def watchdog_loop(healthy: callable) -> None:
    """Pet the watchdog while the event loop turns and `healthy()` holds; a stuck loop gets us restarted."""
    every = watchdog_interval()
    if every is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(every)


# sd-daemon(3) priorities: journald reads a leading "<N>" on each stderr line as the entry's priority,
# so `journalctl -p warning` finds our warnings (without it every line is logged at info).
SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG = 2, 3, 4, 6, 7
# Record attributes (passed as `log.x(..., extra={"run": 7})`) printed as key=value after the message,
# so `journalctl -u pr1d | grep run=7` finds every line about run 7.
LOG_FIELDS = ("run", "stage", "agent", "trigger", "webhook", "event")  # webhook, event: pr1d.notify


def sd_priority(levelno: int) -> int:
    """The sd-daemon priority for a logging level (between levels: the more severe one)."""
    if levelno >= logging.CRITICAL:
        return SD_CRIT
    if levelno >= logging.ERROR:
        return SD_ERR
    if levelno >= logging.WARNING:
        return SD_WARNING
    if levelno >= logging.INFO:
        return SD_INFO
    return SD_DEBUG


def journal_prefixes(environ: Mapping[str, str], stderr_id: tuple[int, int] | None) -> bool:
    """Whether stderr goes to journald, so lines should carry "<N>" priority prefixes.

    JOURNAL_STREAM ("dev:inode") is set by systemd when stderr is connected to the journal; it is
    only trusted when it names our actual stderr (``stderr_id``), since a child whose stderr was
    redirected inherits the variable. Without it, INVOCATION_ID still says systemd started us.
    """
    stream = environ.get("JOURNAL_STREAM")
    if stream:
        return stderr_id is not None and stream == f"{stderr_id[0]}:{stderr_id[1]}"
    return bool(environ.get("INVOCATION_ID"))


def render_log_line(levelno: int, levelname: str, name: str, message: str, fields: Mapping[str, Any], *,
                    journal: bool, timestamp: str | None = None) -> str:
    """One log record as text: "[<N>][time ]LEVEL logger: message key=value...".

    Under journald every line of a multi-line record (a traceback) gets the prefix, since the journal
    makes each line its own entry; the journal adds its own timestamps, so none is printed there.
    """
    extra = "".join(f" {k}={fields[k]}" for k in LOG_FIELDS if fields.get(k) not in (None, ""))
    head = f"{timestamp} " if timestamp and not journal else ""
    lines = f"{head}{levelname} {name}: {message}".split("\n")
    lines[0] += extra
    if not journal:
        return "\n".join(lines)
    prefix = f"<{sd_priority(levelno)}>"
    return "\n".join(prefix + line for line in lines)


class DaemonLogFormatter(logging.Formatter):
    """The daemon's log format: :func:`render_log_line` over a logging record (with its traceback)."""

    def __init__(self, journal: bool):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        fields = {k: getattr(record, k, None) for k in LOG_FIELDS}
        return render_log_line(record.levelno, record.levelname, record.name, message.rstrip("\n"), fields,
                               journal=self.journal, timestamp=None if self.journal else self.formatTime(record))


def stderr_id() -> tuple[int, int] | None:
    """(st_dev, st_ino) of fd 2, to compare with JOURNAL_STREAM; None when stderr is closed."""
    try:
        st = os.fstat(2)
    except OSError:
        return None
    return st.st_dev, st.st_ino
