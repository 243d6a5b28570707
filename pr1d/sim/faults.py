"""Fault injection for the simulator: the fault schema, the seeded decision of which request gets which
fault, and the pure transformations of a response page (bad fields, duplicates, reordering, cursors).

The HTTP side (sleeping, aborting the connection, writing a truncated body) lives in `server.py`;
everything here is deterministic given the seed and the order of requests, so a test that makes the
same requests sees the same faults.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["agents", "evaluations", "gradebook", "critic", "profile", "teacher", "sampler"]
ENDPOINTS: tuple[str, ...] = ("agents", "evaluations", "gradebook", "critic", "profile", "teacher", "sampler")

FaultKind = Literal[
    "latency",
    "http_error",
    "timeout",
    "reset",
    "malformed_json",
    "bad_fields",
    "duplicates",
    "out_of_order",
    "cursor_backwards",
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]

# Which endpoints each kind can act on: page-shaped faults need a page with a cursor; field faults
# need a JSON list of records. A fault naming an endpoint it cannot act on is a scenario error, not
# a silent no-op.
_PAGED = ("evaluations", "gradebook")
APPLICABLE: dict[str, tuple[str, ...]] = {
    "latency": ENDPOINTS,
    "http_error": ENDPOINTS,
    "timeout": ENDPOINTS,
    "reset": ENDPOINTS,
    "malformed_json": ENDPOINTS,
    "bad_fields": ("agents", "evaluations", "gradebook", "critic"),
    "duplicates": _PAGED,
    "out_of_order": _PAGED,
    "cursor_backwards": _PAGED,
}
# The kinds that replace the response altogether; at most one fires per request (the first listed).
TERMINAL = ("http_error", "timeout", "reset")

# A hung request is bounded so a broken client cannot pin the simulator for ever.
MAX_HANG_S = 60.0


class FaultSpec(BaseModel):
    """One fault: what happens, to which requests, how often. Declared as ``[[faults]]`` in a scenario
    or posted to ``/_sim/faults`` at runtime."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: FaultKind = Field(description="What goes wrong.")
    rate: float = Field(1.0, ge=0, le=1, description="Probability that a matching request gets it.")
    endpoints: list[Endpoint] = Field(
        [], description="Endpoints it targets; empty: every endpoint the kind applies to."
    )
    agents: list[str] = Field(
        [],
        description="Agent ids it targets (the {id} of evaluations/profile, the agent_id filter of "
        "gradebook); empty: all requests. A fault with agents never matches /v1/agents or critic.",
    )
    seconds: float = Field(
        0.0, ge=0, le=MAX_HANG_S, description="latency: added delay; timeout: how long to hang (0: 30 s)."
    )
    status: int = Field(503, ge=400, le=599, description="http_error: the status code.")
    retry_after: float | None = Field(
        None, ge=0, description="http_error: value of the Retry-After header in seconds; unset: no header."
    )
    field: str = Field(
        "",
        description="bad_fields: the record field to break (dotted for nested, e.g. rubric.compliance); "
        "empty: weighted_score (wrong_type) or id (missing) on evaluations, score / task_id on gradebook, "
        "model / id on agents, confidence / agree on critic.",
    )
    mode: Literal["wrong_type", "missing"] = Field(
        "wrong_type", description="bad_fields: give the field a value of the wrong type, or drop it."
    )
    max_count: int = Field(0, ge=0, description="Stop after injecting this many times; 0: no limit.")

    @model_validator(mode="after")
    def _endpoints_fit_kind(self) -> FaultSpec:
        allowed = APPLICABLE[self.kind]
        bad = [e for e in self.endpoints if e not in allowed]
        if bad:
            raise ValueError(
                f"fault kind {self.kind!r} cannot act on endpoint(s) {', '.join(bad)} "
                f"(it applies to: {', '.join(allowed)})"
            )
        return self

    def targets(self) -> tuple[str, ...]:
        return tuple(self.endpoints) if self.endpoints else APPLICABLE[self.kind]

    def hang_seconds(self) -> float:
        return self.seconds if self.seconds > 0 else 30.0


@dataclass
class _Active:
    spec: FaultSpec
    rng: random.Random
    injected: int = 0


@dataclass
class FaultPlan:
    """What to do to one request: delay it, replace it (terminal), and/or transform its body."""

    delay_s: float = 0.0
    terminal: FaultSpec | None = None
    mutations: list[tuple[FaultSpec, random.Random]] = field(default_factory=list)

    def mutates(self, kind: str) -> list[tuple[FaultSpec, random.Random]]:
        return [(s, r) for s, r in self.mutations if s.kind == kind]


def _fault_seed(seed: int, index: int) -> int:
    # Each fault gets its own stream so adding a fault does not change when the others fire.
    return int.from_bytes(hashlib.blake2b(f"fault:{seed}:{index}".encode(), digest_size=8).digest(), "big")


class FaultInjector:
    """The active faults and their counters; `plan()` decides, per request, which of them fire."""

    def __init__(self, specs: list[FaultSpec] | tuple[FaultSpec, ...] = (), *, seed: int = 0) -> None:
        self._seed = seed
        self._next_index = 0
        self._active: list[_Active] = []
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        for s in specs:
            self.add(s)

    def add(self, spec: FaultSpec) -> None:
        self._active.append(_Active(spec, random.Random(_fault_seed(self._seed, self._next_index))))
        self._next_index += 1

    def clear(self, kind: str | None = None) -> int:
        """Remove all faults (or those of one kind); returns how many were removed. Counters stay."""
        before = len(self._active)
        self._active = [a for a in self._active if kind is not None and a.spec.kind != kind]
        return before - len(self._active)

    def __bool__(self) -> bool:
        return bool(self._active)

    def describe(self) -> list[dict[str, Any]]:
        return [{**a.spec.model_dump(), "injected": a.injected} for a in self._active]

    def plan(self, endpoint: str, agent_id: str | None = None) -> FaultPlan | None:
        """Draw every matching fault once (so the stream stays deterministic) and return what fired."""
        if not self._active:
            return None
        fired: list[_Active] = []
        for a in self._active:
            s = a.spec
            if endpoint not in s.targets():
                continue
            if s.agents and (agent_id is None or agent_id not in s.agents):
                continue
            if s.max_count and a.injected >= s.max_count:
                continue
            if a.rng.random() < s.rate:
                fired.append(a)
        if not fired:
            return None
        plan = FaultPlan()
        terminal = next((a for a in fired if a.spec.kind in TERMINAL), None)
        for a in fired:
            s = a.spec
            if s.kind == "latency":
                plan.delay_s += s.seconds
            elif a is terminal:
                plan.terminal = s
            elif terminal is not None:
                # The response is replaced (or never sent), so body faults and further terminal
                # faults did not happen: they are not counted.
                continue
            else:
                plan.mutations.append((s, a.rng))
            a.injected += 1
            self.injected[s.kind] += 1
        return plan


# --- page transformations ------------------------------------------------------------------------

_DEFAULT_FIELD = {
    ("evaluations", "wrong_type"): "weighted_score",
    ("evaluations", "missing"): "id",
    ("gradebook", "wrong_type"): "score",
    ("gradebook", "missing"): "task_id",
    ("agents", "wrong_type"): "model",
    ("agents", "missing"): "id",
    ("critic", "wrong_type"): "confidence",
    ("critic", "missing"): "agree",
}


def _wrong_type(value: Any) -> Any:
    """A value a careless platform might send instead: a number becomes "abc", a string a number..."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "abc"
    if isinstance(value, str):
        return 12345
    if isinstance(value, dict):
        return "n/a"
    if isinstance(value, list):
        return {"oops": True}
    return "abc"


def break_field(record: dict[str, Any], spec: FaultSpec, endpoint: str) -> None:
    """Apply one bad_fields fault to ``record`` in place."""
    path = (spec.field or _DEFAULT_FIELD[(endpoint, spec.mode)]).split(".")
    node: Any = record
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return
    last = path[-1]
    if spec.mode == "missing":
        node.pop(last, None)
    else:
        node[last] = _wrong_type(node.get(last))


def mutate_records(records: list[dict[str, Any]], plan: FaultPlan, endpoint: str) -> list[dict[str, Any]]:
    """Apply bad_fields / duplicates / out_of_order to a decoded list of records (a copy is returned)."""
    out = [copy.deepcopy(r) for r in records]
    for spec, rng in plan.mutations:
        if not out:
            break
        if spec.kind == "bad_fields":
            break_field(out[rng.randrange(len(out))], spec, endpoint)
        elif spec.kind == "duplicates":
            # Within the page: one record is served twice in a row. (Across pages: see next_offset.)
            i = rng.randrange(len(out))
            out.insert(i + 1, copy.deepcopy(out[i]))
        elif spec.kind == "out_of_order" and len(out) > 1:
            original = list(out)
            rng.shuffle(out)
            if out == original:
                out.reverse()
    return out


def mutate_next_offset(next_offset: int, since: int, limit: int, served: int, plan: FaultPlan) -> int:
    """The offset the returned cursor should point at, after duplicates / cursor_backwards faults."""
    for spec, _rng in plan.mutations:
        if spec.kind == "duplicates" and served:
            # Across pages: the next page starts one record early, so its first record repeats our last.
            next_offset = max(0, next_offset - 1)
        elif spec.kind == "cursor_backwards":
            # The cursor goes back before where this page started: the client sees records again.
            next_offset = max(0, since - max(1, limit))
    return next_offset


def truncate_body(body: bytes) -> bytes:
    """A JSON body cut off mid-way, as a proxy that drops the connection might deliver it."""
    return body[: max(1, len(body) // 2)]
