"""Ledger tables (SQLModel). Bump SCHEMA_VERSION and add a migration to store.MIGRATIONS for any change here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

# 2: score_samples are read per model version (index), agents.monitor keeps the monitor's per-version state.
# 3: the registry's tables (approvals, deployment_state) are part of the versioned schema, declared here.
SCHEMA_VERSION = 3


def _json(default: Any = None) -> Any:
    return Field(default=default, sa_column=Column(JSON, nullable=True))


class SchemaMeta(SQLModel, table=True):
    __tablename__ = "schema_meta"
    key: str = Field(primary_key=True)
    value: str


class Agent(SQLModel, table=True):
    __tablename__ = "agents"
    id: str = Field(primary_key=True)
    model: str = ""
    profile: str = ""
    hold: bool = False
    hold_reason: str | None = None
    hold_by: str | None = None
    current_version: str | None = None  # mirrors the deployments pointer for fast reads
    eval_cursor: str | None = None  # scoring API cursor for /evaluations
    health: dict | None = _json()  # poller's last success / consecutive failures / last error
    baseline: dict | None = _json()  # frozen drift baseline: first K platform scores of the version in service
    monitor: dict | None = _json()  # the monitor's state for the version in service (sequential fail test)
    signals: dict | None = _json()  # last evaluated signal states, for the console
    last_polled_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class ScoreSample(SQLModel, table=True):
    __tablename__ = "score_samples"
    __table_args__ = (
        UniqueConstraint("agent_id", "eval_id", name="uq_sample_eval"),  # evaluations are idempotent by id
        Index("ix_samples_agent_ts", "agent_id", "ts"),
        # The signals read one version's samples: after a promotion, the old version's must not fill the window.
        Index("ix_samples_agent_version_ts", "agent_id", "model_version", "ts"),
    )
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str
    eval_id: str
    ts: float
    weighted_score: float | None = None
    status: str = "pass"
    rubric: dict | None = _json()
    task_id: str | None = None
    tier: str | None = None
    model_version: str | None = None  # the version it was graded on (platform's name); None = unknown
    ingested_at: float = 0.0


class TriggerRow(SQLModel, table=True):
    __tablename__ = "triggers"
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = Field(index=True)
    ts: float
    signal: str
    job_kind: str
    evidence: dict | None = _json()
    run_id: int | None = None
    suppressed: str | None = None  # why no run was created (dedupe, cooldown, hold)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_state", "state"), Index("ix_runs_agent", "agent_id", "id"))
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str
    kind: str
    state: str = "queued"
    reason: str | None = None  # why it is in its current state
    idempotency_key: str | None = Field(default=None, unique=True)
    trigger_id: int | None = None
    params: dict | None = _json()
    created_by: str = "daemon"
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    current_stage: str | None = None
    gate: dict | None = _json()  # every number and threshold a gate used


class Stage(SQLModel, table=True):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_stage_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True)
    seq: int
    name: str
    state: str = "pending"
    attempt: int = 0
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    checkpoint: str | None = None  # last checkpoint path reported by the worker
    progress: float | None = None  # 0..1
    eta_s: float | None = None
    log_path: str | None = None
    result: dict | None = _json()


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_name", "run_id", "name", "step"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int
    stage_id: int | None = None
    name: str
    step: int | None = None
    value: float
    ts: float


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True)
    stage_id: int | None = None
    name: str
    kind: str = "file"
    path: str
    sha256: str
    size: int = 0
    meta: dict | None = _json()
    created_at: float = 0.0


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    id: str = Field(primary_key=True)  # content address: sha256 prefix of the weights
    agent_id: str = Field(index=True)
    run_id: int | None = None
    parent_id: str | None = None
    dataset_version: str | None = None
    config_hash: str | None = None
    path: str
    sha256: str
    created_at: float = 0.0
    meta: dict | None = _json()


class Deployment(SQLModel, table=True):
    """Append-only: what was in service for an agent, since when, by whose hand."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deploy_agent_ts", "agent_id", "ts"),)
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str
    version_id: str
    action: str  # promote | rollback | initial
    ts: float
    actor: str
    reason: str | None = None
    run_id: int | None = None
    profile_pushed: bool = False


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)
    id: int | None = Field(default=None, primary_key=True)
    ts: float
    actor: str  # Unix user from SO_PEERCRED, or "daemon"
    action: str
    entity: str  # run | agent | stage | deployment | daemon
    entity_id: str
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    details: dict | None = _json()


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
