"""Scheduled jobs, referenced by "module:function" so APScheduler's persistent store can hold them.

They find the running daemon through `current()`; the store keeps only the schedule, no state.
"""

from __future__ import annotations

from typing import Any

_daemon: Any = None


def install(daemon: Any) -> None:
    global _daemon
    _daemon = daemon


def current() -> Any:
    if _daemon is None:
        raise RuntimeError("no pr1d daemon running in this process")
    return _daemon


async def housekeeping() -> None:
    """Checkpoint the WAL so it cannot grow without bound, and expire stale approvals."""
    await current().housekeeping()


async def poll_scores() -> None:
    """Poll the scoring API once; errors are recorded in health, never raised into the scheduler."""
    await current().poll_cycle.run()


async def retry_pushes() -> None:
    """Retry profile pushes the agent manager has not acknowledged yet (promote/rollback semantics)."""
    await current().registry.retry_pushes()


async def refresh_scoreboard() -> None:
    """Recompute the KPIs, raise new escalations, push to the selector when configured."""
    await current().scoreboard.refresh()


async def retention() -> None:
    """Daily: remove old samples and metrics per [retention] (runs and the audit log are kept)."""
    await current().compact()


async def gradebook_sync() -> None:
    """Nightly: keep the local gradebook copy current (the dataset stage reads it, then pulls the rest)."""
    await current().gradebook_sync()
