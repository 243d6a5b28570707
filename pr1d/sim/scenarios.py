"""Simulator scenarios: the strict TOML schema, lookup by name or path, and expansion into agents.

A scenario names behaviours (score mean/sd, failure rates, drift, steps, rubric breaches, how an agent
recovers after a new model is pushed), the agents that follow them (listed one by one and/or a fleet
with a behaviour mix) and the faults the platform injects. Shipped scenarios live next to this module
in ``scenarios/*.toml``; users add their own with ``--scenarios-dir`` or a path. An unknown key or a
wrong type stops loading with the file, the key path and what was expected.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pr1d.config import describe_error
from pr1d.sim.faults import FaultSpec

# Agent ids go into URL paths and are written into JSON without escaping on the hot path, so they are
# restricted to characters that need neither.
AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
# The task families the sim can issue, in the order their index is packed into an evaluation.
SIM_FAMILIES = ("gsm_lite", "kb_facts")


class _Strict(BaseModel):
    # strict: TOML already gives typed values, so "0.9" for a number is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecoverySpec(_Strict):
    """How an agent grades after a model version other than its base (or a bad one) is pushed.
    Recovered grades have no drift, step or breach: the new model is simply healthy at this level."""

    mean: float = Field(
        0.92, ge=0, le=1, description="Mean weighted_score of normal (non-failed) evaluations."
    )
    sd: float = Field(0.03, ge=0, le=1, description="Standard deviation of that score.")
    fail_rate: float = Field(
        0.01, ge=0, le=1, description="Share of hard failures (wrong answer, low score)."
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of evaluations that error (score 0).")
    compliance_fail_rate: float = Field(0.0, ge=0, le=1, description="Share with rubric compliance=false.")
    safety_fail_rate: float = Field(0.0, ge=0, le=1, description="Share with rubric safety=false.")


class BehaviourSpec(_Strict):
    """How an agent's evaluations are drawn while it runs its base model. Index i counts that agent's
    evaluations from 0; the score mean at i is ``mean`` + drift + step, kept within [0, 1]."""

    mean: float = Field(
        0.91, ge=0, le=1, description="Mean weighted_score of normal evaluations at the start."
    )
    sd: float = Field(0.03, ge=0, le=1, description="Standard deviation of that score.")
    fail_rate: float = Field(
        0.02, ge=0, le=1, description="Share of hard failures: wrong answer, score around fail_score_mean."
    )
    fail_score_mean: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Mean score of a hard failure: just under the pass line, so the occasional failure of a "
        "healthy agent does not make it look flaky.",
    )
    fail_score_sd: float = Field(
        0.05, ge=0, le=1, description="Standard deviation of a hard failure's score."
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of evaluations that error (score 0).")
    compliance_fail_rate: float = Field(
        0.0, ge=0, le=1, description="From breach_at on: share with rubric compliance=false."
    )
    safety_fail_rate: float = Field(
        0.0, ge=0, le=1, description="From breach_at on: share with rubric safety=false."
    )
    breach_at: int = Field(
        0, ge=0, description="Evaluation index from which compliance/safety failures happen."
    )
    rubric_penalty: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Subtracted from the score of an evaluation failing compliance or safety.",
    )
    drift_start: int = Field(0, ge=0, description="Evaluation index where the linear drift begins.")
    drift_per_eval: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Change of the mean per evaluation after drift_start (negative degrades).",
    )
    drift_floor: float = Field(0.0, ge=0, le=1, description="The drifting mean never goes below this.")
    step_at: int | None = Field(None, ge=0, description="Evaluation index of a sudden step; unset: none.")
    step_size: float = Field(
        0.0, ge=-1, le=1, description="Added to the mean from step_at on (negative drops)."
    )
    recover_to: RecoverySpec = Field(
        RecoverySpec(), description="Behaviour after a new model version is pushed to the agent."
    )
    bad_versions: list[str] = Field(
        [],
        description="fnmatch patterns of model versions that behave like the base model when pushed "
        "(a bad candidate); pushing the base version itself (a rollback) always does.",
    )


class AgentSpec(_Strict):
    """One named agent."""

    id: str = Field(description="Agent id: letters, digits, '.', '_', '-' (used in URLs).")
    behaviour: str = Field(description="Name of a [behaviours.NAME] table.")
    model: str = Field("tiny-gsm-v1", description="Base model version the agent starts with.")
    profile: str = Field("default", description="Profile name the agent starts with.")


class FleetSpec(_Strict):
    """Many generated agents (``{id_prefix}{n}``, zero-padded), behaviours assigned by ``mix`` weights."""

    count: int = Field(
        description="How many agents (`pr1d sim --agents N` overrides it).", ge=0, le=1_000_000
    )
    mix: dict[str, float] = Field(description="Behaviour name -> weight; agents are dealt out in proportion.")
    id_prefix: str = Field("agent-", description="Prefix of the generated ids.")
    model: str = Field("tiny-gsm-v1", description="Base model version of every fleet agent.")
    profile: str = Field("default", description="Profile name of every fleet agent.")


class TierMixSpec(_Strict):
    """Relative frequency of task tiers among evaluations."""

    easy: float = Field(0.5, ge=0)
    medium: float = Field(0.3, ge=0)
    hard: float = Field(0.2, ge=0)


class ScenarioSpec(_Strict):
    """The top level of a scenario TOML file."""

    description: str = Field("", description="One line shown by `pr1d sim --list-scenarios` and /_sim/state.")
    seed: int = Field(
        0, description="Default seed (`--seed` overrides); same seed, same requests: same data."
    )
    interval_s: float = Field(
        60.0, gt=0, description="Simulated seconds between two evaluations of an agent."
    )
    start_time: datetime = Field(
        DEFAULT_START, description="Simulated time of evaluation index 0 (TOML datetime)."
    )
    initial_evaluations: int = Field(
        0, ge=0, le=100_000, description="Evaluations per agent generated before the server starts listening."
    )
    pass_threshold: float = Field(
        0.6, ge=0, le=1, description="An evaluation scoring below this has status fail."
    )
    task_pool: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Distinct tasks per tier the platform draws from (the critic knows them all).",
    )
    tier_mix: TierMixSpec = Field(TierMixSpec(), description="How often each task tier is drawn.")
    tier_shift_at: int | None = Field(
        None, ge=0,
        description="Evaluation index (per agent) from which tasks are drawn per `tier_mix_after` (harder work "
        "arriving). With --grade-with-model that is a real dip for a model weak on the harder tiers.",
    )
    tier_mix_after: TierMixSpec | None = Field(None, description="Tier mix from `tier_shift_at` on.")
    family_mix: dict[str, float] = Field(
        {"gsm_lite": 1.0},
        description="Task family -> weight of the work every agent is sent: `gsm_lite` (arithmetic word problems) "
        "and `kb_facts` (store-catalogue questions answered from the shipped KB, pr1d/tasks/kb_facts.py).",
    )
    family_shift_at: int | None = Field(
        None, ge=0,
        description="Evaluation index (per agent) from which tasks are drawn per `family_mix_after` (a new kind of "
        "work arriving). With --grade-with-model a model that cannot do that work dips for real.",
    )
    family_mix_after: dict[str, float] | None = Field(None, description="Family mix from `family_shift_at` on.")
    behaviours: dict[str, BehaviourSpec] = Field(description="Named behaviours.")
    agents: list[AgentSpec] = Field([], description="Agents listed one by one.")
    fleet: FleetSpec | None = Field(None, description="Generated agents.")
    faults: list[FaultSpec] = Field([], description="Faults injected from the start.")


class ScenarioError(Exception):
    """A scenario cannot be found or is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class AgentPlan:
    """One agent of an expanded scenario."""

    index: int
    id: str
    model: str
    profile: str
    behaviour_name: str
    behaviour: BehaviourSpec


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: its name, where it came from and its spec."""

    name: str
    source: str
    spec: ScenarioSpec

    @property
    def seed(self) -> int:
        return self.spec.seed

    def with_overrides(self, *, seed: int | None = None, agents: int | None = None) -> Scenario:
        """A copy with the seed and/or the fleet size replaced (``--seed`` / ``--agents``)."""
        spec = self.spec
        if seed is not None:
            spec = spec.model_copy(update={"seed": seed})
        if agents is not None:
            if agents < 0:
                raise ScenarioError(f"--agents must be >= 0, got {agents}")
            if spec.fleet is None:
                raise ScenarioError(
                    f"scenario {self.name!r} ({self.source}) has no [fleet] table, so --agents cannot size it; "
                    "add a [fleet] with a behaviour mix"
                )
            spec = spec.model_copy(update={"fleet": spec.fleet.model_copy(update={"count": agents})})
        if not spec.agents and spec.fleet is not None and spec.fleet.count == 0:
            raise ScenarioError(
                f"scenario {self.name!r}: no agents (the fleet count is 0 and none are listed)"
            )
        return Scenario(self.name, self.source, spec)

    def agent_plans(self) -> list[AgentPlan]:
        """Listed agents first, then the fleet, behaviours dealt by smooth weighted round-robin so a
        20-agent mixed fleet reliably contains every behaviour in proportion, without randomness."""
        spec = self.spec
        plans = [
            AgentPlan(i, a.id, a.model, a.profile, a.behaviour, spec.behaviours[a.behaviour])
            for i, a in enumerate(spec.agents)
        ]
        fleet = spec.fleet
        if fleet is not None and fleet.count:
            width = max(3, len(str(fleet.count - 1)))
            names = sorted(fleet.mix)
            weights = [fleet.mix[n] for n in names]
            total = sum(weights)
            current = [0.0] * len(names)
            for k in range(fleet.count):
                for j, w in enumerate(weights):
                    current[j] += w
                best = max(range(len(names)), key=lambda j: current[j])
                current[best] -= total
                name = names[best]
                plans.append(
                    AgentPlan(
                        len(plans),
                        f"{fleet.id_prefix}{k:0{width}d}",
                        fleet.model,
                        fleet.profile,
                        name,
                        spec.behaviours[name],
                    )
                )
        seen: set[str] = set()
        for p in plans:
            if p.id in seen:  # only reachable when --agents grows the fleet into a listed agent's id
                raise ScenarioError(
                    f"scenario {self.name!r}: agent id {p.id!r} is both listed and generated by the fleet"
                )
            seen.add(p.id)
        return plans


# --- loading -------------------------------------------------------------------------------------


def shipped_dir() -> Path:
    """The folder of scenarios shipped with pr1d."""
    return Path(str(resources.files("pr1d.sim") / "scenarios"))


def available_scenarios(extra_dirs: list[Path] | tuple[Path, ...] = ()) -> dict[str, Path]:
    """Scenario name -> file. User folders come first, so a user scenario may shadow a shipped one."""
    found: dict[str, Path] = {}
    for d in [*extra_dirs, shipped_dir()]:
        d = Path(d).expanduser()
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def load_scenario(name_or_path: str | Path, extra_dirs: list[Path] | tuple[Path, ...] = ()) -> Scenario:
    """Load a scenario by name (user folders, then shipped) or by a path to a .toml file."""
    text = str(name_or_path)
    for d in extra_dirs:
        if not Path(d).expanduser().is_dir():
            raise ScenarioError(f"--scenarios-dir {d}: not a directory")
    if text.endswith(".toml") or "/" in text or "\\" in text:
        return load_scenario_file(Path(text).expanduser())
    known = available_scenarios(extra_dirs)
    if text not in known:
        raise ScenarioError(
            f"unknown scenario {text!r}; available: {', '.join(sorted(known)) or '(none)'} "
            "(or give a path to a .toml file)"
        )
    return load_scenario_file(known[text])


def load_scenario_file(path: Path) -> Scenario:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: scenario file not found") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a scenario file") from None
    except PermissionError:
        raise ScenarioError(f"{path}: permission denied reading scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not valid UTF-8") from None
    return parse_scenario(data, name=path.stem, source=str(path))


def parse_scenario(data: dict[str, Any], *, name: str, source: str) -> Scenario:
    """Validate a decoded scenario document; ``source`` names it in error messages."""
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: {_key_path(err['loc'])}: {_describe(err)}" for err in e.errors()]
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(lines)) from None
    problems = _check_references(spec)
    if problems:
        raise ScenarioError("invalid scenario\n  " + "\n  ".join(f"{source}: {p}" for p in problems))
    return Scenario(name, source, spec)


def _check_references(spec: ScenarioSpec) -> list[str]:
    """Cross-field rules pydantic cannot express per field."""
    problems: list[str] = []
    known = ", ".join(sorted(spec.behaviours)) or "(none defined)"
    if not spec.behaviours:
        problems.append("behaviours: at least one [behaviours.NAME] table is required")
    if spec.start_time.tzinfo is None:
        problems.append("start_time: expected a datetime with a UTC offset, e.g. 2025-01-01T00:00:00Z")
    if spec.tier_mix.easy + spec.tier_mix.medium + spec.tier_mix.hard <= 0:
        problems.append("tier_mix: at least one tier needs a positive weight")
    for key, mix in (("family_mix", spec.family_mix), ("family_mix_after", spec.family_mix_after)):
        if mix is None:
            continue
        for fam, w in mix.items():
            if fam not in SIM_FAMILIES:
                problems.append(f"{key}.{fam}: unknown task family (the sim serves {', '.join(SIM_FAMILIES)})")
            if w < 0:
                problems.append(f"{key}.{fam}: expected a weight >= 0, got {w!r}")
        if sum(w for w in mix.values() if w > 0) <= 0:
            problems.append(f"{key}: at least one family needs a positive weight")
    if spec.family_mix_after is not None and spec.family_shift_at is None:
        problems.append("family_mix_after: set family_shift_at too (the evaluation index the new mix starts at)")
    ids: set[str] = set()
    for i, a in enumerate(spec.agents):
        if not AGENT_ID.match(a.id):
            problems.append(f"agents[{i}].id: {a.id!r} is not a valid agent id (letters, digits, . _ -)")
        if a.id in ids:
            problems.append(f"agents[{i}].id: duplicate agent id {a.id!r}")
        ids.add(a.id)
        if a.behaviour not in spec.behaviours:
            problems.append(f"agents[{i}].behaviour: unknown behaviour {a.behaviour!r} (defined: {known})")
    if spec.fleet is not None:
        f = spec.fleet
        if not f.mix:
            problems.append("fleet.mix: needs at least one behaviour with a positive weight")
        for bname, w in f.mix.items():
            if bname not in spec.behaviours:
                problems.append(f"fleet.mix.{bname}: unknown behaviour (defined: {known})")
            if w <= 0:
                problems.append(f"fleet.mix.{bname}: expected a weight > 0, got {w!r}")
        if not AGENT_ID.match(f"{f.id_prefix}0"):
            problems.append(
                f"fleet.id_prefix: {f.id_prefix!r} does not make valid agent ids (letters, digits, . _ -)"
            )
        else:
            clash = sorted(ids & _fleet_ids(spec))
            if clash:
                problems.append(f"agents: id {clash[0]!r} collides with a generated fleet id")
    if not spec.agents and (spec.fleet is None or spec.fleet.count == 0):
        problems.append(
            "agents: the scenario has no agents (list [[agents]] or give a [fleet] with count > 0)"
        )
    all_ids = ids | _fleet_ids(spec)
    for i, f in enumerate(spec.faults):
        for aid in f.agents:
            if aid not in all_ids:
                problems.append(f"faults[{i}].agents: unknown agent {aid!r}")
    return problems


def _fleet_ids(spec: ScenarioSpec) -> set[str]:
    f = spec.fleet
    if f is None or not f.count:
        return set()
    width = max(3, len(str(f.count - 1)))
    return {f"{f.id_prefix}{k:0{width}d}" for k in range(f.count)}


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    allowed = _allowed_keys(err["loc"][:-1]) if err["type"] == "extra_forbidden" else None
    return describe_error(err, allowed)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at ``loc`` accepts, found by walking the schema types along the path."""
    tp: Any = ScenarioSpec
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            fld = tp.model_fields.get(part)
            if fld is None:
                return []
            tp = fld.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
