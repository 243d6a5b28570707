"""Ledger tables the registry adds (approvals, per-deployment push and watch state) and their creation.

They live here, not in pr1d/ledger/models.py, so the registry can ship before the ledger schema is
bumped; ``pr1d.ledger.models`` imports this module so ``create_all`` makes them in a fresh ledger, and
:func:`ensure_schema` (idempotent) makes them in an existing one.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def _json(default: Any = None) -> Any:
    return Field(default=default, sa_column=Column(JSON, nullable=True))


class Approval(SQLModel, table=True):
    """One person's approval of a run awaiting approval: who (peer credentials), why, when."""

    __tablename__ = "approvals"
    # One approval per user and run: a second one from the same user is a no-op, which is what makes
    # the two-person rule count *distinct* users.
    __table_args__ = (UniqueConstraint("run_id", "user", name="uq_approval_user"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True)
    user: str
    reason: str
    ts: float


class DeploymentState(SQLModel, table=True):
    """What the registry tracks per deployment beyond the append-only row: the profile push and the watch."""

    __tablename__ = "deployment_state"
    __table_args__ = (Index("ix_depstate_agent", "agent_id", "deployment_id"),)
    deployment_id: int = Field(primary_key=True)  # deployments.id
    agent_id: str
    version_id: str
    body: dict | None = _json()  # the exact profile body to push (profile, model_version, policy)
    push_attempts: int = 0
    push_error: str | None = None  # last failure, or "superseded by deployment N"
    last_attempt_at: float | None = None
    pushed_at: float | None = None  # acknowledged by the agent manager
    # Platform-clock ts of the agent's newest score sample when the deployment was recorded: samples
    # after it were graded under this version (None: from the agent's first sample on).
    since_ts: float | None = None
    expected_score: float | None = None  # the gate's expectation of this version's score
    watch: dict | None = _json()  # last post-promotion watch verdict


REGISTRY_TABLES = [Approval.__table__, DeploymentState.__table__]


def ensure_schema(ledger: Any) -> None:
    """Create the registry's tables in ``ledger`` if they are missing (safe to call on every start)."""
    SQLModel.metadata.create_all(ledger.engine, tables=REGISTRY_TABLES)


class WriteTx:
    """One write transaction on a raw SQLite connection, opened with ``BEGIN IMMEDIATE``.

    IMMEDIATE takes the write lock before the first read, so a read-check-write sequence (is the run
    still awaiting approval? then promote it) cannot interleave with another writer's: that is what
    makes twenty concurrent approvals produce one promotion. Side effects outside the database (the
    pointer symlink) register an undo with :meth:`on_rollback`; it runs if the transaction does not
    commit, including when COMMIT itself fails.
    """

    def __init__(self, ledger: Any):
        self._ledger = ledger
        self._undo: list[Any] = []

    def __enter__(self) -> WriteTx:
        self._raw = self._ledger.engine.raw_connection()
        try:
            self.cur = self._raw.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._raw.close()
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
            self._raw.close()

    def _commit(self) -> None:
        self._raw.commit()

    def _rollback(self) -> None:
        try:
            self._raw.rollback()
        finally:
            for fn in reversed(self._undo):
                fn()

    def on_rollback(self, fn: Any) -> None:
        self._undo.append(fn)

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.cur.execute(sql, params)

    def one(self, sql: str, params: Any = ()) -> tuple | None:
        return self.cur.execute(sql, params).fetchone()

    def all(self, sql: str, params: Any = ()) -> list[tuple]:
        return self.cur.execute(sql, params).fetchall()

    def audit(self, actor: str, action: str, entity: str, entity_id: object, *, ts: float, src: str | None = None,
              dst: str | None = None, reason: str | None = None, details: dict | None = None) -> None:
        """An audit row in this transaction (same columns as ``Ledger._audit``)."""
        self.cur.execute(
            "INSERT INTO audit (ts, actor, action, entity, entity_id, from_state, to_state, reason, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, actor, action, entity, str(entity_id), src, dst, reason,
             json.dumps(details, default=str) if details is not None else None),
        )
