"""The socket API contract: JSON-RPC 2.0 framing, error codes, methods, their params and roles.

Shared by the daemon (pr1d/rpc/server.py) and its clients (pr1ctl, pr1tui). One JSON document per
line (newline-delimited): a request object or a batch array. Requests carry "id"; a request without
one is a notification (run, never answered; operator methods are refused that way). Server pushes are
notifications with method "event".
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..ledger.states import RunState
from ..pipeline.plans import PLANS

JSONRPC = "2.0"
MAX_LINE_BYTES = 1 << 20  # default; the daemon's limit comes from config rpc.max_line_bytes

# JSON-RPC 2.0 standard codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# pr1 application codes (documented in docs/architecture.md)
PERMISSION_DENIED = -32001
NOT_FOUND = -32002
CONFLICT = -32003  # illegal state transition, duplicate run, agent busy
UNAVAILABLE = -32004  # daemon shutting down, capability not in this build
OVERLOADED = -32005  # too many clients, client too slow

Role = Literal["reader", "operator"]
ROLE_RANK = {"reader": 1, "operator": 2}

TOPICS = ("run", "stage", "progress", "metric", "log", "agent", "alert", "daemon")

# Filter values a list method accepts: an unknown one is invalid params naming these, never an empty list
# that reads as "nothing there" (a typo such as awaiting-approval looked like no run awaiting approval).
RUN_STATES: tuple[str, ...] = tuple(s.value for s in RunState)
RUN_KINDS: tuple[str, ...] = tuple(PLANS)
# Every entity name the daemon writes audit rows for (the audit()/_audit() calls in pr1d/).
AUDIT_ENTITIES = ("agent", "deployment", "kb", "ledger", "model_version", "run", "stage", "state")
RUNS_LIST_MAX = 1000  # runs.list's largest page; pr1ctl runs --limit reads its bound from here


def _one_of(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    """``value`` when it is None or allowed; else a ValueError that names the allowed values."""
    if value is not None and value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(_Params):
    pass


class AgentParams(_Params):
    agent: str = Field(min_length=1, max_length=200)


class HoldParams(AgentParams):
    reason: str = Field("", max_length=2000)


class ScoresParams(_Params):
    agent: str = Field(min_length=1, max_length=200)
    limit: int = Field(100, ge=1, le=5000)


class RunsListParams(_Params):
    state: str | None = None
    agent: str | None = None
    kind: str | None = None
    limit: int = Field(100, ge=1, le=RUNS_LIST_MAX)
    before_id: int | None = Field(None, ge=1)

    @field_validator("state")
    @classmethod
    def _state(cls, v: str | None) -> str | None:
        return _one_of(v, RUN_STATES, "run state")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str | None) -> str | None:
        return _one_of(v, RUN_KINDS, "run kind")


class RunParams(_Params):
    run: int = Field(ge=1)


class BacktestParams(RunParams):
    items: bool = Field(False, description="Include every replayed item (both answers and grades); large.")


class LogsParams(RunParams):
    stage: str | None = None
    tail_bytes: int = Field(65536, ge=0, le=16 << 20)


class TriggerParams(_Params):
    agent: str = Field(min_length=1, max_length=200)
    kind: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    reason: str = Field("", max_length=2000)


class CancelParams(RunParams):
    reason: str = Field("", max_length=2000)


class DecisionParams(RunParams):
    reason: str = Field(min_length=1, max_length=2000)


class ApproveParams(DecisionParams):
    accept_inconclusive: bool = Field(
        False,
        description="Approve although the promotion gate was inconclusive (evidence flagged, or outcome "
        "inconclusive): without it such a run is refused with a conflict. Recorded with the approval; "
        "every approver of an inconclusive run must pass it. Ignored (recorded false) for a run that passed.",
    )


class RollbackParams(_Params):
    agent: str = Field(min_length=1, max_length=200)
    to: str | None = Field(None, min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


class DeploymentsParams(_Params):
    agent: str | None = None
    limit: int = Field(200, ge=1, le=5000)


class SubscribeParams(_Params):
    topics: list[str] = Field(default_factory=lambda: list(TOPICS))
    run: int | None = Field(None, ge=1)


class TriggersParams(_Params):
    agent: str | None = None
    limit: int = Field(200, ge=1, le=5000)


class BackupParams(_Params):
    path: str = Field(min_length=1, max_length=4096)


class StateBackupParams(_Params):
    path: str = Field(min_length=1, max_length=4096)
    max_run_file_mb: int = Field(64, ge=0, le=1 << 20)  # run files above this stay out (listed as skipped)


class AuditParams(_Params):
    entity: str | None = None
    entity_id: str | None = None
    limit: int = Field(200, ge=1, le=5000)

    @field_validator("entity")
    @classmethod
    def _entity(cls, v: str | None) -> str | None:
        return _one_of(v, AUDIT_ENTITIES, "audit entity")


class MethodSpec(BaseModel):
    params: type[_Params]
    role: Role
    doc: str


METHODS: dict[str, MethodSpec] = {
    "status": MethodSpec(params=NoParams, role="reader", doc="Daemon version, pid, uptime, queue, jobs, health."),
    "whoami": MethodSpec(params=NoParams, role="reader", doc="The caller's Unix user and role as the daemon sees them."),
    "agents.list": MethodSpec(params=NoParams, role="reader", doc="Agents with hold flag, current version, health."),
    "agents.scores": MethodSpec(params=ScoresParams, role="reader",
                                doc="An agent's newest graded scores, oldest first: [ts, score, status]."),
    "agents.hold": MethodSpec(params=HoldParams, role="operator", doc="Set a maintenance hold: no new runs."),
    "agents.unhold": MethodSpec(params=HoldParams, role="operator", doc="Clear a hold."),
    "runs.list": MethodSpec(params=RunsListParams, role="reader", doc="Runs, newest first, keyset-paged."),
    "runs.show": MethodSpec(params=RunParams, role="reader", doc="One run with stages, artifacts, metrics, audit."),
    "runs.logs": MethodSpec(params=LogsParams, role="reader", doc="The tail of a run's stage logs."),
    "runs.metrics": MethodSpec(params=RunParams, role="reader", doc="A run's metric time series."),
    "runs.backtest": MethodSpec(params=BacktestParams, role="reader",
                                doc="A run's backtest report: per tier/column differences, CIs, n, compliance."),
    "runs.trigger": MethodSpec(params=TriggerParams, role="operator", doc="Queue a run (idempotent by key)."),
    "runs.cancel": MethodSpec(params=CancelParams, role="operator", doc="Cancel a queued/running/awaiting run."),
    "runs.approve": MethodSpec(params=ApproveParams, role="operator",
                               doc="Approve a run awaiting approval (inconclusive gate: needs accept_inconclusive)."),
    "runs.reject": MethodSpec(params=DecisionParams, role="operator", doc="Reject a run awaiting approval."),
    "deployments.list": MethodSpec(params=DeploymentsParams, role="reader", doc="Deployment history."),
    "deployments.rollback": MethodSpec(params=RollbackParams, role="operator", doc="Switch an agent back."),
    "audit.list": MethodSpec(params=AuditParams, role="reader", doc="Audit rows, oldest first."),
    "events.subscribe": MethodSpec(params=SubscribeParams, role="reader", doc="Push events on this connection."),
    "events.unsubscribe": MethodSpec(params=NoParams, role="reader", doc="Stop pushing events."),
    "ledger.backup": MethodSpec(params=BackupParams, role="operator", doc="Online backup of the ledger."),
    "state.backup": MethodSpec(params=StateBackupParams, role="operator",
                               doc="Online backup of the whole state into an empty folder, with MANIFEST.json."),
    "kb.ingest": MethodSpec(params=BackupParams, role="operator",
                            doc="Load documents at `path` into the knowledge base (runs as a stage worker)."),
    "gradebook.sync": MethodSpec(params=NoParams, role="operator", doc="Sync the local gradebook copy now."),
    "ledger.compact": MethodSpec(params=NoParams, role="operator", doc="Apply the retention policy now."),
    "monitor.poll": MethodSpec(params=NoParams, role="operator", doc="Run one poll cycle now; returns its report."),
    "scoreboard.show": MethodSpec(params=TriggersParams, role="reader", doc="KPIs per agent and version, alerts."),
    "monitor.triggers": MethodSpec(params=TriggersParams, role="reader", doc="Trigger rows with their evidence."),
}


# -- gate evidence, read the same way by the daemon (the approval refusal) and both clients ------------
# `runs.gate` is written by the gate stages and its keys evolve; only these are relied on, each optional:
# "outcome", "flagged", "reasons" (strings) and "uplift" {"observed", "ci_low", "ci_high", "bar", "ci_level"}.


def gate_inconclusive(gate: Any) -> bool:
    """True when a run's gate evidence leaves the decision to a person: flagged, or outcome inconclusive."""
    return isinstance(gate, dict) and (bool(gate.get("flagged")) or gate.get("outcome") == "inconclusive")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def gate_reasons(gate: Any) -> list[str]:
    """The gate's reasons as strings (empty when it gave none or they are malformed)."""
    raw = gate.get("reasons") if isinstance(gate, dict) else None
    if isinstance(raw, str):
        return [raw]
    return [str(r) for r in raw if r is not None] if isinstance(raw, list) else []


def gate_uplift_text(gate: Any) -> str | None:
    """`observed +0.1778, 95% CI [+0.0667, +0.2889], bar 0.0400` from whatever of it the evidence has."""
    u = gate.get("uplift") if isinstance(gate, dict) else None
    if not isinstance(u, dict):
        return None
    parts = []
    observed, lo, hi, bar, level = (_num(u.get(k)) for k in ("observed", "ci_low", "ci_high", "bar", "ci_level"))
    if observed is not None:
        parts.append(f"observed {observed:+.4f}")
    if lo is not None and hi is not None:
        parts.append((f"{level:.0%} " if level is not None and 0 < level < 1 else "") + f"CI [{lo:+.4f}, {hi:+.4f}]")
    if bar is not None:
        parts.append(f"bar {bar:.4f}")
    return ", ".join(parts) or None


class RpcError(Exception):
    """An error reply from the daemon (or a local protocol failure), with its JSON-RPC code."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_json(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def encode(obj: dict | list) -> bytes:
    """One message on one line: an object, or a batch reply's array of responses."""
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


def request(method: str, params: dict | None, id_: int | str) -> bytes:
    return encode({"jsonrpc": JSONRPC, "method": method, "params": params or {}, "id": id_})


def response_obj(id_: Any, result: Any) -> dict:
    return {"jsonrpc": JSONRPC, "id": id_, "result": result}


def error_obj(id_: Any, err: RpcError) -> dict:
    return {"jsonrpc": JSONRPC, "id": id_, "error": err.to_json()}


def response(id_: Any, result: Any) -> bytes:
    return encode(response_obj(id_, result))


def error_response(id_: Any, err: RpcError) -> bytes:
    return encode(error_obj(id_, err))


def notification(topic: str, data: dict) -> bytes:
    return encode({"jsonrpc": JSONRPC, "method": "event", "params": {"topic": topic, **data}})


# A batch is answered in one reply line; without a cap a 1 MiB line of `[1,1,...]` would make the
# daemon build ~50 MB of error objects. Clients that need more send several batches.
MAX_BATCH = 1000


def decode(line: bytes) -> Any:
    """One line of JSON (a request object or a batch array); raises RpcError(PARSE_ERROR)."""
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RpcError(PARSE_ERROR, f"parse error: {str(e)[:200]}") from None


def check_batch(msg: list) -> None:
    """A batch must hold 1..MAX_BATCH requests; `[]` is one Invalid Request error, not an empty reply."""
    if not msg:
        raise RpcError(INVALID_REQUEST, "invalid request: empty batch")
    if len(msg) > MAX_BATCH:
        raise RpcError(INVALID_REQUEST, f"invalid request: a batch holds at most {MAX_BATCH} requests, got {len(msg)}")


def is_notification(msg: Any) -> bool:
    """A well-formed request object without an `id` member: the spec forbids any reply to it, even an error.

    An object too broken to be a request (no "2.0", no string method) is an Invalid Request instead,
    answered with id null, as the specification's examples do.
    """
    return (isinstance(msg, dict) and "id" not in msg and msg.get("jsonrpc") == JSONRPC
            and isinstance(msg.get("method"), str))


def check_request(msg: Any, *, notification: bool = False) -> tuple[Any, str, _Params]:
    """Validate one decoded request object; raises RpcError (with the request id when known).

    ``notification``: ``msg`` has no id (see :func:`is_notification`); the id is then None.
    """
    if not isinstance(msg, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected a JSON object")
    id_ = msg.get("id")
    if not notification and (not isinstance(id_, (int, str)) or isinstance(id_, bool)):
        err = RpcError(INVALID_REQUEST, "invalid request: `id` must be an integer or a string")
        err.data = None
        raise err
    if msg.get("jsonrpc") != JSONRPC:
        raise _with_id(RpcError(INVALID_REQUEST, 'invalid request: `jsonrpc` must be "2.0"'), id_)
    method = msg.get("method")
    if not isinstance(method, str):
        raise _with_id(RpcError(INVALID_REQUEST, "invalid request: `method` must be a string"), id_)
    spec = METHODS.get(method)
    if spec is None:
        raise _with_id(RpcError(METHOD_NOT_FOUND, f"method not found: {method[:100]}"), id_)
    raw = msg.get("params", {})
    if raw is None or raw == []:  # no params, by position or by name, are the same thing
        raw = {}
    if not isinstance(raw, dict):
        raise _with_id(RpcError(INVALID_PARAMS, "invalid params: expected an object (params go by name)"), id_)
    try:
        params = spec.params.model_validate(raw)
    except ValidationError as e:
        problems = [
            f"{'.'.join(str(x) for x in er['loc']) or 'params'}: {er['msg']}" for er in e.errors()[:10]
        ]
        raise _with_id(RpcError(INVALID_PARAMS, "invalid params: " + "; ".join(problems)), id_) from None
    return id_, method, params


def parse_request(line: bytes) -> tuple[Any, str, _Params]:
    """Decode and validate one single request line (no batch); raises RpcError (with the request id when known)."""
    return check_request(decode(line))


def _with_id(err: RpcError, id_: Any) -> RpcError:
    err.request_id = id_  # type: ignore[attr-defined]
    return err
