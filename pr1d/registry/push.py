"""Profile pushes to the agent manager (POST /v1/agents/{id}/profile), retried until acknowledged.

The rule that keeps pointer and profile in agreement: per agent, pushes are serialized and always
carry the agent's *newest* deployment; after an acknowledgement the newest deployment is read again
and pushed too if a rollback or promotion was recorded meanwhile. A failed push is counted and
retried with exponential backoff (``[registry] push_retry_*``) by :meth:`ProfileSync.sync_due`, which
the daemon schedules; status lists what is pending and the last error.

The push bookkeeping lives here too: what is pending (:func:`pending_pushes`), an acknowledgement or
a failure recorded (:func:`mark_pushed`, :func:`record_push_failure`), and the agent manager drifting
from what it acknowledged (:func:`agent_manager_drift`, :func:`mark_for_repush`). Deployments
(:mod:`pr1d.registry.deploy`) build on this module, never the reverse.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from ..ledger.store import Ledger, NotFound
from .config import RegistryConfig
from .versions import json_cell

# A push acknowledged while a newer deployment was recorded leads to another push; this many rounds in
# a row means deployments are being recorded faster than pushed, and the next sync picks it up.
MAX_ROUNDS = 10


def profile_body(version_id: str, meta: dict | None, cfg: RegistryConfig) -> dict:
    """The agent manager's profile body for a version: profile name, model version, execution policy."""
    meta = meta or {}
    return {
        "profile": meta.get("profile") or cfg.profile_name,
        "model_version": meta.get("served_as") or version_id,
        "policy": dict(meta.get("policy") or {}),
    }




# -- push bookkeeping (the ledger side of each push) -------------------------------------------------------------------------------

_PENDING_SQL = (
    "SELECT d.id, d.agent_id, d.version_id, d.ts, d.action, s.body, s.push_attempts, s.push_error, "
    "s.last_attempt_at FROM deployments d "
    "JOIN (SELECT agent_id, max(id) AS mid FROM deployments GROUP BY agent_id) m ON d.id = m.mid "
    "LEFT JOIN deployment_state s ON s.deployment_id = d.id WHERE d.profile_pushed = 0"
)


def next_attempt_at(attempts: int, last_attempt_at: float | None, cfg: RegistryConfig) -> float:
    """When a failed push is due again: exponential backoff from ``push_retry_base_s``, capped."""
    if not attempts or last_attempt_at is None:
        return 0.0
    return last_attempt_at + min(cfg.push_retry_max_s, cfg.push_retry_base_s * 2 ** min(attempts - 1, 30))


def pending_pushes(ledger: Ledger, cfg: RegistryConfig | None = None, agent_id: str | None = None) -> list[dict]:
    """Each agent's newest deployment whose profile the agent manager has not acknowledged yet.

    Older unacknowledged deployments are superseded and never pushed: pushing them late could leave
    the agent manager on a version the pointer no longer names.
    """
    cfg = cfg or RegistryConfig()
    sql, params = _PENDING_SQL, ()
    if agent_id is not None:
        sql, params = sql + " AND d.agent_id = ?", (agent_id,)
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql + " ORDER BY d.id", params).all()
        out = []
        for dep_id, agent, version, ts, action, body, attempts, err, last in rows:
            body = json_cell(body)
            if body is None:  # a deployment recorded without registry state: rebuild its body
                meta = conn.exec_driver_sql("SELECT meta FROM model_versions WHERE id = ?", (version,)).scalar()
                body = profile_body(version, json_cell(meta), cfg)
            out.append({
                "deployment": dep_id, "agent": agent, "version": version, "action": action, "since": ts,
                "attempts": attempts or 0, "last_error": err, "last_attempt_at": last,
                "next_attempt_at": next_attempt_at(attempts or 0, last, cfg), "body": body,
            })
    return out


def mark_pushed(ledger: Ledger, deployment_id: int, *, actor: str = "daemon") -> None:
    """The agent manager acknowledged ``deployment_id``'s profile."""
    now = time.time()
    with ledger.write() as tx:
        row = tx.one("SELECT agent_id, version_id, profile_pushed FROM deployments WHERE id = ?", (deployment_id,))
        if row is None:
            raise NotFound(f"no such deployment: {deployment_id}")
        if row[2]:
            return
        tx.execute("UPDATE deployments SET profile_pushed = 1 WHERE id = ?", (deployment_id,))
        tx.execute(
            "UPDATE deployment_state SET pushed_at = ?, last_attempt_at = ?, push_attempts = push_attempts + 1, "
            "push_error = NULL WHERE deployment_id = ?", (now, now, deployment_id),
        )
        tx.audit(actor, "profile_pushed", "deployment", deployment_id, ts=now,
                 details={"agent": row[0], "version": row[1]})


def record_push_failure(ledger: Ledger, deployment_id: int, error: str) -> None:
    """One failed push attempt (counted for the backoff; the error shows in status)."""
    now = time.time()
    with ledger.write() as tx:
        tx.execute(
            "UPDATE deployment_state SET push_attempts = push_attempts + 1, push_error = ?, last_attempt_at = ? "
            "WHERE deployment_id = ?", (error[:500], now, deployment_id),
        )


def agent_manager_drift(ledger: Ledger, listing: list[dict], fetched_at: float,
                        cfg: RegistryConfig | None = None) -> list[dict]:
    """Agents the agent manager lists with another model or profile than the deployment it acknowledged.

    ``listing`` is the platform's agent list (``id``, ``model``, ``profile``) as fetched at ``fetched_at``.
    Only an agent's newest deployment counts, only once acknowledged before the listing was fetched (a
    push acknowledged since may not show in it yet), and never an ``initial`` one: pr1 did not put it
    there. A model or profile the listing leaves empty is not judged. An agent manager that restarted
    without its state, or a hand edit, shows up here.
    """
    cfg = cfg or RegistryConfig()
    seen = {a["id"]: a for a in listing if isinstance(a, dict) and a.get("id")}
    if not seen:
        return []
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT d.id, d.agent_id, d.version_id, d.action, s.body, s.pushed_at FROM deployments d "
            "JOIN (SELECT agent_id, max(id) AS mid FROM deployments GROUP BY agent_id) m ON d.id = m.mid "
            "LEFT JOIN deployment_state s ON s.deployment_id = d.id "
            "WHERE d.profile_pushed = 1 AND d.action != 'initial' ORDER BY d.id"
        ).all()
        out = []
        for dep_id, agent, version, action, body, pushed_at in rows:
            have = seen.get(agent)
            if have is None or (pushed_at is not None and pushed_at > fetched_at):
                continue
            body = json_cell(body)
            if body is None:
                meta = conn.exec_driver_sql("SELECT meta FROM model_versions WHERE id = ?", (version,)).scalar()
                body = profile_body(version, json_cell(meta), cfg)
            want = (body.get("model_version"), body.get("profile"))
            got = (have.get("model") or "", have.get("profile") or "")
            # A field the platform leaves empty is unknown, not different: judge what it does report.
            if any(g and g != w for g, w in zip(got, want, strict=True)):
                out.append({"deployment": dep_id, "agent": agent, "version": version, "action": action,
                            "deployed": {"model": want[0], "profile": want[1]},
                            "reported": {"model": got[0], "profile": got[1]}})
    return out


def mark_for_repush(ledger: Ledger, drift: dict, *, actor: str = "daemon") -> bool:
    """Push ``drift["deployment"]`` again (see :func:`agent_manager_drift`): it becomes pending, with the
    drift as its last error, and the push loop sends it at once. False when it is no longer the agent's
    newest acknowledged deployment (a newer one is pushed in its place anyway)."""
    now = time.time()
    dep_id = drift["deployment"]
    rep, dep = drift["reported"], drift["deployed"]
    error = (f"agent manager reported {rep['model'] or '(no model)'}/{rep['profile'] or '(no profile)'} "
             f"instead of the acknowledged {dep['model']}/{dep['profile']}; pushing it again")
    with ledger.write() as tx:
        row = tx.one("SELECT agent_id, profile_pushed FROM deployments WHERE id = ?", (dep_id,))
        if row is None or not row[1]:
            return False
        newest = tx.one("SELECT max(id) FROM deployments WHERE agent_id = ?", (row[0],))
        if newest is None or newest[0] != dep_id:
            return False
        tx.execute("UPDATE deployments SET profile_pushed = 0 WHERE id = ?", (dep_id,))
        tx.execute("UPDATE deployment_state SET push_error = ?, push_attempts = 0, last_attempt_at = NULL "
                   "WHERE deployment_id = ?", (error, dep_id))
        tx.audit(actor, "agent_manager_drift", "deployment", dep_id, ts=now, reason=error,
                 details={"agent": row[0], "version": drift["version"], "reported": rep, "deployed": dep})
    return True


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
