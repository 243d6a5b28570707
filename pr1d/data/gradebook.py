"""Fetch the scoring API's gradebook (``GET /v1/gradebook``): every page from a cursor, deduplicated.

Used by the dataset stage (a worker process, so a sync ``httpx.Client`` is fine). The gradebook is the
fleet's graded work, each entry ``{task_id, agent_id, question, transcript, final_answer, score, tier,
ts}``; see docs/scoring-api.md.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx

__all__ = ["LocalGradebook", "content_hash", "fetch_gradebook", "get_page"]

_RETRY_STATUS = {429, 500, 502, 503, 504}


def content_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's question and transcript (NUL-separated): same work, same hash."""
    h = hashlib.sha256()
    h.update(str(entry.get("question", "")).encode())
    h.update(b"\0")
    h.update(str(entry.get("transcript", "")).encode())
    return h.hexdigest()


def get_page(client: httpx.Client, path: str, key: str, params: dict[str, Any], retries: int) -> dict[str, Any]:
    """One page of a paged scoring-API listing (``key`` names its list), retrying 429/5xx (honouring
    ``Retry-After``, at most 10 s), transport errors and malformed bodies; the last failure is raised."""
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            resp = client.get(path, params=params)
            if resp.status_code in _RETRY_STATUS and attempt < retries:
                time.sleep(min(float(resp.headers.get("Retry-After", delay) or delay), 10.0))
                delay *= 2
                continue
            resp.raise_for_status()
            body = resp.json()
            if not isinstance(body, dict) or not isinstance(body.get(key), list):
                raise ValueError(f"{path} page without an {key!r} list")
            return body
        except (httpx.TransportError, ValueError):
            if attempt >= retries:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def fetch_gradebook(
    base_url: str,
    token: str | None,
    *,
    since: str | None = None,
    min_score: float = 0.9,
    agent_id: str | None = None,
    limit: int = 500,
    max_pages: int = 100,
    timeout_s: float = 30.0,
    retries: int = 3,
    stats: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every gradebook entry after ``since`` with ``score >= min_score``, paging until an empty page.

    Returns ``(entries, next_cursor)``: entries in the order served, deduplicated by ``(task_id, content
    hash)`` (a repeated page or record is kept once; different agents' different transcripts for one
    task are all kept: the builder chooses among them), and the cursor to resume from. Entries missing
    ``task_id``, ``question`` or ``transcript`` are skipped. ``stats``, when given, receives
    ``pages``, ``fetched``, ``duplicates``, ``malformed``.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    entries: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    counts = {"pages": 0, "fetched": 0, "duplicates": 0, "malformed": 0}
    cursor = since
    visited: set[str | None] = set()
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s) as client:
        for _ in range(max_pages):
            params: dict[str, Any] = {"min_score": min_score, "limit": limit}
            if cursor is not None:
                params["since"] = cursor
            if agent_id is not None:
                params["agent_id"] = agent_id
            body = get_page(client, "/v1/gradebook", "entries", params, retries)
            counts["pages"] += 1
            page = body["entries"]
            for entry in page:
                counts["fetched"] += 1
                if not isinstance(entry, dict) or not all(
                    isinstance(entry.get(k), str) for k in ("task_id", "question", "transcript")
                ):
                    counts["malformed"] += 1
                    continue
                key = (entry["task_id"], content_hash(entry))
                if key in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(key)
                entries.append(entry)
            nxt = body.get("next_cursor")
            if nxt is not None:
                cursor = str(nxt)
            if not page or nxt is None or cursor in visited:
                break  # empty page (caught up), no cursor, or a cursor loop: stop
            visited.add(cursor)
    if stats is not None:
        stats.update(counts)
    return entries, cursor


class LocalGradebook:
    """The daemon's local copy of the gradebook: ``entries.jsonl`` (append-only) and ``state.json`` (the
    cursor). The nightly sync (pr1d/data/gradebook_sync.py) is its only writer; dataset stages read it and pull the delta since
    its cursor on demand. Deduplicated by (task_id, content hash)."""

    def __init__(self, root: Any):
        from pathlib import Path

        self.root = Path(root)
        self.entries_path = self.root / "entries.jsonl"
        self.state_path = self.root / "state.json"

    def cursor(self) -> str | None:
        import json

        try:
            return json.loads(self.state_path.read_text()).get("cursor")
        except (FileNotFoundError, ValueError):
            return None

    def load(self) -> list[dict[str, Any]]:
        import json

        out = []
        try:
            with open(self.entries_path) as f:
                for line in f:
                    if line.endswith("\n"):  # a torn last line (crash mid-append) is skipped, not fatal
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def append(self, entries: list[dict[str, Any]], cursor: str | None) -> int:
        """Add the entries not already held, then move the cursor (after the data is on disk)."""
        import json
        import os

        self.root.mkdir(parents=True, exist_ok=True)
        seen = {(str(e.get("task_id")), content_hash(e)) for e in self.load()}
        new = []
        for e in entries:
            key = (str(e.get("task_id")), content_hash(e))
            if key not in seen:
                seen.add(key)
                new.append(e)
        if new:
            with open(self.entries_path, "a") as f:
                for e in new:
                    f.write(json.dumps(e, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cursor": cursor, "entries": len(seen)}))
        tmp.replace(self.state_path)
        return len(new)
