"""Profile pushes to the agent manager (POST /v1/agents/{id}/profile), retried until acknowledged.

The rule that keeps pointer and profile in agreement: per agent, pushes are serialized and always
carry the agent's *newest* deployment; after an acknowledgement the newest deployment is read again
and pushed too if a rollback or promotion was recorded meanwhile. A failed push is counted and
retried with exponential backoff (``[registry] push_retry_*``) by :meth:`ProfileSync.sync_due`, which
the daemon schedules; status lists what is pending and the last error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from ..ledger.store import Ledger
from .deploy import RegistryConfig, mark_pushed, pending_pushes, record_push_failure

# A push acknowledged while a newer deployment was recorded leads to another push; this many rounds in
# a row means deployments are being recorded faster than pushed, and the next sync picks it up.
MAX_ROUNDS = 10


class PushError(Exception):
    """The agent manager did not acknowledge a profile (transport error, non-2xx, or not accepted)."""


def _check(agent_id: str, body: dict, resp: httpx.Response) -> dict:
    if resp.status_code >= 300:
        raise PushError(f"HTTP {resp.status_code} from the agent manager: {resp.text[:200]}")
    try:
        data = resp.json()
    except ValueError:
        raise PushError("agent manager answered with malformed JSON") from None
    if not isinstance(data, dict) or data.get("accepted") is False:
        raise PushError(f"agent manager did not accept the profile: {str(data)[:200]}")
    # An answer about another version is not an acknowledgement of this one.
    if data.get("model_version") not in (None, body["model_version"]):
        raise PushError(f"agent manager acknowledged {data.get('model_version')!r}, not {body['model_version']!r}")
    return data


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _path(agent_id: str) -> str:
    return f"/v1/agents/{quote(agent_id, safe='')}/profile"


class HttpPusher:
    """Blocking pusher (tests, scripts): ``push(agent_id, body)`` returns the answer or raises PushError."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout)

    def push(self, agent_id: str, body: dict) -> dict:
        try:
            resp = self.http.post(_path(agent_id), json=body)
        except httpx.HTTPError as e:
            raise PushError(f"{type(e).__name__}: {e}"[:300]) from None
        return _check(agent_id, body, resp)

    def close(self) -> None:
        self.http.close()


class AsyncHttpPusher:
    """The daemon's pusher: same contract as :class:`HttpPusher`, on the event loop."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0):
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout)

    async def push(self, agent_id: str, body: dict) -> dict:
        try:
            resp = await self.http.post(_path(agent_id), json=body)
        except httpx.HTTPError as e:
            raise PushError(f"{type(e).__name__}: {e}"[:300]) from None
        return _check(agent_id, body, resp)

    async def close(self) -> None:
        await self.http.aclose()


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _agent_lock(agent_id: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(agent_id, threading.Lock())


def sync_agent_blocking(ledger: Ledger, agent_id: str, pusher: Any, cfg: RegistryConfig | None = None) -> dict:
    """Push ``agent_id``'s newest unacknowledged deployment now (serialized per agent in this process)."""
    cfg = cfg or RegistryConfig()
    pushed: list[int] = []
    with _agent_lock(agent_id):
        for _ in range(MAX_ROUNDS):
            todo = pending_pushes(ledger, cfg, agent_id)
            if not todo:
                return {"agent": agent_id, "state": "in_sync", "pushed": pushed, "error": None}
            p = todo[0]
            try:
                pusher.push(agent_id, p["body"])
            except PushError as e:
                record_push_failure(ledger, p["deployment"], str(e))
                return {"agent": agent_id, "state": "pending", "pushed": pushed, "error": str(e),
                        "deployment": p["deployment"]}
            mark_pushed(ledger, p["deployment"])
            pushed.append(p["deployment"])
    return {"agent": agent_id, "state": "pending", "pushed": pushed, "error": "too many deployments in a row"}


DbCall = Callable[..., Awaitable[Any]]


class ProfileSync:
    """Async push loop for the daemon: ``sync_agent`` right after a deployment, ``sync_due`` on a schedule.

    ``db_call(fn, *args)`` runs a ledger function where the daemon runs them (its ledger thread);
    by default ``asyncio.to_thread``. Pushes of one agent never overlap (an asyncio lock per agent),
    so an older profile can never arrive after a newer one. ``on_failure`` is awaited after each failed
    push with ``{agent, deployment, version, attempts, error}`` (attempts: this deployment's failures so far).
    """

    def __init__(self, ledger: Ledger, pusher: Any, cfg: RegistryConfig | None = None,
                 db_call: DbCall | None = None, concurrency: int = 16,
                 on_failure: Callable[[dict], Awaitable[None]] | None = None):
        self.ledger = ledger
        self.pusher = pusher
        self.cfg = cfg or RegistryConfig()
        self._db: DbCall = db_call or (lambda fn, *a, **k: asyncio.to_thread(fn, *a, **k))
        self.on_failure = on_failure
        self._locks: dict[str, asyncio.Lock] = {}
        self._sem = asyncio.Semaphore(concurrency)

    async def sync_agent(self, agent_id: str, *, respect_backoff: bool = False) -> dict:
        """Push until the agent manager holds the agent's newest deployment, or a push fails."""
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        pushed: list[int] = []
        async with lock, self._sem:
            for _ in range(MAX_ROUNDS):
                todo = await self._db(pending_pushes, self.ledger, self.cfg, agent_id)
                if not todo:
                    return {"agent": agent_id, "state": "in_sync", "pushed": pushed, "error": None}
                p = todo[0]
                if respect_backoff and p["next_attempt_at"] > time.time():
                    return {"agent": agent_id, "state": "pending", "pushed": pushed, "error": p["last_error"],
                            "deployment": p["deployment"], "next_attempt_at": p["next_attempt_at"]}
                try:
                    await self.pusher.push(agent_id, p["body"])
                except PushError as e:
                    await self._db(record_push_failure, self.ledger, p["deployment"], str(e))
                    if self.on_failure is not None:
                        await self.on_failure({"agent": agent_id, "deployment": p["deployment"],
                                               "version": p["version"], "attempts": p["attempts"] + 1,
                                               "error": str(e)})
                    return {"agent": agent_id, "state": "pending", "pushed": pushed, "error": str(e),
                            "deployment": p["deployment"]}
                await self._db(mark_pushed, self.ledger, p["deployment"])
                pushed.append(p["deployment"])
                respect_backoff = False  # a newer deployment found after an ack is due now
        return {"agent": agent_id, "state": "pending", "pushed": pushed, "error": "too many deployments in a row"}

    async def sync_due(self) -> list[dict]:
        """Retry every pending push whose backoff has elapsed (the scheduler's job); returns the outcomes."""
        todo = await self._db(pending_pushes, self.ledger, self.cfg)
        now = time.time()
        agents = sorted({p["agent"] for p in todo if p["next_attempt_at"] <= now})
        return list(await asyncio.gather(*(self.sync_agent(a, respect_backoff=True) for a in agents)))
