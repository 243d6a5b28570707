"""The run ledger: SQLite (WAL) through SQLModel, versioned, migrated, and the only writer of run state.

All methods are synchronous and short; the daemon calls them from one dedicated thread so that the
event loop never blocks on disk and writes never interleave.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from .models import (
    SCHEMA_VERSION,
    Agent,
    Artifact,
    AuditRow,
    Deployment,
    Metric,
    ModelVersion,
    Run,
    SchemaMeta,
    Stage,
)
from .states import (
    ACTIVE_RUN_STATES,
    RUN_ENDS_SKIPPING_STAGES,
    RunState,
    StageState,
    check_run_transition,
    check_stage_transition,
)


class LedgerError(Exception):
    """A ledger problem worded for the operator (schema refused, not found, conflict)."""


class NotFound(LedgerError):
    pass


class Conflict(LedgerError):
    pass


def _migrate_v1_to_v2(conn: Any) -> None:
    """v2: the monitor judges one model version at a time.

    Adds ``agents.monitor`` (the monitor's state for the version in service) and an index on
    ``score_samples (agent_id, model_version, ts)``. Samples recorded before v2 keep ``model_version``
    NULL: unknown, never guessed. A drift baseline frozen from a gate's expected score (``source =
    'promotion'``) is dropped, so the monitor re-freezes one from the platform's own scores.
    """
    def columns(table: str) -> set[str]:
        return {r[1] for r in conn.execute(text(f"PRAGMA table_info({table})"))}

    # The registry tables the monitor reads (deployment_state) come with v3, in the same open.
    if "monitor" not in columns("agents"):
        conn.execute(text("ALTER TABLE agents ADD COLUMN monitor JSON"))
    if "model_version" not in columns("score_samples"):  # declared since v1, but make sure
        conn.execute(text("ALTER TABLE score_samples ADD COLUMN model_version VARCHAR"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_samples_agent_version_ts "
                      "ON score_samples (agent_id, model_version, ts)"))
    conn.execute(text("UPDATE agents SET baseline = NULL WHERE json_valid(baseline) "
                      "AND json_extract(baseline, '$.source') = 'promotion'"))


# The registry's tables as v3 declares them (and as the registry's own create_all made them in v2 ledgers).
# Literal DDL, not the models: a migration must keep meaning what it meant when it shipped.
_V3_REGISTRY_DDL = (
    "CREATE TABLE IF NOT EXISTS approvals (id INTEGER NOT NULL, run_id INTEGER NOT NULL, user VARCHAR NOT NULL, "
    "reason VARCHAR NOT NULL, ts FLOAT NOT NULL, PRIMARY KEY (id), CONSTRAINT uq_approval_user UNIQUE (run_id, user))",
    "CREATE INDEX IF NOT EXISTS ix_approvals_run_id ON approvals (run_id)",
    "CREATE TABLE IF NOT EXISTS deployment_state (deployment_id INTEGER NOT NULL, agent_id VARCHAR NOT NULL, "
    "version_id VARCHAR NOT NULL, body JSON, push_attempts INTEGER NOT NULL, push_error VARCHAR, "
    "last_attempt_at FLOAT, pushed_at FLOAT, since_ts FLOAT, expected_score FLOAT, watch JSON, "
    "PRIMARY KEY (deployment_id))",
    "CREATE INDEX IF NOT EXISTS ix_depstate_agent ON deployment_state (agent_id, deployment_id)",
)
_V3_REGISTRY_COLUMNS = {
    "approvals": {"id", "run_id", "user", "reason", "ts"},
    "deployment_state": {"deployment_id", "agent_id", "version_id", "body", "push_attempts", "push_error",
                         "last_attempt_at", "pushed_at", "since_ts", "expected_score", "watch"},
}


def _migrate_v2_to_v3(conn: Any) -> None:
    """v3: the registry's tables (``approvals``, ``deployment_state``) belong to the versioned schema.

    Until v2 the registry created them itself, outside the schema version (at daemon start, and in the
    v1 -> v2 step). This step creates them, with their indexes, where a ledger lacks them, and checks
    that tables already there have every column v3 reads: rows are kept as they are. A table that
    exists with other columns (a hand edit) stops the migration, which rolls back whole.
    """
    for ddl in _V3_REGISTRY_DDL:
        conn.execute(text(ddl))
    for table, wanted in _V3_REGISTRY_COLUMNS.items():
        have = {r[1] for r in conn.execute(text(f"PRAGMA table_info({table})"))}
        if not wanted <= have:
            raise LedgerError(f"table {table} lacks columns {sorted(wanted - have)}; cannot migrate to v3")


# Migrations from version N to N+1. Every version this project has shipped has an entry here.
MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _migrate_v1_to_v2, 2: _migrate_v2_to_v3}


# Derived counters SQLite itself keeps current, so `status` reads a few rows instead of counting 100,000
# runs or re-reading the registry on every call. Triggers catch every writer (the ORM, the registry's SQL
# in a write transaction, a repair by hand), which counting in Python at each call site could not. Not part of the versioned
# schema: made (and seeded from the tables) at open when missing, so any ledger version gets them.
COUNTER_TABLES = {
    # runs per state
    "run_state_counts": "CREATE TABLE run_state_counts (state VARCHAR PRIMARY KEY, n INTEGER NOT NULL)",
    # a number that grows whenever something a cached read depends on changes (``change_count``)
    "change_counters": "CREATE TABLE change_counters (name VARCHAR PRIMARY KEY, n INTEGER NOT NULL)",
}
_RUN_COUNT = ("INSERT INTO run_state_counts (state, n) VALUES ({row}.state, {d}) "
              "ON CONFLICT (state) DO UPDATE SET n = n + {d}")
_BUMP = "INSERT INTO change_counters (name, n) VALUES ('{name}', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1"
# What `registry` covers: everything pr1d.registry.status reads (deployments, their push and watch state,
# approvals, model version metadata, and runs entering, in or leaving awaiting_approval).
_REGISTRY_TABLES = ("deployments", "deployment_state", "approvals", "model_versions")
COUNTER_TRIGGERS = {
    "trg_runs_count_insert": f"AFTER INSERT ON runs BEGIN {_RUN_COUNT.format(row='NEW', d=1)}; END",
    "trg_runs_count_delete": f"AFTER DELETE ON runs BEGIN {_RUN_COUNT.format(row='OLD', d=-1)}; END",
    "trg_runs_count_update": (f"AFTER UPDATE OF state ON runs WHEN NEW.state IS NOT OLD.state BEGIN "
                              f"{_RUN_COUNT.format(row='OLD', d=-1)}; {_RUN_COUNT.format(row='NEW', d=1)}; END"),
    "trg_runs_registry_insert": (f"AFTER INSERT ON runs WHEN NEW.state = 'awaiting_approval' BEGIN "
                                 f"{_BUMP.format(name='registry')}; END"),
    "trg_runs_registry_delete": (f"AFTER DELETE ON runs WHEN OLD.state = 'awaiting_approval' BEGIN "
                                 f"{_BUMP.format(name='registry')}; END"),
    "trg_runs_registry_update": (f"AFTER UPDATE ON runs WHEN NEW.state = 'awaiting_approval' OR "
                                 f"OLD.state = 'awaiting_approval' BEGIN {_BUMP.format(name='registry')}; END"),
    **{f"trg_{t}_registry_{op.lower()}": f"AFTER {op} ON {t} BEGIN {_BUMP.format(name='registry')}; END"
       for t in _REGISTRY_TABLES for op in ("INSERT", "UPDATE", "DELETE")},
}


def ensure_counters(conn: sqlite3.Connection) -> None:
    """Create the counter tables (seeded from the tables they count) and their triggers where missing, in one
    IMMEDIATE transaction so no write lands between the seed and the first trigger."""
    def names(kind: str) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}

    def wanted(tables: set[str]) -> set[str]:
        # Only on tables that exist (every ledger since v2 has the registry's; a trigger on a missing table
        # would make the ledger unopenable, when a missing counter only makes status slower).
        return {n for n, body in COUNTER_TRIGGERS.items() if body.split(" ON ")[1].split()[0] in tables}

    tables = names("table")
    if set(COUNTER_TABLES) <= tables and wanted(tables) <= names("trigger"):
        return  # the common case: a read, no write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables, triggers = names("table"), names("trigger")
        for name, ddl in COUNTER_TABLES.items():
            if name not in tables:
                conn.execute(ddl)
        # Seeded afresh whenever a trigger is missing: counts kept without one may have drifted.
        if not wanted(tables) <= triggers:
            conn.execute("DELETE FROM run_state_counts")
            conn.execute("INSERT INTO run_state_counts (state, n) SELECT state, count(*) FROM runs GROUP BY state")
            conn.execute(_BUMP.format(name="registry"))
        for name in sorted(wanted(tables) - triggers):
            conn.execute(f"CREATE TRIGGER {name} {COUNTER_TRIGGERS[name]}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def change_count(ledger: Ledger, name: str) -> int:
    """How many times the data behind ``name`` (``registry``) changed: equal numbers, equal data."""
    raw = ledger.engine.raw_connection()
    try:
        row = raw.cursor().execute("SELECT n FROM change_counters WHERE name = ?", (name,)).fetchone()
    finally:
        raw.close()
    return int(row[0]) if row else 0


def _now() -> float:
    return time.time()


def _set_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transition survives power loss, not only a process crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Another process holding the write lock (a backup, an operator's sqlite3 shell) makes us wait, not fail.
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": 30},
    )
    event.listen(engine, "connect", _set_pragmas)
    return engine


LEDGER_SIDE_FILES = ("-wal", "-shm", "-journal")


def backup_refusal(dest: Path, live: Path) -> str | None:
    """Why ``dest`` cannot take a backup of the ledger at ``live`` (None: it can); nothing is written.

    A backup never overwrites: not the live ledger or its side files (that would corrupt it), not a
    folder (the rename would fail half-way), not an older copy (pick a new name or remove it first).
    """
    live_r = live.resolve()
    guarded = {live_r, *(live_r.with_name(live_r.name + s) for s in LEDGER_SIDE_FILES)}
    if dest.resolve() in guarded:
        return f"{dest} is the daemon's live ledger (or one of its files); back up to another path"
    if os.path.lexists(dest):
        if dest.is_dir():
            return f"{dest} is a directory; name a file to create, e.g. {dest / 'ledger.sqlite'}"
        return f"{dest} already exists; a backup never overwrites: pick a new name or remove it first"
    for parent in dest.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                return f"{parent} is not a directory, so {dest} cannot be created"
            break
    return None


class WriteTx:
    """One write transaction, opened with ``BEGIN IMMEDIATE``: ``with ledger.write() as tx:``.

    For changes of several steps that must land whole (a promotion: the approval, the run's transition,
    the deployment rows, the audit). IMMEDIATE takes the write lock before the first read, so a
    read-check-write sequence (is the run still awaiting approval? then promote it) cannot interleave
    with another writer's: that is what makes twenty concurrent approvals produce one promotion.

    Run state and audit rows go through the ledger's own code (:meth:`transition_run`, :meth:`audit`),
    so the life cycle's rules and the audit's shape hold here as everywhere. :meth:`execute`,
    :meth:`one` and :meth:`all` run SQL for the registry's rows (deployments, their state, approvals,
    model versions) in the same transaction. Side effects outside the database (the pointer symlink)
    register an undo with :meth:`on_rollback`; it runs if the transaction does not commit, including
    when COMMIT itself fails.
    """

    def __init__(self, ledger: Ledger):
        self._ledger = ledger
        self._undo: list[Callable[[], Any]] = []

    def __enter__(self) -> WriteTx:
        self._s = self._ledger._session()
        try:
            self._conn = self._s.connection()
            self._conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._s.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self._commit()
                    return
                except BaseException:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            self._s.close()

    def _commit(self) -> None:
        self._s.commit()

    def _rollback(self) -> None:
        try:
            self._s.rollback()
        finally:
            for fn in reversed(self._undo):
                fn()

    def on_rollback(self, fn: Callable[[], Any]) -> None:
        self._undo.append(fn)

    # -- the ledger's own writes ----------------------------------------------------------------------
    def transition_run(self, run_id: int, dst: str, actor: str, reason: str | None = None, *,
                       src: str | None = None, now: float | None = None, **fields: Any) -> dict | None:
        """:meth:`Ledger.transition_run` in this transaction; with ``src``, only from that state
        (None when the run has left it: another writer was first)."""
        run = self._ledger._transition_run(self._s, run_id, dst, actor, reason, src, now, fields)
        return run.model_dump() if run is not None else None

    def audit(self, actor: str, action: str, entity: str, entity_id: object, *, ts: float | None = None,
              src: str | None = None, dst: str | None = None, reason: str | None = None,
              details: dict | None = None) -> None:
        """An audit row in this transaction (:meth:`Ledger.audit`)."""
        self._ledger._audit(self._s, actor, action, entity, entity_id, src=src, dst=dst, reason=reason,
                            details=details, ts=ts)
        self._s.flush()  # in order with the SQL around it

    # -- the registry's rows ------------------------------------------------------------------------
    def execute(self, sql: str, params: Any = ()) -> Any:
        """Run one statement (``?`` parameters); the result has ``rowcount`` and ``lastrowid``."""
        return self._conn.exec_driver_sql(sql, params)

    def one(self, sql: str, params: Any = ()) -> Any:
        """The first row of a query (a tuple-like row), or None."""
        return self._conn.exec_driver_sql(sql, params).first()

    def all(self, sql: str, params: Any = ()) -> list[Any]:
        return list(self._conn.exec_driver_sql(sql, params).all())


class Ledger:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = open_engine(self.path)
        self._check_schema()
        raw = self.engine.raw_connection()
        try:
            ensure_counters(raw.driver_connection)
        finally:
            raw.close()

    # -- schema -----------------------------------------------------------------------------------
    def _check_schema(self) -> None:
        with self.engine.begin() as conn:
            has_meta = conn.execute(
                text("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_meta'")
            ).first()
            if not has_meta:
                others = conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type='table'")).scalar()
                if others:
                    raise LedgerError(
                        f"{self.path}: not a pr1 ledger (tables but no schema_meta); refusing to touch it"
                    )
                SQLModel.metadata.create_all(conn)
                conn.execute(
                    insert(SchemaMeta).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
                return
            row = conn.execute(text("SELECT value FROM schema_meta WHERE key='schema_version'")).first()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema version {version} is newer than this pr1d understands "
                f"({SCHEMA_VERSION}); run the pr1d release that wrote it, or restore a backup"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise LedgerError(f"{self.path}: no migration from ledger schema version {missing[0]}")
        backup = self.path.with_name(f"{self.path.name}.v{version}.bak")
        self.backup(backup)  # a migration that goes wrong must be undoable by hand
        with self.engine.begin() as conn:
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](conn)
                conn.execute(
                    text("UPDATE schema_meta SET value=:v WHERE key='schema_version'"), {"v": str(v + 1)}
                )

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT value FROM schema_meta WHERE key='schema_version'")).scalar())

    def integrity_check(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(text("PRAGMA integrity_check")).scalar())

    def backup(self, dest: Path | str) -> Path:
        """Online, consistent copy through SQLite's backup API (readers and the writer keep going).

        Raises ValueError, before writing anything, for a destination `backup_refusal` refuses.
        """
        dest = Path(dest)
        why = backup_refusal(dest, self.path)
        if why:
            raise ValueError(why)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        try:
            src = sqlite3.connect(self.path, timeout=30)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst, pages=1024)
            finally:
                dst.close()
                src.close()
            tmp.replace(dest)
        except BaseException:
            if tmp.is_file():
                tmp.unlink()  # a failed backup leaves nothing that could pass for a copy
            raise
        return dest

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        # expire_on_commit=False: rows stay readable after commit (model_dump of an expired row is empty).
        return Session(self.engine, expire_on_commit=False)

    def write(self) -> WriteTx:
        """One write transaction for a change of several steps: ``with ledger.write() as tx: ...``."""
        return WriteTx(self)

    # -- audit ------------------------------------------------------------------------------------
    @staticmethod
    def _audit(
        s: Session,
        actor: str,
        action: str,
        entity: str,
        entity_id: object,
        *,
        src: str | None = None,
        dst: str | None = None,
        reason: str | None = None,
        details: dict | None = None,
        ts: float | None = None,
    ) -> None:
        s.add(
            AuditRow(
                ts=_now() if ts is None else ts,
                actor=actor,
                action=action,
                entity=entity,
                entity_id=str(entity_id),
                from_state=src,
                to_state=dst,
                reason=reason,
                details=details,
            )
        )

    def audit(self, actor: str, action: str, entity: str, entity_id: object, **kw: Any) -> None:
        with self._session() as s:
            self._audit(s, actor, action, entity, entity_id, **kw)
            s.commit()

    def audit_log(self, entity: str | None = None, entity_id: object = None, limit: int = 200) -> list[dict]:
        with self._session() as s:
            q = select(AuditRow)
            if entity:
                q = q.where(AuditRow.entity == entity)
            if entity_id is not None:
                q = q.where(AuditRow.entity_id == str(entity_id))
            rows = s.exec(q.order_by(col(AuditRow.id).desc()).limit(limit)).all()
            return [r.model_dump() for r in reversed(rows)]

    # -- agents -----------------------------------------------------------------------------------
    def upsert_agents(self, agents: Iterable[dict]) -> int:
        n = 0
        now = _now()
        with self._session() as s:
            for a in agents:
                row = s.get(Agent, a["id"])
                if row is None:
                    s.add(Agent(id=a["id"], model=a.get("model", ""), profile=a.get("profile", ""),
                                created_at=now, updated_at=now))
                    n += 1
                elif (row.model, row.profile) != (a.get("model", row.model), a.get("profile", row.profile)):
                    row.model, row.profile, row.updated_at = a.get("model", row.model), a.get("profile", row.profile), now
                    s.add(row)
            s.commit()
        return n

    def get_agent(self, agent_id: str) -> dict:
        with self._session() as s:
            row = s.get(Agent, agent_id)
            if row is None:
                raise NotFound(f"no such agent: {agent_id}")
            return row.model_dump()

    def list_agents(self) -> list[dict]:
        with self._session() as s:
            return [a.model_dump() for a in s.exec(select(Agent).order_by(Agent.id)).all()]

    def set_hold(self, agent_id: str, hold: bool, actor: str, reason: str | None) -> dict:
        with self._session() as s:
            row = s.get(Agent, agent_id)
            if row is None:
                raise NotFound(f"no such agent: {agent_id}")
            before = row.hold
            row.hold, row.hold_reason, row.hold_by, row.updated_at = hold, reason if hold else None, actor if hold else None, _now()
            s.add(row)
            self._audit(s, actor, "hold" if hold else "unhold", "agent", agent_id,
                        src=str(before).lower(), dst=str(hold).lower(), reason=reason)
            s.commit()
            return row.model_dump()

    def update_agent_fields(self, agent_id: str, **fields: Any) -> None:
        with self._session() as s:
            row = s.get(Agent, agent_id)
            if row is None:
                raise NotFound(f"no such agent: {agent_id}")
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = _now()
            s.add(row)
            s.commit()

    # -- runs -------------------------------------------------------------------------------------
    def create_run(
        self,
        agent_id: str,
        kind: str,
        actor: str,
        *,
        params: dict | None = None,
        idempotency_key: str | None = None,
        trigger_id: int | None = None,
        reason: str | None = None,
        stages: list[str] | None = None,
    ) -> tuple[dict, bool]:
        """Queue a run; returns (run, created). A repeated idempotency key returns the first run."""
        with self._session() as s:
            if idempotency_key:
                prior = s.exec(select(Run).where(Run.idempotency_key == idempotency_key)).first()
                if prior is not None:
                    if (prior.agent_id, prior.kind) != (agent_id, kind):
                        raise Conflict(
                            f"idempotency key {idempotency_key!r} already used for run {prior.id} "
                            f"({prior.agent_id}, {prior.kind})"
                        )
                    return prior.model_dump(), False
            agent = s.get(Agent, agent_id)
            if agent is None:
                raise NotFound(f"no such agent: {agent_id}")
            active = s.exec(
                select(Run).where(Run.agent_id == agent_id, col(Run.state).in_([str(x) for x in ACTIVE_RUN_STATES]))
            ).first()
            if active is not None:
                raise Conflict(f"agent {agent_id} already has run {active.id} ({active.state})")
            now = _now()
            run = Run(agent_id=agent_id, kind=kind, state=RunState.queued, reason=reason,
                      idempotency_key=idempotency_key, trigger_id=trigger_id, params=params or {},
                      created_by=actor, created_at=now, updated_at=now)
            s.add(run)
            s.flush()
            for i, name in enumerate(stages or []):
                s.add(Stage(run_id=run.id, seq=i, name=name))
            self._audit(s, actor, "create", "run", run.id, dst=RunState.queued, reason=reason,
                        details={"agent": agent_id, "kind": kind, "params": params or {}})
            s.commit()
            s.refresh(run)
            return run.model_dump(), True

    def transition_run(self, run_id: int, dst: str, actor: str, reason: str | None = None, **fields: Any) -> dict:
        """Move a run to dst (raises IllegalTransition) and write the audit row, in one transaction."""
        with self._session() as s:
            run = self._transition_run(s, run_id, dst, actor, reason, None, None, fields)
            assert run is not None  # no expected source state: moved or raised
            s.commit()
            s.refresh(run)
            return run.model_dump()

    def _transition_run(self, s: Session, run_id: int, dst: str, actor: str, reason: str | None,
                        src: str | None, now: float | None, fields: dict[str, Any]) -> Run | None:
        """The one run transition, in session ``s``: every writer of run state comes through here.

        With ``src``, conditional: None (and nothing written) when the run is no longer in ``src``.
        """
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no such run: {run_id}")
        if src is not None and run.state != src:
            check_run_transition(run_id, src, dst)  # an illegal request raises even when another writer was first
            return None
        src = run.state
        check_run_transition(run_id, src, dst)
        now = _now() if now is None else now
        run.state, run.reason, run.updated_at = str(dst), reason, now
        if dst == RunState.running and run.started_at is None:
            run.started_at = now
        if dst in (RunState.failed, RunState.cancelled, RunState.rejected, RunState.awaiting_approval,
                   RunState.succeeded):
            run.finished_at = now
        for k, v in fields.items():
            setattr(run, k, v)
        s.add(run)
        self._audit(s, actor, "transition", "run", run_id, src=src, dst=str(dst), reason=reason, ts=now)
        if dst in RUN_ENDS_SKIPPING_STAGES:
            # Same transaction: no reader ever sees an ended run with stages still waiting to run.
            self._skip_pending(s, run_id, actor, f"run {dst}: {reason}" if reason else f"run {dst}")
        s.flush()
        return run

    def _skip_pending(self, s: Session, run_id: int, actor: str, reason: str) -> list[Stage]:
        """Mark every pending stage of ``run_id`` skipped (each with its audit row), in session ``s``."""
        skipped = list(s.exec(select(Stage).where(Stage.run_id == run_id, Stage.state == StageState.pending)
                              .order_by(Stage.seq)).all())
        for st in skipped:
            check_stage_transition(st.id, st.state, StageState.skipped)
            st.state = StageState.skipped  # finished_at stays empty: the stage never ran
            s.add(st)
            self._audit(s, actor, "transition", "stage", st.id, src=StageState.pending, dst=StageState.skipped,
                        reason=reason, details={"run": run_id, "stage": st.name})
        return skipped

    def skip_stranded_stages(self) -> list[dict]:
        """Ledgers written before the `skipped` stage state left the pending stages of rejected, failed
        and cancelled runs `pending` forever; mark them skipped (idempotent: the daemon calls it at every
        start). Returns the stages it changed."""
        with self._session() as s:
            runs = s.exec(
                select(Run.id, Run.state).where(
                    col(Run.state).in_([str(x) for x in RUN_ENDS_SKIPPING_STAGES]),
                    col(Run.id).in_(select(Stage.run_id).where(Stage.state == StageState.pending)),
                ).order_by(Run.id)
            ).all()
            out: list[dict] = []
            for run_id, state in runs:
                out += [st.model_dump() for st in self._skip_pending(
                    s, run_id, "daemon", f"run {state}: ended before this stage ran (repaired at start)")]
            s.commit()
            return out

    def update_run_fields(self, run_id: int, **fields: Any) -> None:
        with self._session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFound(f"no such run: {run_id}")
            for k, v in fields.items():
                setattr(run, k, v)
            run.updated_at = _now()
            s.add(run)
            s.commit()

    def get_run(self, run_id: int) -> dict:
        with self._session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFound(f"no such run: {run_id}")
            return run.model_dump()

    def run_detail(self, run_id: int) -> dict:
        with self._session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFound(f"no such run: {run_id}")
            out = run.model_dump()
            out["stages"] = [x.model_dump() for x in s.exec(select(Stage).where(Stage.run_id == run_id).order_by(Stage.seq))]
            out["artifacts"] = [x.model_dump() for x in s.exec(select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id))]
            last = (
                select(Metric.name, func.max(Metric.id).label("mid"))
                .where(Metric.run_id == run_id)
                .group_by(Metric.name)
                .subquery()
            )
            out["metrics_last"] = {
                m.name: m.value for m in s.exec(select(Metric).join(last, col(Metric.id) == last.c.mid))
            }
            out["audit"] = [
                x.model_dump()
                for x in s.exec(
                    select(AuditRow).where(AuditRow.entity == "run", AuditRow.entity_id == str(run_id)).order_by(AuditRow.id)
                )
            ]
            return out

    def list_runs(
        self,
        *,
        state: str | None = None,
        agent_id: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict]:
        """Newest first; page with before_id (keyset paging stays fast at any ledger size)."""
        with self._session() as s:
            q = select(Run)
            if state:
                q = q.where(Run.state == state)
            if agent_id:
                q = q.where(Run.agent_id == agent_id)
            if kind:
                q = q.where(Run.kind == kind)
            if before_id:
                q = q.where(col(Run.id) < before_id)
            return [r.model_dump() for r in s.exec(q.order_by(col(Run.id).desc()).limit(limit)).all()]

    def runs_by_state(self, *states: str) -> list[dict]:
        with self._session() as s:
            q = select(Run).where(col(Run.state).in_(list(states))).order_by(Run.id)
            return [r.model_dump() for r in s.exec(q).all()]

    def count_runs_by_state(self) -> dict[str, int]:
        """Runs per state, from the counts SQLite's triggers keep (a GROUP BY took ~5 ms at 100,000 runs)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT state, n FROM run_state_counts WHERE n > 0")).all())

    def next_queued_run(self, exclude: set[int] | None = None) -> dict | None:
        with self._session() as s:
            q = select(Run).where(Run.state == RunState.queued)
            if exclude:
                q = q.where(col(Run.id).not_in(list(exclude)))
            row = s.exec(q.order_by(Run.id).limit(1)).first()
            return row.model_dump() if row else None

    # -- stages -----------------------------------------------------------------------------------
    def stages(self, run_id: int) -> list[dict]:
        with self._session() as s:
            return [x.model_dump() for x in s.exec(select(Stage).where(Stage.run_id == run_id).order_by(Stage.seq))]

    def transition_stage(self, stage_id: int, dst: str, actor: str = "daemon", reason: str | None = None, **fields: Any) -> dict:
        with self._session() as s:
            st = s.get(Stage, stage_id)
            if st is None:
                raise NotFound(f"no such stage: {stage_id}")
            src = st.state
            check_stage_transition(stage_id, src, dst)
            now = _now()
            st.state = str(dst)
            if dst == StageState.running:
                st.started_at, st.attempt, st.finished_at, st.error = now, st.attempt + 1, None, None
            elif dst != StageState.pending:
                st.finished_at = now
            for k, v in fields.items():
                setattr(st, k, v)
            s.add(st)
            self._audit(s, actor, "transition", "stage", stage_id, src=src, dst=str(dst), reason=reason,
                        details={"run": st.run_id, "stage": st.name})
            s.commit()
            s.refresh(st)
            return st.model_dump()

    def update_stage_fields(self, stage_id: int, **fields: Any) -> None:
        with self._session() as s:
            st = s.get(Stage, stage_id)
            if st is None:
                raise NotFound(f"no such stage: {stage_id}")
            for k, v in fields.items():
                setattr(st, k, v)
            s.add(st)
            s.commit()

    def record_metrics(self, run_id: int, stage_id: int | None, items: list[tuple[str, int | None, float]]) -> None:
        if not items:
            return
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(Metric),
                [dict(run_id=run_id, stage_id=stage_id, name=n, step=st, value=float(v), ts=now) for n, st, v in items],
            )

    def metrics(self, run_id: int, name: str | None = None, limit: int = 5000) -> list[dict]:
        with self._session() as s:
            q = select(Metric).where(Metric.run_id == run_id)
            if name:
                q = q.where(Metric.name == name)
            return [m.model_dump() for m in s.exec(q.order_by(Metric.id).limit(limit)).all()]

    def record_artifact(self, run_id: int, stage_id: int | None, name: str, path: str, sha256: str,
                        size: int, kind: str = "file", meta: dict | None = None) -> dict:
        with self._session() as s:
            a = Artifact(run_id=run_id, stage_id=stage_id, name=name, kind=kind, path=path, sha256=sha256,
                         size=size, meta=meta, created_at=_now())
            s.add(a)
            s.commit()
            s.refresh(a)
            return a.model_dump()

    # -- recovery ---------------------------------------------------------------------------------
    def recover_after_restart(self) -> list[dict]:
        """After an unclean stop: stages left `running` become `interrupted`, as do their runs.

        Returns the stages that were running (with their last pid) so the daemon can make sure no
        orphaned worker is still writing before it resumes them.
        """
        orphans: list[dict] = []
        with self._session() as s:
            for st in s.exec(select(Stage).where(Stage.state == StageState.running)).all():
                orphans.append(st.model_dump())
                st.state, st.finished_at = StageState.interrupted, _now()
                s.add(st)
                self._audit(s, "daemon", "transition", "stage", st.id, src="running", dst="interrupted",
                            reason="daemon restarted while the stage ran", details={"run": st.run_id, "stage": st.name})
            for run in s.exec(select(Run).where(Run.state == RunState.running)).all():
                run.state, run.reason, run.updated_at = RunState.interrupted, "daemon restarted mid-stage", _now()
                s.add(run)
                self._audit(s, "daemon", "transition", "run", run.id, src="running", dst="interrupted",
                            reason="daemon restarted mid-stage")
            s.commit()
        return orphans

    # -- registry (model versions, deployments) -----------------------------------------------------
    def deployments(self, agent_id: str | None = None, limit: int = 200) -> list[dict]:
        with self._session() as s:
            q = select(Deployment)
            if agent_id:
                q = q.where(Deployment.agent_id == agent_id)
            return [d.model_dump() for d in s.exec(q.order_by(col(Deployment.id).desc()).limit(limit)).all()]

    def model_version(self, version_id: str) -> dict:
        with self._session() as s:
            v = s.get(ModelVersion, version_id)
            if v is None:
                raise NotFound(f"no such model version: {version_id}")
            return v.model_dump()


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


# -- triggers (the monitor's decisions, with their evidence) ---------------------------------------
def record_trigger(ledger: Ledger, agent_id: str, signal: str, job_kind: str, evidence: dict,
                   suppressed: str | None) -> int:
    from .models import TriggerRow

    with ledger._session() as s:
        row = TriggerRow(agent_id=agent_id, ts=_now(), signal=signal, job_kind=job_kind, evidence=evidence,
                         suppressed=suppressed)
        s.add(row)
        s.commit()
        return int(row.id)


def link_trigger(ledger: Ledger, trigger_id: int, run_id: int | None, suppressed: str | None = None) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE triggers SET run_id = :r, suppressed = coalesce(:s, suppressed) WHERE id = :t"),
                     {"r": run_id, "s": suppressed, "t": trigger_id})


def triggers(ledger: Ledger, agent_id: str | None = None, limit: int = 200) -> list[dict]:
    from .models import TriggerRow

    with ledger._session() as s:
        q = select(TriggerRow)
        if agent_id:
            q = q.where(TriggerRow.agent_id == agent_id)
        return [t.model_dump() for t in s.exec(q.order_by(col(TriggerRow.id).desc()).limit(limit)).all()]


def trigger(ledger: Ledger, trigger_id: int) -> dict | None:
    """One trigger row with its evidence (None when it is gone), for the run it queued."""
    from .models import TriggerRow

    with ledger._session() as s:
        row = s.get(TriggerRow, trigger_id)
        return row.model_dump() if row is not None else None


def ledger_bytes(path: Path) -> int:
    """Bytes the ledger takes on disk: the main file plus its WAL.

    Recent writes live in -wal until a checkpoint, so the main file alone under-counts before a
    checkpoint and makes compaction look like growth (-shm is an index, not data, and stays out).
    """
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def compact(ledger: Ledger, samples_days: float, keep_per_agent: int, metrics_days: float,
            vacuum: bool = False, now: float | None = None) -> dict:
    """Apply the retention policy; returns what was removed. Never touches runs, triggers or the audit log."""
    now = _now() if now is None else now
    cutoff_samples = now - samples_days * 86400
    cutoff_metrics = now - metrics_days * 86400
    before = ledger_bytes(ledger.path)
    with ledger.engine.begin() as conn:
        # A sample goes when it is old AND not among its agent's newest keep_per_agent.
        samples = conn.execute(text(
            "DELETE FROM score_samples WHERE ingested_at < :cut AND id NOT IN ("
            " SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY agent_id ORDER BY ts DESC, eval_id DESC)"
            " AS rn FROM score_samples) WHERE rn <= :keep)"), {"cut": cutoff_samples, "keep": keep_per_agent}).rowcount
        metrics = conn.execute(text(
            "DELETE FROM metrics WHERE run_id IN (SELECT id FROM runs WHERE finished_at IS NOT NULL "
            "AND finished_at < :cut AND state NOT IN ('queued','running','interrupted','awaiting_approval'))"),
            {"cut": cutoff_metrics}).rowcount
    with ledger.engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    if vacuum:
        raw = ledger.engine.raw_connection()
        try:
            raw.execute("VACUUM")
        finally:
            raw.close()
    out = {"samples_removed": samples, "metrics_removed": metrics, "bytes_before": before,
           "bytes_after": ledger_bytes(ledger.path), "vacuumed": vacuum}
    ledger.audit("daemon", "compact", "ledger", "ledger", details=out)
    return out
