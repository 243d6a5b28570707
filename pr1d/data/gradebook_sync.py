"""The nightly gradebook sync: new scoring-API gradebook entries into the daemon's local copy.

Runs in the daemon (scheduled by dataset.gradebook_sync_cron, or at once by the `gradebook.sync` method) over the
poller's async scoring client; :class:`~pr1d.data.gradebook.LocalGradebook` keeps the copy and its cursor.
"""

from __future__ import annotations

import asyncio
import logging

from ..monitor.poller import PollError, ScoringClient
from .gradebook import LocalGradebook

log = logging.getLogger("pr1d")


async def sync_gradebook(client: ScoringClient, book: LocalGradebook, min_score: float) -> dict:
    """Pull new gradebook entries (>= ``min_score``) since the local copy's cursor, dedupe, append."""
    cursor = await asyncio.to_thread(book.cursor)
    got: list[dict] = []
    for _ in range(1000):  # bounded: 1000 pages x 500 entries per sync
        params = {"min_score": min_score, "limit": 500}
        if cursor:
            params["since"] = cursor
        try:
            page = await client.request("gradebook", "GET", "/v1/gradebook", params=params)
        except PollError as e:
            log.warning("gradebook sync stopped: %s (kept %d new entries)", e, len(got))
            break
        entries = page.get("entries") if isinstance(page, dict) else None
        nxt = page.get("next_cursor") if isinstance(page, dict) else None
        if not isinstance(entries, list):
            break
        # A malformed entry never enters the copy: every dataset build reads it (float(score)).
        got += [e for e in entries if isinstance(e, dict) and e.get("task_id") and e.get("transcript")
                and isinstance(e.get("score"), int | float) and not isinstance(e.get("score"), bool)]
        if not entries or not nxt or nxt == cursor:
            cursor = nxt or cursor
            break
        cursor = nxt
    added = await asyncio.to_thread(book.append, got, cursor)
    out = {"fetched": len(got), "added": added, "cursor": cursor}
    log.info("gradebook sync: %s", out)
    return out
