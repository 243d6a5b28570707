"""Trigger rules: which job a set of fired signals asks for, and whether a run may be created now.

Pure, like the signals: :func:`decide` takes the agent's state (hold, active run, when its last run
ended), the signal results and the time, and returns a :class:`Decision`. The daemon records every
decision that names a job as a ``triggers`` ledger row -- suppressed ones too, with the reason --
and creates a run only when :attr:`Decision.run` is true.

The entry-criteria table (docs/entry-criteria.md):

    weighted_score -> sft            reliability -> rl
    drift          -> full (SFT→RL)  compliance  -> targeted-sft (SFT with guardrail prompts)

Order of checks, most deliberate first: an operator's hold, then dedupe (a run already holds the
agent), then the cooldown after the last run ended or the last change of model (promotion or rollback),
whichever came later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pr1d.ledger.states import TERMINAL_RUN_STATES
from pr1d.monitor.signals import SignalResult

JobKind = Literal["full", "targeted-sft", "sft", "rl"]
JOB_KINDS: tuple[str, ...] = ("full", "targeted-sft", "sft", "rl")
Suppression = Literal["hold", "active_run", "cooldown"]

# The plan's entry-criteria table. Fixed on purpose: what a signal *means* is not a per-site
# setting; which one wins when several fire is (RuleConfig.precedence).
SIGNAL_JOBS: Mapping[str, JobKind] = {
    "weighted_score": "sft",
    "reliability": "rl",
    "drift": "full",
    "compliance": "targeted-sft",
}


class RuleConfig(BaseModel):
    """How fired signals become runs (`[monitor.rules]`, overridable per agent profile)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    cooldown_s: float = Field(
        3600.0,
        ge=0.0,
        le=90 * 86400.0,
        description="After an agent's run ends (rejected, failed or cancelled) or its model changes (promotion or "
        "rollback), no automatic run starts for this long: a late approval cannot re-trigger a run before the new "
        "version's windows fill. A run may start again exactly `cooldown_s` after the later of the two. 0 disables "
        "the cooldown.",
    )
    precedence: list[JobKind] = Field(
        ["full", "targeted-sft", "sft", "rl"],
        description="When several signals fire at once, the first job kind in this list runs; the other signals "
        "are recorded as evidence. Must name each of full, targeted-sft, sft, rl exactly once.",
    )

    @field_validator("precedence")
    @classmethod
    def _permutation(cls, v: list[str]) -> list[str]:
        if sorted(v) != sorted(JOB_KINDS):
            raise ValueError(f"must list each of {', '.join(JOB_KINDS)} exactly once, got {v}")
        return v


def effective_rule_config(base: RuleConfig, override: Mapping[str, Any]) -> RuleConfig:
    """``base`` with a profile's partial ``override`` applied, validated as strictly as the base.

    Unknown keys, wrong types and out-of-range values raise pydantic's ``ValidationError``.
    """
    if not isinstance(override, Mapping):
        raise TypeError(f"a profile override must be a table, got {type(override).__name__}")
    return RuleConfig.model_validate({**base.model_dump(), **override})


@dataclass(frozen=True, slots=True)
class ActiveRun:
    """The agent's latest run that has not reached a terminal state (from the ledger)."""

    id: int | str
    state: str


@dataclass(frozen=True, slots=True)
class AgentState:
    """What the rules need to know about one agent besides its signals."""

    hold: bool = False
    active_run: ActiveRun | None = None
    last_run_finished_at: float | None = None  # ledger `runs.finished_at` of the agent's latest ended run
    hold_reason: str | None = None
    model_changed_at: float | None = None  # when the version in service was promoted or rolled back to

    @property
    def cooldown_from(self) -> float | None:
        """The later of the last run's end and the last change of model: the cooldown counts from it."""
        times = [t for t in (self.last_run_finished_at, self.model_changed_at) if t is not None]
        return max(times) if times else None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules concluded for one agent at one moment.

    ``job_kind``/``signal`` name the job the fired signals ask for and the signal that chose it
    (None, None when nothing fired). ``suppressed`` says why no run is created although a job is
    wanted. ``guardrails`` is true when compliance fired, whichever job won, so a full run that
    outranked targeted-SFT still adds guardrail prompts to its SFT stage.
    """

    job_kind: JobKind | None
    signal: str | None
    suppressed: Suppression | None
    guardrails: bool
    evidence: dict[str, Any]

    @property
    def run(self) -> bool:
        """Create a run now."""
        return self.job_kind is not None and self.suppressed is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_kind": self.job_kind,
            "signal": self.signal,
            "suppressed": self.suppressed,
            "guardrails": self.guardrails,
            "evidence": self.evidence,
        }


def job_for(signal: str) -> JobKind:
    """The job kind the entry-criteria table gives a signal."""
    try:
        return SIGNAL_JOBS[signal]
    except KeyError:
        raise ValueError(f"no job for signal {signal!r}; known: {', '.join(SIGNAL_JOBS)}") from None


def choose(
    fired: Sequence[SignalResult], precedence: Sequence[str]
) -> tuple[SignalResult, list[SignalResult]]:
    """The fired signal whose job ranks first in ``precedence``, and the rest in precedence order."""
    if not fired:
        raise ValueError("choose() needs at least one fired signal")
    rank = {kind: i for i, kind in enumerate(precedence)}
    ranked = sorted(fired, key=lambda r: rank[job_for(r.name)])
    return ranked[0], ranked[1:]


def cooldown_remaining(since: float | None, now: float, cooldown_s: float) -> float:
    """Seconds of cooldown left after ``since`` (0.0 when none). Exactly ``cooldown_s`` after it, none is left.

    A time in the future (clock skew) keeps the agent cooling down rather than skipping it.
    """
    if since is None or cooldown_s <= 0:
        return 0.0
    return max(0.0, since + cooldown_s - now)


def holds_agent(run: ActiveRun | None) -> bool:
    """Whether ``run`` blocks a second run: any non-terminal state, including ``interrupted``
    and an unknown one (when in doubt, do not start a duplicate training run)."""
    return run is not None and run.state not in TERMINAL_RUN_STATES


def decide(agent: AgentState, results: Sequence[SignalResult], now: float, cfg: RuleConfig) -> Decision:
    """Turn one monitoring cycle's signal results into a :class:`Decision` for one agent."""
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now!r}")
    fired = [r for r in results if r.fired]
    states = {r.name: r.state for r in results}
    evidence: dict[str, Any] = {"signals": states, "precedence": list(cfg.precedence), "now": now}
    if not fired:
        return Decision(None, None, None, False, evidence)

    primary, others = choose(fired, cfg.precedence)
    kind = job_for(primary.name)
    evidence["primary"] = {"signal": primary.name, "job_kind": kind, "evidence": primary.evidence}
    evidence["also_fired"] = [
        {"signal": r.name, "job_kind": job_for(r.name), "evidence": r.evidence} for r in others
    ]
    guardrails = any(r.name == "compliance" for r in fired)

    suppressed: Suppression | None = None
    since = agent.cooldown_from
    remaining = cooldown_remaining(since, now, cfg.cooldown_s)
    if agent.hold:
        suppressed = "hold"
        evidence["hold_reason"] = agent.hold_reason
    elif holds_agent(agent.active_run):
        assert agent.active_run is not None
        suppressed = "active_run"
        evidence["active_run"] = {"id": agent.active_run.id, "state": agent.active_run.state}
    elif remaining > 0:
        suppressed = "cooldown"
    # Cooldown numbers go in whatever the outcome, so a console can say "would have waited N s".
    evidence["cooldown"] = {
        "cooldown_s": cfg.cooldown_s,
        "last_run_finished_at": agent.last_run_finished_at,
        "model_changed_at": agent.model_changed_at,
        "from": since,
        "remaining_s": remaining,
        "until": since + cfg.cooldown_s if since is not None else None,
    }
    return Decision(kind, primary.name, suppressed, guardrails, evidence)
