"""The stage spec: what the daemon hands a stage worker (``<stage_dir>/spec.json``), declared once.

The daemon builds it from its config with :func:`build_stage_spec`; the worker reads it with
:meth:`StageSpec.load`, which refuses an unknown or mistyped field by name. Named sections say what
each stage reads: ``limits`` (the worker's resource limits), ``scoring`` (where the platform is and how
to find its token: :meth:`Scoring.token`, the one way every stage reads it), ``dataset``, ``kb``,
``gate``, ``registry``, ``training`` (the stage's ``[training.<stage>]`` defaults) and ``rewards``.
No secret is ever written into a spec: only the names of the variable and the file that hold the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import DatasetConfig, describe_error, read_token
from ..evaluate.gate import GateConfig
from ..kb.config import KBConfig
from ..params import RewardParams
from ..tasks.config import TasksConfig

if TYPE_CHECKING:
    from ..config import Config

# How long a stage may take to checkpoint after its daemon died before it ends itself (a worker once
# deadlocked between its threads on the way out and outlived a SIGKILLed daemon).
ORPHAN_GRACE_S = 60.0


class SpecError(ValueError):
    """A stage spec the worker cannot use; names the file and each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    """Resource limits of the worker process (0: none)."""

    memory_mb: int = Field(0, ge=0, description="RLIMIT_AS ([daemon] worker_memory_limit_mb).")
    file_mb: int = Field(0, ge=0, description="RLIMIT_FSIZE ([daemon] worker_file_limit_mb).")


class Scoring(_Section):
    """Where the platform's scoring API is, and where its bearer token is (never the token itself)."""

    url: str = Field("", description="Base URL of the scoring API ([scoring] base_url); empty: none.")
    token_env: str = Field("PR1_SCORING_TOKEN", description="Variable holding the bearer token.")
    token_file: str = Field("", description="File holding the token, read when the variable is unset.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout ([scoring] timeout_s), the critic's too.")
    field_map: dict[str, str] = Field({}, description="Contract field -> the platform's name ([scoring] field_map).")
    compliance_keys: list[str] = Field(
        [], description="Rubric keys that count as compliance ([monitor.signals] compliance_keys).")

    def token(self) -> str | None:
        """The bearer token: the variable named by ``token_env`` first, then ``token_file``; None when neither
        is set. An unreadable file raises :class:`pr1d.config.ConfigError` naming it."""
        return read_token(self.token_env, self.token_file)


class Registry(_Section):
    """Where the registry keeps versions, and the model the agent runs now."""

    state_dir: str = Field("", description="The daemon's state dir (ledger, gradebook copy, KB).")
    models_root: str = Field("", description="Folder of the registered model versions.")
    model_in_service: str | None = Field(
        None, description="The model the agent runs now: the folder of its registry version, else of its base "
        "model, or a Hub id from [registry] base_models (resolve with pr1d.inference.source.resolve_model).")
    local_files_only: bool = Field(True, description="[registry] local_files_only: Hub models from the cache only.")

    def model_path(self, ref: str | None = None) -> Path:
        """The local folder of ``ref`` (default: the model in service), a Hub id resolved through the cache."""
        from ..inference.source import resolve_model

        target = ref if ref is not None else self.model_in_service
        if not target:
            raise ValueError("no model: the agent has no registry version and no base model was found")
        return resolve_model(target, local_files_only=self.local_files_only)


class StageSpec(BaseModel):
    """One stage worker's instructions: which run and stage, where to write, and the config it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: int
    stage_id: int = 0
    stage: str
    agent_id: str = ""
    run_kind: str = ""
    run_dir: Path
    stage_dir: Path
    checkpoint_dir: Path
    params: dict[str, Any] = Field({}, description="The run's params (shared by every stage of the run).")
    resume: bool = False
    heartbeat_s: float = Field(5.0, gt=0)
    orphan_grace_s: float = Field(ORPHAN_GRACE_S, gt=0)
    limits: Limits = Limits()
    scoring: Scoring = Scoring()
    dataset: DatasetConfig = DatasetConfig()
    kb: KBConfig | None = None
    gate: GateConfig = GateConfig()
    registry: Registry = Registry()
    training: dict[str, Any] = Field(
        {}, description="The stage's [training.<stage>] defaults: only the keys the config sets.")
    rewards: RewardParams = RewardParams()
    tasks: TasksConfig = TasksConfig()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dump(self, path: Path | str) -> Path:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: Path | str) -> StageSpec:
        """Read a spec file; :class:`SpecError` names the file and each bad field."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"stage spec {path}: {e}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            lines = [f"stage spec {path}: field `{'.'.join(str(x) for x in err['loc'])}`: {describe_error(err)}"
                     for err in e.errors()]
            raise SpecError("\n".join(lines)) from None


def build_stage_spec(cfg: Config, *, run: dict[str, Any], stage: dict[str, Any], state_dir: Path,
                     models_root: Path | str, model_in_service: str | None, heartbeat_s: float,
                     resume: bool = False, profile: str | None = None) -> StageSpec:
    """The spec of ``stage`` (a ledger stage row) of ``run`` (a ledger run row) from the daemon's config.

    ``profile``: the agent's platform profile; its ``[tasks.profiles.<profile>]`` block picks the task families
    and the trace source (over ``[dataset]``)."""
    prof = cfg.tasks.profiles.get(profile or "")
    dataset = cfg.dataset.model_copy(update=prof.dataset_overrides()) if prof is not None else cfg.dataset
    run_dir = Path(state_dir) / "runs" / str(run["id"])
    stage_dir = run_dir / f"{stage['seq']:02d}-{stage['name']}"
    return StageSpec(
        run_id=run["id"], stage_id=stage["id"], stage=stage["name"], agent_id=run["agent_id"],
        run_kind=run["kind"], run_dir=run_dir, stage_dir=stage_dir, checkpoint_dir=stage_dir / "checkpoints",
        params=dict(run.get("params") or {}), resume=resume, heartbeat_s=heartbeat_s,
        limits=Limits(memory_mb=cfg.daemon.worker_memory_limit_mb, file_mb=cfg.daemon.worker_file_limit_mb),
        scoring=scoring_section(cfg),
        dataset=dataset, kb=cfg.kb, gate=cfg.gate,
        registry=Registry(state_dir=str(state_dir), models_root=str(models_root), model_in_service=model_in_service,
                          local_files_only=cfg.registry.local_files_only),
        training=cfg.training.for_stage(stage["name"]),
        rewards=cfg.rewards,
        tasks=cfg.tasks.for_profile(profile),
    )


def scoring_section(cfg: Config) -> Scoring:
    """The spec's ``scoring`` section from the daemon's ``[scoring]`` and ``[monitor.signals]`` config."""
    s = cfg.scoring
    return Scoring(url=s.base_url, token_env=s.token_env, token_file=s.token_file, timeout_s=s.timeout_s,
                   field_map=dict(s.field_map), compliance_keys=list(cfg.monitor.signals.compliance_keys))
