"""The stage worker event protocol: JSON lines on a dedicated pipe (fd in $PR1_EVENT_FD).

Written down once here (and in docs/architecture.md). Workers emit; the daemon validates and is the
only one who writes what they say into the ledger. stdout/stderr are plain logs, never events, so a
library that prints cannot corrupt the protocol.

    {"type": "progress", "ts": float, "step": int, "total": int|null, "eta_s": float|null, "message": str}
    {"type": "metric",   "ts": float, "name": str, "value": float, "step": int|null}
    {"type": "log",      "ts": float, "level": "debug|info|warning|error", "message": str}
    {"type": "artifact", "ts": float, "name": str, "path": str, "sha256": str, "size": int, "kind": str, "meta": {}}
    {"type": "checkpoint","ts": float, "path": str, "step": int}
    {"type": "result",   "ts": float, "outputs": {...}}
    {"type": "error",    "ts": float, "message": str, "kind": str}
    {"type": "heartbeat","ts": float}

A ``result``'s outputs are the stage's own record, plus the run-control keys the daemon acts on
(:class:`StageVerdict`: ``stop_run``, ``final_state``, ``final_reason``, ``register``, ``gate``).

Exit codes: 0 = done (a `result` event must precede it), 75 = stopped on request after
checkpointing (the stage is `interrupted`, resumable), anything else = failed (the last `error`
event says why).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXIT_OK = 0
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: "try again later" -- resumable
MAX_EVENT_BYTES = 1 << 20

_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "progress": {"step": (int,)},
    "metric": {"name": (str,), "value": (int, float)},
    "log": {"message": (str,)},
    "artifact": {"name": (str,), "path": (str,), "sha256": (str,)},
    "checkpoint": {"path": (str,)},
    "result": {"outputs": (dict,)},
    "error": {"message": (str,)},
    "heartbeat": {},
}
EVENT_TYPES = tuple(_REQUIRED)


class EventError(ValueError):
    pass


def validate_event(ev: Any) -> dict[str, Any]:
    """Check an event's type and required fields; raises EventError with the reason."""
    if not isinstance(ev, dict):
        raise EventError("event is not a JSON object")
    t = ev.get("type")
    if t not in _REQUIRED:
        raise EventError(f"unknown event type {t!r}")
    for field, types in _REQUIRED[t].items():
        v = ev.get(field)
        if not isinstance(v, types) or isinstance(v, bool):
            raise EventError(f"{t} event: field {field!r} must be {'/'.join(x.__name__ for x in types)}")
    if t == "metric" and not math.isfinite(float(ev["value"])):
        raise EventError(f"metric {ev['name']!r}: value is not finite")
    return ev


# -- run control: the part of a stage's result the daemon acts on -----------------------------------------

class StopRun(BaseModel):
    """A stage that ends the run here (a gate said no): the state the run ends in and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["rejected", "failed"] = "rejected"
    reason: str | None = None


class Registration(BaseModel):
    """A candidate the daemon registers as a model version of the run's agent before the run ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str
    parent_id: str | None = None
    dataset_version: str | None = None
    config_hash: str | None = None
    policy: dict[str, Any] | None = None
    base: str | None = None  # the model in service when the agent had no version yet: registered first


class StageVerdict(BaseModel):
    """The run-control part of a stage's ``result`` outputs; every other key is the stage's own record.

    ``stop_run`` ends the run after this stage; on the last stage, ``final_state`` / ``final_reason`` say how
    the run ends (default ``succeeded``, "all stages done") and ``register`` asks for the candidate to be
    registered first. ``gate`` is the evidence stored with the run's end.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    stop_run: StopRun | None = None
    final_state: Literal["succeeded", "awaiting_approval", "rejected"] = "succeeded"
    final_reason: str = "all stages done"
    # "register" on the wire (BaseModel has a method of that name).
    registration: Registration | None = Field(None, alias="register")
    gate: dict[str, Any] | None = None

    @classmethod
    def from_result(cls, outputs: dict[str, Any] | None) -> StageVerdict:
        """Parse a stage's result outputs; :class:`EventError` names the bad run-control key."""
        try:
            keys = {f.alias or name for name, f in cls.model_fields.items()}
            return cls.model_validate({k: v for k, v in (outputs or {}).items() if k in keys})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise EventError(f"stage result: run-control key {loc!r}: {err['msg']} (got {err.get('input')!r})") from None
