"""Deployments: promote, rollback, the ``current`` pointer and start-up repair.

One deployment = one ledger write transaction (:meth:`pr1d.ledger.store.Ledger.write`) that appends the ``deployments`` row,
moves ``agents.current_version``, resets the monitor's baseline and state, moves the run (``awaiting_approval ->
promoted``, or ``promoted -> rolled_back`` for the withdrawn version), writes the audit rows and, last,
swaps the pointer symlink ``<models>/<agent>/current`` with ``os.replace``. If the transaction does not
commit the pointer is put back; if the process dies between the swap and the commit,
:func:`reconcile` makes the pointer agree with the ledger at the next start (the ledger is the source
of truth).

The profile push to the agent manager happens *after* the commit, and never makes a deployment half
done: the deployment is recorded with ``profile_pushed = false`` and the push is retried with backoff
until the agent manager acknowledges it (:mod:`pr1d.registry.push`, which also keeps the push bookkeeping). Only an agent's newest
deployment is ever pushed, so a rollback recorded while a promotion's push is pending supersedes it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..ledger.states import RunState
from ..ledger.store import Conflict, Ledger, NotFound, WriteTx
from .config import RegistryConfig
from .push import pending_pushes, profile_body, sync_agent_blocking
from .versions import RegistryError, agent_dir, check_name, json_cell, remove_tree, verify_version

POINTER = "current"


def models_root(cfg: RegistryConfig, state_dir: Path) -> Path:
    p = Path(os.path.expanduser(cfg.models_dir))
    return p if p.is_absolute() else Path(state_dir) / p


def model_in_service(cfg: RegistryConfig, state_dir: Path, agent_id: str,
                     platform_model: str | None) -> Path | str | None:
    """The model the agent runs now: its current registry version, else its original model by the platform's
    name for it, under ``base_models_dir``, else where ``[registry] base_models`` says (a folder, or a Hub id
    the stage worker resolves: :func:`pr1d.inference.source.resolve_model`); None when none of these is there."""
    root = models_root(cfg, state_dir)
    current = read_pointer(root, agent_id)
    if current:
        return root / agent_id / current
    if platform_model:
        base = Path(os.path.expanduser(cfg.base_models_dir))
        base = base if base.is_absolute() else Path(state_dir) / base
        try:
            folder = base / check_name("model name", platform_model)
        except RegistryError:
            folder = None
        if folder is not None and (folder / "config.json").is_file():
            return folder
        ref = cfg.base_models.get(platform_model)
        if ref:
            local = Path(os.path.expanduser(ref))
            if local.is_absolute() or local.exists():
                return local if (local / "config.json").is_file() else None
            return ref  # a Hub id: the worker has huggingface_hub and the cache (the daemon has neither)
    return None


# -- the pointer ------------------------------------------------------------------------------------


def read_pointer(models_root: Path, agent_id: str) -> str | None:
    """The version the agent's ``current`` symlink names, or None when there is none."""
    link = agent_dir(models_root, agent_id) / POINTER
    try:
        return os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def swap_pointer(adir: Path, target: str | None, *, check: bool = True) -> str | None:
    """Point ``adir/current`` at ``target`` (a version id, relative) atomically; None removes it.

    A new symlink is made under a temporary name and renamed over the old one: readers see the old
    target or the new one, never a missing or half-written link. Returns the previous target.
    """
    link = adir / POINTER
    try:
        old: str | None = os.readlink(link)
    except FileNotFoundError:
        old = None
    if target is None:
        if old is not None:
            link.unlink()
    else:
        check_name("version id", target)
        if check and not (adir / target).is_dir():
            raise RegistryError(f"{adir / target}: version folder missing; cannot point {link} at it")
        tmp = adir / f".{POINTER}.{uuid.uuid4().hex[:12]}.tmp"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fd = os.open(adir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename is durable before the ledger commit that records it
    finally:
        os.close(fd)
    return old


# -- helpers on one transaction ----------------------------------------------------------------------


def _expected_from_gate(gate: Any) -> float | None:
    gate = json_cell(gate)
    if not isinstance(gate, dict):
        return None
    x = gate.get("expected_score")
    if isinstance(x, int | float) and not isinstance(x, bool) and 0.0 < x <= 1.0:
        return float(x)
    return None


def _deploy_in_tx(
    tx: WriteTx,
    models_root: Path,
    agent_id: str,
    version_id: str,
    *,
    action: str,
    actor: str,
    reason: str | None,
    run_id: int | None,
    expected: float | None,
    cfg: RegistryConfig,
    now: float,
) -> int:
    """Append the deployment and move everything that follows it; the pointer swap comes last."""
    arow = tx.one("SELECT current_version FROM agents WHERE id = ?", (agent_id,))
    if arow is None:
        raise NotFound(f"no such agent: {agent_id}")
    previous = arow[0]
    vrow = tx.one("SELECT meta FROM model_versions WHERE id = ?", (version_id,))
    if vrow is None:
        raise NotFound(f"no such model version: {version_id}")
    body = profile_body(version_id, json_cell(vrow[0]), cfg)
    since = tx.one("SELECT max(ts) FROM score_samples WHERE agent_id = ?", (agent_id,))[0]
    pushed = action == "initial"  # the platform already runs the model it reported
    cur = tx.execute(
        "INSERT INTO deployments (agent_id, version_id, action, ts, actor, reason, run_id, profile_pushed) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (agent_id, version_id, action, now, actor, reason, run_id, 1 if pushed else 0),
    )
    dep_id = int(cur.lastrowid)
    tx.execute(
        "UPDATE deployment_state SET push_error = ? WHERE agent_id = ? AND pushed_at IS NULL AND deployment_id < ?",
        (f"superseded by deployment {dep_id}", agent_id, dep_id),
    )
    tx.execute(
        "INSERT INTO deployment_state (deployment_id, agent_id, version_id, body, push_attempts, pushed_at, "
        "since_ts, expected_score) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
        (dep_id, agent_id, version_id, json.dumps(body), now if pushed else None,
         None if action == "initial" else since, expected),
    )
    if action == "initial":
        tx.execute("UPDATE agents SET current_version = ?, updated_at = ? WHERE id = ?", (version_id, now, agent_id))
    else:
        # Reset the monitor: its baseline and sequential state belonged to the version withdrawn. The monitor
        # re-freezes the baseline from the platform's first K scores of this version (never from the gate's
        # expectation: that is pr1's grading) and starts every window on this version's samples.
        tx.execute("UPDATE agents SET current_version = ?, baseline = NULL, monitor = NULL, updated_at = ? "
                   "WHERE id = ?", (version_id, now, agent_id))
    details = {"agent": agent_id, "run": run_id, "profile": body, "expected_score": expected, "since_ts": since}
    tx.audit(actor, action, "deployment", dep_id, ts=now, src=previous, dst=version_id, reason=reason, details=details)
    tx.audit(actor, action, "agent", agent_id, ts=now, src=previous, dst=version_id, reason=reason,
             details={"deployment": dep_id})
    adir = agent_dir(models_root, agent_id)
    old = swap_pointer(adir, version_id)
    # Put back exactly what was there (even a pointer to a folder gone missing) if the commit fails.
    tx.on_rollback(lambda: swap_pointer(adir, old, check=False))
    return dep_id


def promote_in_tx(
    tx: WriteTx, models_root: Path, run_id: int, version_id: str, actor: str, reason: str, cfg: RegistryConfig,
    now: float,
) -> int:
    """``awaiting_approval -> promoted`` for ``run_id`` and the deployment of its version, in ``tx``."""
    row = tx.one("SELECT agent_id, state, gate FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise NotFound(f"no such run: {run_id}")
    agent_id, state, gate = row
    if state != RunState.awaiting_approval:
        raise Conflict(f"run {run_id} is {state}, not awaiting_approval")
    tx.transition_run(run_id, RunState.promoted, actor, reason, src=RunState.awaiting_approval, now=now)
    return _deploy_in_tx(tx, models_root, agent_id, version_id, action="promote", actor=actor, reason=reason,
                         run_id=run_id, expected=_expected_from_gate(gate), cfg=cfg, now=now)


# -- public operations ------------------------------------------------------------------------------


def promote(
    ledger: Ledger,
    models_root: Path,
    run_id: int,
    version_id: str,
    actor: str,
    reason: str,
    *,
    cfg: RegistryConfig | None = None,
    pusher: Any = None,
) -> dict:
    """Promote ``version_id`` (produced by ``run_id``, which must be awaiting approval); returns the deployment.

    Callers normally go through :func:`pr1d.registry.approvals.approve`, which records the approval
    and calls this logic in the same transaction. ``pusher`` (an object with ``push(agent_id, body)``)
    pushes the profile right after the commit; without one the push is left pending for
    :class:`pr1d.registry.push.ProfileSync` (the daemon never blocks its ledger thread on HTTP).
    """
    cfg = cfg or RegistryConfig()
    run = ledger.get_run(run_id)
    if cfg.verify_on_deploy:
        verify_version(ledger, models_root, run["agent_id"], version_id)
    with ledger.write() as tx:
        dep_id = promote_in_tx(tx, models_root, run_id, version_id, actor, reason, cfg, time.time())
    if pusher is not None:
        sync_agent_blocking(ledger, run["agent_id"], pusher, cfg)
    return deployment_info(ledger, dep_id)


def record_initial(
    ledger: Ledger,
    models_root: Path,
    agent_id: str,
    version_id: str,
    *,
    actor: str = "daemon",
    reason: str = "the model in service before pr1's first promotion",
    cfg: RegistryConfig | None = None,
) -> dict | None:
    """Record the version an agent already runs as its first (``initial``) deployment; no push, no reset.

    Rollback needs somewhere to go back to: call this once per agent, before its first promotion, with
    the registered base model (``register_version(..., served_as=<the platform's model name>)``).
    Returns None (and changes nothing) when the agent already has deployments.
    """
    cfg = cfg or RegistryConfig()
    if cfg.verify_on_deploy:
        verify_version(ledger, models_root, agent_id, version_id)
    with ledger.write() as tx:
        if tx.one("SELECT 1 FROM deployments WHERE agent_id = ? LIMIT 1", (agent_id,)) is not None:
            return None
        dep_id = _deploy_in_tx(tx, models_root, agent_id, version_id, action="initial", actor=actor, reason=reason,
                               run_id=None, expected=None, cfg=cfg, now=time.time())
    return deployment_info(ledger, dep_id)


def _history(ledger: Ledger, agent_id: str) -> list[tuple]:
    with ledger.engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT id, version_id, action, run_id FROM deployments WHERE agent_id = ? ORDER BY id", (agent_id,)
        ).all()


def rollback_target(history: list[tuple]) -> str | None:
    """The version a plain rollback returns to, from an agent's deployments (oldest first).

    The newest deployed version that is neither the current one nor itself withdrawn: a version is
    withdrawn when a rollback moves away from it, and cleared when it is deployed again. So repeated
    rollbacks walk back through history (v2 -> v1 -> v0) instead of bouncing between two versions.
    """
    if not history:
        return None
    withdrawn: set[str] = set()
    current: str | None = None
    for _id, version, action, _run in history:
        if action == "rollback" and current is not None:
            withdrawn.add(current)
        withdrawn.discard(version)
        current = version
    for _id, version, _action, _run in reversed(history):
        if version != current and version not in withdrawn:
            return version
    return None


def rollback(
    ledger: Ledger,
    models_root: Path,
    agent_id: str,
    actor: str,
    reason: str,
    *,
    to: str | None = None,
    cfg: RegistryConfig | None = None,
    pusher: Any = None,
) -> dict:
    """Switch ``agent_id`` back to its previous version (see :func:`rollback_target`) or to ``to``.

    The emergency path: no gate, no approval. It reads only the deployment history and the version
    rows, so a broken newest run cannot stop it; the run that produced the withdrawn version moves
    ``promoted -> rolled_back`` when (and only when) it is in ``promoted``. Audited; the profile push
    follows as for a promotion (``pusher`` or the daemon's ProfileSync).
    """
    cfg = cfg or RegistryConfig()
    check_name("agent id", agent_id)
    if to is not None:
        check_name("version id", to)
    ledger.get_agent(agent_id)  # NotFound names the agent
    history = _history(ledger, agent_id)
    if not history:
        raise NotFound(f"agent {agent_id} has no deployments to roll back")
    current = history[-1][1]
    target = to or rollback_target(history)
    if target is None:
        raise NotFound(f"agent {agent_id} has no previous version to roll back to (only {current} was deployed)")
    if target == current:
        raise Conflict(f"agent {agent_id} already runs {target}")
    if cfg.verify_on_deploy or to is not None:
        verify_version(ledger, models_root, agent_id, target)
    # The newest target deployment's expectation, if it ever had one (a gated promotion).
    with ledger.engine.connect() as conn:
        exp = conn.exec_driver_sql(
            "SELECT expected_score FROM deployment_state WHERE agent_id = ? AND version_id = ? "
            "AND expected_score IS NOT NULL ORDER BY deployment_id DESC LIMIT 1", (agent_id, target)
        ).first()
    now = time.time()
    with ledger.write() as tx:
        latest = tx.one("SELECT id, run_id FROM deployments WHERE agent_id = ? ORDER BY id DESC LIMIT 1", (agent_id,))
        if latest is None or latest[0] != history[-1][0]:
            raise Conflict(f"agent {agent_id}: deployments changed while rolling back; run the rollback again")
        withdrawn_run = latest[1]
        if withdrawn_run is not None:
            st = tx.one("SELECT state FROM runs WHERE id = ?", (withdrawn_run,))
            if st is not None and st[0] == RunState.promoted:
                tx.transition_run(withdrawn_run, RunState.rolled_back, actor, f"rolled back: {reason}",
                                  src=RunState.promoted, now=now)
        dep_id = _deploy_in_tx(tx, models_root, agent_id, target, action="rollback", actor=actor, reason=reason,
                               run_id=withdrawn_run, expected=exp[0] if exp else None, cfg=cfg, now=now)
    if pusher is not None:
        sync_agent_blocking(ledger, agent_id, pusher, cfg)
    return deployment_info(ledger, dep_id)


# -- reading history --------------------------------------------------------------------------------

_INFO_COLS = (
    "d.id, d.agent_id, d.version_id, d.action, d.ts, d.actor, d.reason, d.run_id, d.profile_pushed, "
    "s.body, s.push_attempts, s.push_error, s.pushed_at, s.since_ts, s.expected_score, s.watch"
)


def _info(row: tuple) -> dict:
    (dep_id, agent, version, action, ts, actor, reason, run_id, pushed, body, attempts, err, pushed_at, since,
     expected, watch) = row
    return {"id": dep_id, "agent_id": agent, "version_id": version, "action": action, "ts": ts, "actor": actor,
            "reason": reason, "run_id": run_id, "profile_pushed": bool(pushed), "profile": json_cell(body),
            "push_attempts": attempts or 0, "push_error": err, "pushed_at": pushed_at, "since_ts": since,
            "expected_score": expected, "watch": json_cell(watch)}


def deployment_info(ledger: Ledger, deployment_id: int) -> dict:
    with ledger.engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT {_INFO_COLS} FROM deployments d LEFT JOIN deployment_state s ON s.deployment_id = d.id "
            "WHERE d.id = ?", (deployment_id,)
        ).first()
    if row is None:
        raise NotFound(f"no such deployment: {deployment_id}")
    return _info(tuple(row))


def deployment_history(ledger: Ledger, agent_id: str | None = None, limit: int = 200) -> list[dict]:
    """Deployments newest first, with their push state and watch verdict."""
    where, params = ("WHERE d.agent_id = ?", (agent_id, limit)) if agent_id else ("", (limit,))
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT {_INFO_COLS} FROM deployments d LEFT JOIN deployment_state s ON s.deployment_id = d.id "
            f"{where} ORDER BY d.id DESC LIMIT ?", params
        ).all()
    return [_info(tuple(r)) for r in rows]


def in_service_at(ledger: Ledger, agent_id: str, t: float) -> dict | None:
    """The deployment that was in service for ``agent_id`` at wall-clock time ``t`` (None: before any)."""
    with ledger.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT id FROM deployments WHERE agent_id = ? AND ts <= ? ORDER BY ts DESC, id DESC LIMIT 1",
            (agent_id, t),
        ).first()
    return deployment_info(ledger, row[0]) if row else None


# -- start-up repair ----------------------------------------------------------------------------------

def reconcile(ledger: Ledger, models_root: Path) -> dict:
    """Make every agent's pointer and ``current_version`` agree with its newest deployment (call at start).

    The ledger is the source of truth: a crash between the pointer swap and the commit leaves a pointer
    that names a version the ledger never deployed, and this puts it back. Also removes leftovers of
    interrupted registrations and swaps. Returns what it repaired and the profile pushes still pending
    (the daemon hands those to ProfileSync).
    """
    root = Path(models_root)
    repaired: list[dict] = []
    with ledger.engine.connect() as conn:
        latest = conn.exec_driver_sql(
            "SELECT d.agent_id, d.version_id FROM deployments d JOIN (SELECT agent_id, max(id) AS mid "
            "FROM deployments GROUP BY agent_id) m ON d.id = m.mid"
        ).all()
        current = dict(conn.exec_driver_sql("SELECT id, current_version FROM agents").all())
    want = dict(latest)
    if root.is_dir():
        for adir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            for junk in adir.iterdir():
                if junk.name.startswith(f".{POINTER}.") and junk.is_symlink():
                    junk.unlink()  # a swap interrupted before its rename
                elif junk.name.startswith(".tmp-") and junk.is_dir():
                    remove_tree(junk)  # a registration interrupted mid-copy
            if adir.name not in want and (adir / POINTER).is_symlink():
                old = swap_pointer(adir, None)  # a first deployment that never committed
                repaired.append({"agent": adir.name, "pointer_was": old, "pointer_now": None})
    for agent, version in sorted(want.items()):
        adir = agent_dir(root, agent)
        have = read_pointer(root, agent)
        if have != version:
            if not (adir / version).is_dir():
                repaired.append({"agent": agent, "pointer_was": have, "pointer_now": have,
                                 "error": f"version folder {version} is missing; pointer left as is"})
                continue
            swap_pointer(adir, version)
            repaired.append({"agent": agent, "pointer_was": have, "pointer_now": version})
        if current.get(agent) != version:
            ledger.update_agent_fields(agent, current_version=version)
            repaired.append({"agent": agent, "current_version_was": current.get(agent),
                             "current_version_now": version})
    for r in repaired:
        ledger.audit("daemon", "reconcile", "agent", r["agent"], reason="pointer made to agree with the ledger",
                     details=r)
    return {"repaired": repaired, "pending_pushes": pending_pushes(ledger)}
