"""Config sections of the registry (`[registry]`, `[approvals]`, `[watch]`): pydantic only, cheap to import.

pr1d/config.py mounts them; clients load the config to find the socket, so nothing heavier than
pydantic may be imported here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RegistryConfig(BaseModel):
    """The model registry (`[registry]`): where versions live and how profile pushes are retried."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    models_dir: str = Field(
        "models",
        description="Where model versions are kept: <models_dir>/<agent>/<version>/ plus the `current` "
        "symlink per agent. Relative paths are under the state directory.",
    )
    base_models_dir: str = Field(
        "base-models",
        description="The agents' original models, by the platform's model name: <base_models_dir>/<model>/ "
        "(e.g. base-models/tiny-gsm-v1/, a save_pretrained folder). A run of an agent that has no registry "
        "version yet starts from here. Relative paths are under the state directory.",
    )
    base_models: dict[str, str] = Field(
        default_factory=dict,
        description="Platform model name -> where its original model is when <base_models_dir>/<model>/ is not "
        "there: a folder, or a Hugging Face Hub id (org/name) read from the local Hub cache "
        "(e.g. {\"Qwen2.5-7B-Instruct\" = \"Qwen/Qwen2.5-7B-Instruct\"}).",
    )
    local_files_only: bool = Field(
        True,
        description="Hub models come from the local Hugging Face cache only (fill it with `hf download ID`). "
        "False: a stage worker downloads a missing one (safetensors, configs and tokenizer files; never code).",
    )
    profile_name: str = Field(
        "parallel_reasoner", min_length=1,
        description="Profile name pushed to the agent manager with a promoted version (a version "
        "registered with its own profile name, such as an agent's original model, pushes that one).",
    )
    agent_manager_url: str = Field(
        "",
        description="Base URL of the agent manager (POST /v1/agents/{id}/profile). Empty: the scoring "
        "API's base_url; the bearer token is the scoring API's.",
    )
    push_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one profile push request.")
    push_retry_base_s: float = Field(
        5.0, gt=0, description="Delay before the first retry of a failed profile push; doubles per failure."
    )
    push_retry_max_s: float = Field(
        300.0, gt=0,
        description="Longest delay between two push retries. Pushes are retried until acknowledged; "
        "status shows the pending push and its last error meanwhile.",
    )
    repush_on_drift: bool = Field(
        True,
        description="When the agent manager lists an agent with another model or profile than the deployment "
        "it acknowledged (it restarted without its state, or someone changed it by hand), push the "
        "deployed profile again. False: only warn (log, alert event). Either way the drift is audited.",
    )
    verify_on_deploy: bool = Field(
        True,
        description="Check a version's files against their recorded sha256 before switching to it "
        "(promote and rollback refuse a version that does not match).",
    )

    @field_validator("agent_manager_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be empty or start with http:// or https://")
        return v.rstrip("/")


class ApprovalConfig(BaseModel):
    """Approvals (`[approvals]`): how many people must approve a promotion, and how long they have."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    approvals_required: Literal[1, 2] = Field(
        1, description="Distinct operators who must approve a run before it is promoted (2: two-person rule)."
    )
    ttl_s: float = Field(
        259200.0, gt=0,
        description="How long a run may wait for approval (seconds since it reached awaiting_approval); "
        "after that it is rejected with reason approval_expired.",
    )


class WatchConfig(BaseModel):
    """Post-promotion watch (`[watch]`): a new version's platform grades against the previous version's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    window: int = Field(
        100, ge=1, description="Graded evaluations after a promotion that the watch covers; then it ends."
    )
    min_samples: int = Field(
        20, ge=1, description="Grades of the new version, and of the previous one, needed before the watch gives "
        "a verdict."
    )
    tolerance: float = Field(
        0.03, ge=0.0, le=1.0,
        description="Score points the new version's live mean may fall below the previous version's (its last "
        "`window` platform grades before the promotion) without an alert.",
    )
    z: float = Field(
        1.645, ge=0.0, le=5.0,
        description="One-sided confidence multiplier on the standard error of the difference of the two means "
        "(1.645 ~ 95%; 0 compares the plain means).",
    )
    auto_rollback: bool = Field(
        False, description="Roll the agent back automatically when the watch falls short (off: alert only)."
    )
