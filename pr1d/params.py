"""Training parameters, declared once: SFT, RL, rewards, curriculum, the gates' and the dataset's knobs.

Torch-free (the daemon validates with it). The same declarations are

- the config's ``[training.<stage>]`` and ``[rewards]`` sections (``pr1d/config.py``): a typo stops the
  daemon at load, with the key;
- what the stage workers build their settings from (``[training.<stage>]`` defaults under the run's params);
- the flags of ``python -m pr1d.train.sft`` / ``pr1d.train.grpo`` (:func:`add_param_arguments`);
- the run params a trigger may pass (:func:`validate_run_params`, against the plan's stages).

Every field carries its help (``Field(description=...)``); a validator's error says how to fix the value.
Models are strict (no ``"5"`` for an integer) and refuse unknown keys.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .evaluate.grading import GradeWeights
from .evaluate.gsm_lite import TIERS

__all__ = [
    "BacktestParams",
    "CurriculumParams",
    "DatasetParams",
    "LoraParams",
    "ParamsError",
    "RLParams",
    "RewardParams",
    "SFTGateParams",
    "SFTParams",
    "STAGE_KEYS",
    "add_param_arguments",
    "parse_mix",
    "params_from",
    "stage_view",
    "validate_run_params",
]

DEFAULT_MIX = "easy=0.35,medium=0.45,hard=0.2"
MIX_EXAMPLE = "easy=0.35,medium=0.45,hard=0.2 or {easy = 0.35, medium = 0.45, hard = 0.2}"


class ParamsError(ValueError):
    """Parameters a stage (or a trigger) cannot use, worded for the person who wrote them."""


class _Params(BaseModel):
    # strict: TOML, JSON and argparse already give typed values, so "5" for an integer is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


P = TypeVar("P", bound=BaseModel)


def _describe(e: ValidationError, model: type[BaseModel], where: str) -> str:
    unknown = sorted(".".join(str(x) for x in err["loc"]) for err in e.errors() if err["type"] == "extra_forbidden")
    lines = []
    if unknown:
        lines.append(f"{where}: unknown key(s) {unknown}; known keys: {sorted(model.model_fields)}")
    for err in e.errors():
        if err["type"] == "extra_forbidden":
            continue
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}{'.' + loc if loc else ''}: {msg}" + ("" if err["type"] == "value_error"
                                                                     else f" (got {err.get('input')!r})"))
    return "\n".join(lines)


def params_from(model: type[P], data: Mapping[str, Any] | None, where: str) -> P:
    """``model`` from ``data``; a :class:`ParamsError` names ``where``, each bad key and the known keys."""
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as e:
        raise ParamsError(_describe(e, model, where)) from None


def stage_view(model: type[P], params: Mapping[str, Any], where: str, *, defaults: Mapping[str, Any] | None = None,
               base: Mapping[str, Any] | None = None) -> P:
    """One stage's parameters: ``base`` (the stage's own defaults) under ``defaults`` (its ``[training.<stage>]``)
    under the run params that are ``model``'s fields. Run params are shared by every stage of a run, so the
    other keys are other stages'. The trigger (:func:`validate_run_params`) and the worker build the same view."""
    run = {k: v for k, v in params.items() if k in model.model_fields}
    return params_from(model, {**(base or {}), **(defaults or {}), **run}, where)


def parse_mix(value: str | Mapping[str, Any]) -> dict[str, float]:
    """A tier mix in either form, ``"easy=0.35,medium=0.45"`` or ``{"easy": 0.35, ...}``, as ``{tier: share}``.

    The one parser of the ``mix`` param: the dataset stage and the SFT stage share a run's params, so
    both read the same value the same way.
    """
    if isinstance(value, str):
        pairs = []
        for part in filter(None, (x.strip() for x in value.split(","))):
            tier, sep, share = part.partition("=")
            try:
                pairs.append((tier.strip(), float(share) if sep else -1.0))
            except ValueError:
                pairs.append((tier.strip(), -1.0))
    elif isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        raise ValueError(f"mix: expected tier=share,... or a table of shares (e.g. {MIX_EXAMPLE}), got {value!r}")
    out: dict[str, float] = {}
    for tier, share in pairs:
        if not tier or isinstance(share, bool) or not isinstance(share, int | float) or not share >= 0:
            raise ValueError(f"mix: {tier}={share!r} is not tier=share with a share >= 0 (e.g. {MIX_EXAMPLE})")
        out[tier] = float(share)
    if not out or sum(out.values()) <= 0:
        raise ValueError(f"mix: give at least one tier with a share > 0 (e.g. {MIX_EXAMPLE})")
    return out


# -------------------------------------------------------------------------------------------------
# Rewards and curriculum (the RL stage's nested tables)
# -------------------------------------------------------------------------------------------------


class RewardParams(_Params):
    """The GRPO reward and the shared grading weights (docs/rewards.md); `[rewards]`, the RL stage's base."""

    grade_weight: float = Field(
        1.0, ge=0.0, description="Weight of the shared grading score (the number the backtest also measures)."
    )
    format_weight: float = Field(
        0.2, ge=0.0, description="Weight of the format term: 1 when the Parallel-format validator accepts the completion."
    )
    diversity_weight: float = Field(
        0.1, ge=0.0, description="Weight of path diversity: 1 - mean pairwise Jaccard similarity of a block's paths."
    )
    critic_weight: float = Field(
        0.2, ge=0.0,
        description="Weight of agreement with the platform critic (POST /v1/critic/verify); dropped for a step "
        "when the critic is unreachable, never counted as 0.",
    )
    format_require_parallel: bool = Field(
        True, description="The format term also needs at least one <Parallel> block (a valid sequential answer gets 0)."
    )
    alternating: bool = Field(
        False,
        description="Parallel-R1 stage-2 schedule: accuracy terms on every step, the parallel terms (format, "
        "diversity, parallel bonus) only in every alternate_every-th window of alternate_window steps.",
    )
    alternate_window: int = Field(10, ge=1, description="Steps per window of the alternating schedule.")
    alternate_every: int = Field(
        5, ge=1, description="Every k-th window is a bonus window (5: 20% of the steps, as in Parallel-R1)."
    )
    parallel_bonus: float = Field(
        0.5, ge=0.0,
        description="With alternating on: reward for a valid completion with a <Parallel> block in bonus windows.",
    )
    guardrails: list[str] = Field(
        [], description="Phrases a completion must never contain (case-insensitive); one fails the compliance column."
    )
    critic_redis_url: str = Field(
        "", description="Redis URL of the critic cache (redis://host:port/db); empty: an in-process LRU."
    )
    critic_lru_size: int = Field(
        100_000, ge=0, description="Entries of the in-process critic cache (also the fallback when Redis fails)."
    )
    critic_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one critic request.")
    critic_cooldown_s: float = Field(
        30.0, ge=0, description="After a failed critic request, skip the critic for this long (one timeout per outage)."
    )
    grading: GradeWeights = GradeWeights()

    @field_validator("critic_redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL, or empty for the in-process LRU")
        return v

    @field_validator("guardrails", mode="before")
    @classmethod
    def _phrase_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("guardrails must be a list of phrases, not one string")
        return list(v) if isinstance(v, tuple) else v

    @field_validator("guardrails")
    @classmethod
    def _phrases(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("guardrail phrases must not be empty or whitespace only")
        return v

    @model_validator(mode="after")
    def _some_term(self) -> RewardParams:
        if self.grade_weight + self.format_weight + self.diversity_weight + self.critic_weight <= 0:
            raise ValueError("every reward term has weight 0; set grade_weight (or another weight) above 0")
        return self


class CurriculumParams(_Params):
    """Thresholds of the RL curriculum: tier promotion, explore/verify phases and stop criteria."""

    tiers: tuple[str, ...] = Field(
        ("easy", "medium", "hard"),
        description="Tiers in training order; the scheduler starts at the first and never goes back.")
    promote_accuracy: float = Field(
        0.8, description="Move to the next tier once the current tier's accuracy over the last window reaches this.")
    accuracy_window: int = Field(
        64, description="Completions per accuracy window: the tier's rolling accuracy is measured over consecutive "
        "windows of this many graded completions.")
    tier_plateau_windows: int = Field(
        3, description="Move up also when the last this-many accuracy windows improved on the best earlier window "
        "by less than tier_min_improvement (the tier has plateaued).")
    tier_min_improvement: float = Field(
        0.01, description="Smallest accuracy gain (absolute, on the 0..1 scale) that counts as progress on a tier.")
    explore_segments: int = Field(
        1, description="Segments (epochs or trainer segments) of each explore phase, before the verify phase.")
    verify_segments: int = Field(1, description="Segments of each verify phase.")
    explore_temperature: float = Field(
        1.0, description="Sampling temperature in explore segments (higher: more varied paths).")
    explore_generations: int = Field(8, description="Completions per prompt (GRPO group size) in explore segments.")
    verify_temperature: float = Field(0.7, description="Sampling temperature in verify segments (conservative).")
    verify_generations: int = Field(4, description="Completions per prompt in verify segments.")
    plateau_windows: int = Field(
        3, description="Stop when the evaluation score has not improved by stop_min_improvement over this many "
        "evaluation windows.")
    stop_min_improvement: float = Field(
        0.01, description="Smallest evaluation-score gain (absolute, 0..1 scale: 0.01 is 1 point) that counts as "
        "improvement.")
    reward_window: int = Field(
        20, description="Steps over which the variance of the mean step reward is measured for reward_stable.")
    reward_variance: float = Field(
        0.02, description="Stop when the variance of the step reward over the last reward_window steps is below "
        "this and the reward no longer rises (the window's second half less than stop_min_improvement above its "
        "first; 0 turns the criterion off).")
    min_steps: int = Field(
        50, description="Neither plateau nor reward_stable stops training before this many steps (a flat start is "
        "not convergence).")
    max_steps: int = Field(0, description="Step budget: stop at this many steps (0: no budget).")
    max_seconds: float = Field(
        0.0, description="Time budget: stop once training has run this long, in seconds (0: no budget).")

    @field_validator("tiers", mode="before")
    @classmethod
    def _tier_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @model_validator(mode="after")
    def _check(self) -> CurriculumParams:
        if not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"curriculum.tiers must be a non-empty list of distinct names, got {list(self.tiers)}")
        for name in ("promote_accuracy", "tier_min_improvement", "stop_min_improvement"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"curriculum.{name} is on the 0..1 accuracy scale; got {v}")
        for name in ("accuracy_window", "tier_plateau_windows", "explore_segments", "verify_segments",
                     "plateau_windows", "reward_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"curriculum.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("explore_generations", "verify_generations"):
            if getattr(self, name) < 2:
                raise ValueError(f"curriculum.{name} must be >= 2: GRPO's advantage compares completions of one "
                                 f"prompt, got {getattr(self, name)}")
        for name in ("explore_temperature", "verify_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"curriculum.{name} must be > 0 (sampling), got {getattr(self, name)}")
        if self.explore_temperature < self.verify_temperature:
            raise ValueError(
                "curriculum.explore_temperature must be >= verify_temperature (explore samples wider); got "
                f"{self.explore_temperature} < {self.verify_temperature}"
            )
        if self.reward_variance < 0 or self.min_steps < 0 or self.max_steps < 0 or self.max_seconds < 0:
            raise ValueError("curriculum.reward_variance, min_steps, max_steps and max_seconds must be >= 0")
        return self


# -------------------------------------------------------------------------------------------------
# The training stages
# -------------------------------------------------------------------------------------------------


# The experiment trackers `report_to` takes (transformers' names), each with the pip package it needs: a stage
# checks the package is installed before it trains (pr1d.train.sft.check_reporters).
Reporter = Literal["tensorboard", "trackio", "wandb", "mlflow"]
REPORTERS: dict[str, str] = {
    "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}


class LoraParams(_Params):
    """What the SFT and RL stages share: full fine-tuning or a LoRA adapter and its shape, precision, trackers."""

    finetune: Literal["full", "lora"] = Field(
        "full", description="full (all weights) or lora (adapter + trainable embeddings/lm_head)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout (a probability in [0, 1))")
    lora_target_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        description="comma-separated module names LoRA wraps")
    seed: int = Field(0, description="seeds data order, sampling and the LoRA init")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    bf16: bool = Field(
        False, description="bf16 mixed precision (autocast) on a GPU; ignored on the CPU. On for the 7B GPU "
        "profile; off, `accelerate launch` still applies its config's mixed_precision")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: ~30% slower steps for far less activation "
        "memory (on for the 7B profile's long sequences; no gain on the tiny CPU model)")
    report_to: list[Reporter] = Field(
        [], description="experiment trackers the trainer logs its curves to: tensorboard (event files in the "
        "stage's tensorboard/ folder, an artifact of the run), trackio, wandb, mlflow (run name "
        "`pr1-run<id>-<stage>`; their own env vars say where); a list, one name, or none (the default)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _reporters(cls, v: Any) -> Any:
        # "tensorboard" (a --report-to flag, a --param) and "tensorboard,wandb" read as lists; "none" as [].
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list | tuple):
            raise ValueError(f"expected a list of trackers or one name, got {v!r}")
        names = [x.strip().lower() if isinstance(x, str) else x for x in v]
        unknown = [x for x in names if x not in REPORTERS and x != "none"]
        if unknown:
            raise ValueError(f"unknown tracker(s) {', '.join(map(repr, unknown))}; use some of "
                             f"{', '.join(REPORTERS)}, or none")
        return list(dict.fromkeys(x for x in names if x != "none"))

    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


class SFTParams(LoraParams):
    """Hyperparameters of the SFT stage (default: full fine-tuning, chosen by measurement)."""

    parallel_format: bool = Field(True, description="train on Parallel-format completions")
    branches: int = Field(2, description="paths per <Parallel> block (>= 2)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (cosine, 5% warm-up)")
    max_steps: int = Field(
        2000, ge=1, description="optimizer steps (demo model, full fine-tuning: 800 steps left it below base, 1200 "
        "gave +9 points, 2000 gave +21; benchmarks/curriculum_quality.md)")
    batch_size: int = Field(16, ge=1, description="sequences per device step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(320, description="truncate sequences to this many tokens")
    padding: Literal["dynamic", "max_length"] = Field(
        "dynamic", description="dynamic (length-grouped batches, padded to the longest in the batch) or max_length "
        "(every batch padded to max_length; the benchmark's baseline, 1.3x+ slower on mixed lengths)")
    checkpoint_every: int = Field(50, ge=1, description="save a resumable checkpoint every N steps")
    eval_per_tier: int = Field(50, ge=0, description="held-out problems per tier for the eval (0: skip)")
    n_train: int = Field(
        8000, ge=1, description="records to train on: a dataset with fewer is topped up with generated GSM-lite "
        "training problems (tiers per mix) to this many; also the size of the generated set when no data is given")
    mix: dict[str, float] = Field(
        parse_mix(DEFAULT_MIX),
        description="tier mix of generated records (tier=share,... or a table). Weighted to what the agent does "
        "not yet master: the default trained medium from 19% to 82% on the demo model; the pretraining mix "
        "(70% easy) lost 3 points")

    @field_validator("mix", mode="before")
    @classmethod
    def _mix(cls, v: Any) -> dict[str, float]:
        return parse_mix(v)

    @model_validator(mode="after")
    def _check(self) -> SFTParams:
        if self.branches < 2:
            raise ValueError("branches must be >= 2: a <Parallel> block needs at least two paths")
        if self.max_length < 16:
            raise ValueError("max_length must be >= 16 tokens: GSM-lite prompts alone take ~40")
        unknown = sorted(set(self.mix) - set(TIERS))
        if unknown:
            raise ValueError(f"mix: tiers {unknown} are not GSM-lite tiers; use some of {', '.join(TIERS)} "
                             f"(e.g. {DEFAULT_MIX})")
        return self


# The curriculum module's accuracy window of 64 completions is one step of the default generation batch,
# so one lucky or unlucky batch (8 prompts) would decide a tier move, and the plateau rule (3 windows
# without a 1-point gain over the best earlier one) would compare single noisy batches. 256 is four steps.
STAGE_CURRICULUM_DEFAULTS: dict[str, Any] = {"accuracy_window": 256}


class RLParams(LoraParams):
    """Hyperparameters of the rl stage (defaults: the recipe measured on the 1M demo model, issue 6)."""

    finetune: Literal["full", "lora"] = Field(
        "full", description="full (all weights; what was measured) or lora (adapter + trainable embeddings/lm_head)")
    lr: float = Field(
        2e-5, gt=0, description="learning rate (constant). 2e-5 lifted held-out medium 43% -> 51% on the demo model; "
        "1e-4 broke easy facts")
    beta: float = Field(
        0.0, ge=0, description="KL coefficient against the starting model (0: no reference model is loaded, no KL "
        "is measured)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature when explore_verify is off")
    num_generations: int = Field(
        8, ge=2, description="completions per prompt (GRPO group size) when explore_verify is off")
    generation_batch: int = Field(
        64, ge=1, description="completions generated and scored per optimizer step (prompts = generation_batch / "
        "group size)")
    micro_batch: int = Field(
        64, ge=1, description="completions per forward/backward pass; generation_batch / micro_batch is the "
        "gradient accumulation")
    max_completion_length: int = Field(
        224, ge=1, description="new tokens per completion at most (224 fits two Parallel paths of a hard problem)")
    max_steps: int = Field(200, ge=1, description="step budget: optimizer steps at most")
    max_minutes: float = Field(
        0.0, ge=0, description="time budget in minutes of training, summed over resumes (0: none)")
    start_tier: str = Field("easy", description="tier the curriculum starts on")
    tier_pool: int = Field(
        2000, ge=1, description="GSM-lite training problems generated per tier (drawn from at random, with the run's "
        "seed)")
    tasks: Literal["gsm_lite", "dataset"] = Field(
        "gsm_lite", description="where the RL problems come from: gsm_lite (generated, tier_pool per tier) or dataset "
        "(the run's dataset stage's tasks, any task family, graded by the family's grader; a task without a tier "
        "gets one from the agent's pass rate on its family)")
    explore_verify: bool = Field(
        True, description="alternate explore and verify segments (temperatures and group sizes from the curriculum "
        "config); off: every step samples at temperature with num_generations")
    phase_steps: int = Field(10, ge=1, description="optimizer steps per explore/verify segment")
    eval_every: int = Field(
        20, ge=1, description="steps per evaluation window of the plateau stop (window score: accuracy of its "
        "sampled completions on the current tier; the windows restart at a tier change)")
    curriculum: dict[str, Any] = Field(
        {}, description="CurriculumParams keys (tiers, promote_accuracy, explore_temperature, ...), over the stage "
        "defaults {accuracy_window: 256}; the budgets are max_steps/max_minutes here")
    rewards: dict[str, Any] = Field(
        {}, description="RewardParams keys (grade_weight, format_weight, diversity_weight, critic_weight, "
        "alternating, grading, ...) over the [rewards] section")
    critic: bool = Field(
        False, description="add the critic-agreement reward term (POST /v1/critic/verify at the platform's scoring "
        "URL)")
    checkpoint_every: int = Field(25, ge=1, description="save a resumable checkpoint every N steps")
    use_vllm: bool = Field(
        False, description="generate the rollouts with vLLM through TRL (GPU only; pip install vllm): the step's "
        "bottleneck at 7B. Off: transformers' generate, the CPU path")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM shares each training GPU (vllm_gpu_memory_utilization of it); server: "
        "a separate `trl vllm-serve` at vllm_server_url")
    vllm_server_url: str = Field("", description="base URL of the `trl vllm-serve` server (vllm_mode = server)")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="share of each GPU's memory vLLM takes in colocate mode")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="GPUs one colocated vLLM engine spans")
    eval_per_tier: int = Field(
        50, ge=0, description="held-out GSM-lite problems per tier scored before and after training, on the "
        "selection split the gate never scores, and the cap per tier of each task family's `select` set "
        "(0: skip, and keep_better cannot choose)")
    keep_better: bool = Field(
        True, description="hand on the RL model only when it is not worse than its starting model on that held-out "
        "check (and on each family's `select` set); otherwise keep the SFT candidate (the RL model stays in rl_model_not_kept/) and say why")
    keep_max_tier_drop: float = Field(
        0.05, ge=0, le=1, description="keep_better also refuses an RL model whose accuracy on any one tier fell by "
        "more than this (a fraction: 0.05 = 5 points) even when the overall accuracy rose")

    @model_validator(mode="after")
    def _check(self) -> RLParams:
        if self.generation_batch % self.micro_batch:
            raise ValueError(
                f"generation_batch ({self.generation_batch}) must be a multiple of micro_batch ({self.micro_batch}):"
                " the generated batch is split into micro-batches for the backward pass"
            )
        for key in ("max_steps", "max_seconds"):
            if key in self.curriculum:
                raise ValueError(f"curriculum.{key} is set by the stage: use max_steps / max_minutes instead")
        ccfg = self.curriculum_params()  # raises on unknown keys, with the list of known ones
        if self.start_tier not in ccfg.tiers:
            raise ValueError(f"start_tier {self.start_tier!r} is not one of the curriculum tiers {list(ccfg.tiers)}")
        unknown = set(ccfg.tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"curriculum tiers {sorted(unknown)} are not GSM-lite tiers; use some of {TIERS}")
        sizes = {self.num_generations} if not self.explore_verify else {
            ccfg.explore_generations, ccfg.verify_generations}
        for g in sizes:
            if self.generation_batch % g:
                raise ValueError(
                    f"generation_batch ({self.generation_batch}) must be a multiple of every group size used "
                    f"({sorted(sizes)}): each prompt of a step gets exactly one full group"
                )
        self.reward_params()
        if self.use_vllm and self.vllm_mode == "server" and not self.vllm_server_url.startswith(("http://", "https://")):
            raise ValueError("vllm_mode = server needs vllm_server_url (http://host:port of `trl vllm-serve`)")
        return self

    def curriculum_params(self) -> CurriculumParams:
        """The curriculum thresholds: stage defaults, then ``curriculum``, then the stage's budgets."""
        return params_from(CurriculumParams, {
            **STAGE_CURRICULUM_DEFAULTS, **self.curriculum,
            "max_steps": self.max_steps, "max_seconds": self.max_minutes * 60.0,
        }, "curriculum")

    def reward_params(self) -> RewardParams:
        return params_from(RewardParams, self.rewards, "rewards")


# -------------------------------------------------------------------------------------------------
# The evaluation stages and the dataset
# -------------------------------------------------------------------------------------------------


class SFTGateParams(_Params):
    """The sft_gate stage: base and SFT candidate scored on the same held-out GSM-lite problems."""

    base: str | None = Field(None, description="base model folder (default: params.model, else the model in service)")
    candidate: str | None = Field(None, description="candidate folder (default: the run's NN-sft/candidate)")
    n_per_tier: int = Field(50, ge=1, description="held-out GSM-lite problems per tier")
    threshold: float = Field(0.05, description="uplift the candidate must clear (absolute points or relative)")
    # Not `mode`: run params are shared by a run's stages, and the dataset stage's `mode` is parallel|sequential.
    uplift_mode: Literal["absolute", "relative"] = Field("absolute", description="how threshold is read")
    tiers: list[str] | None = Field(None, description="GSM-lite tiers scored (default: all)")
    max_new_tokens: int = Field(224, ge=1, description="token budget per answer")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    families: bool = Field(
        True, description="also score every served task family with a `heldout` set ([tasks.families.X] heldout), "
        "with its KB context; the run then proceeds when GSM-lite or a family gains `threshold`")
    max_regression: float = Field(
        0.02, ge=0, description="with families scored: the most GSM-lite or any family may lose (absolute points)")


class BacktestParams(_Params):
    """The backtest stage: history and held-out GSM-lite replayed through candidate and model in service."""

    candidate: str | None = Field(
        None, description="candidate model folder (default: the run's newest rl, else sft, candidate)")
    base: str | None = Field(
        None, description="model in service when the agent has no registry pointer yet (default: params.model)")
    policy: dict[str, Any] | None = Field(
        None, description="the candidate's ParallelExecutionPolicy as a table (default: candidate/policy.json, else "
        "the default policy)")
    window: int = Field(200, ge=0, description="newest gradebook tasks of this agent to replay (0: none)")
    n_per_tier: int = Field(50, ge=0, description="held-out GSM-lite problems per tier (0: none)")
    tiers: list[str] | None = Field(None, description="GSM-lite tiers to replay (default: all)")
    seed: int = Field(0, description="sampling seed, the same for both models")
    max_new_tokens: int = Field(
        224, ge=1, description="token budget of plain generation (a policy brings its own budget)")
    batch_size: int = Field(32, ge=1, description="prompts per generation call (one progress step)")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    critic: bool = Field(True, description="ask the platform's critic about every final answer")
    # Not `guardrails`: run params are shared by every stage of a run, and the trigger's `guardrails` (mix
    # exemplars into the dataset, false unless compliance fired) would silently switch these probes off.
    guardrail_probes: bool = Field(
        True, description="replay the guardrail exemplars ([dataset] guardrails_dir) as source guardrail, the probes "
        "the gate's compliance checks read")
    guardrail_phrases: list[str] = Field(
        [], description="phrases that fail the no_guardrail_violation compliance check")

    @model_validator(mode="after")
    def _check(self) -> BacktestParams:
        if self.window == 0 and self.n_per_tier == 0 and not self.guardrail_probes:
            raise ValueError("nothing to replay: set window > 0 (gradebook), n_per_tier > 0 (GSM-lite) or "
                             "guardrail_probes = true")
        return self


class DatasetParams(_Params):
    """The dataset stage's run params (docs/dataset.md); where exemplars and the teacher live is config only."""

    branches: int = Field(2, ge=2, description="paths per <Parallel> block")
    mode: Literal["parallel", "sequential"] = Field("parallel", description="Parallel traces or plain chains")
    min_score: float | None = Field(None, ge=0, le=1, description="gradebook score floor (default: [dataset] min_score)")
    max_records: int | None = Field(None, ge=1, description="records at most (default: all)")
    mix: dict[str, float] | None = Field(
        None, description="keep tiers in these proportions (tier=share,... or a table; the same value the sft "
        "stage reads); default: as the gradebook has them")
    seed: int = Field(0, description="shuffle seed")
    since: str | int | None = Field(None, description="gradebook cursor to start from (default: the local copy's)")
    kb: bool = Field(True, description="put KB context into the prompts")
    targeted: bool = Field(False, description="build the targeted dataset (implied by the run kind targeted-sft)")
    guardrails: bool = Field(False, description="mix in guardrail exemplars (implied by targeted)")
    guardrail_share: float | None = Field(
        None, ge=0, le=0.9, description="share of guardrail exemplars (default: [dataset] guardrail_share)")
    max_failing_tasks: int = Field(256, ge=1, description="failing tasks one targeted run targets, newest first")
    critic_min_confidence: float = Field(
        0.9, ge=0, le=1, description="how sure the critic must be before a recovered answer is trained on")

    @field_validator("mix", mode="before")
    @classmethod
    def _mix(cls, v: Any) -> Any:
        return None if v is None else parse_mix(v)


# -------------------------------------------------------------------------------------------------
# Run params against a plan
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageKeys:
    """The run params one stage reads: its parameter model's fields (flat) and a few more keys."""

    model: type[_Params] | None
    extra: Mapping[str, str]
    flat_model: bool = True  # False: the model's fields are read only nested (the rl stage outside `rl` runs)

    def names(self, kind: str) -> set[str]:
        flat = self.model is not None and (self.flat_model or kind == "rl")
        return set(self.extra) | (set(self.model.model_fields) if flat else set())


STAGE_KEYS: dict[str, StageKeys] = {
    "dataset": StageKeys(DatasetParams, {}),
    "sft": StageKeys(SFTParams, {"model": "base model folder", "data": "records JSONL", "cpu": "train on CPU"}),
    "sft_gate": StageKeys(SFTGateParams, {"model": "base model folder (for base)"}),
    # A `full` run's flat params are the sft stage's (its lr of 1e-3 would wreck RL): there the rl stage
    # reads its own fields only under `rl`.
    "rl": StageKeys(RLParams, {"rl": "a table of RLParams keys", "model": "starting model folder",
                               "cpu": "train on CPU"}, flat_model=False),
    "backtest": StageKeys(BacktestParams, {"model": "model in service (for base)"}),
    "gate": StageKeys(None, {"backtest_report": "the backtest report to decide on"}),
    "sleep": StageKeys(None, {k: "test knob" for k in ("seconds", "step_s", "fail_at_step", "silent_after_step",
                                                        "exit_code", "write_mb", "alloc_mb")}),
    "noop": StageKeys(None, {}),
    "kb_ingest": StageKeys(None, {"path": "file or folder to ingest"}),
}


def validate_run_params(kind: str, params: Mapping[str, Any], stages: tuple[str, ...] | None = None) -> None:
    """Refuse run params no stage of the plan reads, naming the key and the stages that take params.

    ``stages`` defaults to the plan of ``kind`` (:func:`pr1d.pipeline.plans.plan_for`). Run params are shared
    by every stage of a run, so a key is fine when one stage reads it. The nested ``rl`` table is checked
    against :class:`RLParams` too. Raises :class:`ParamsError`.
    """
    if stages is None:
        from .pipeline.plans import plan_for

        stages = plan_for(kind)
    taken = {s: STAGE_KEYS[s].names(kind) if s in STAGE_KEYS else set() for s in stages}
    known = set().union(*taken.values()) if taken else set()
    unknown = sorted(set(params) - known)
    if unknown:
        takers = [f"{s} ({', '.join(sorted(k))})" for s, k in taken.items() if k]
        raise ParamsError(
            f"run kind {kind!r}: unknown param(s) {', '.join(unknown)}: no stage of its plan "
            f"({', '.join(stages)}) reads {'it' if len(unknown) == 1 else 'them'}. "
            + (f"Stages that take params: {'; '.join(takers)}" if takers else "Its stages take no params.")
        )
    if "rl" in params and "rl" in known:
        if not isinstance(params["rl"], Mapping):
            raise ParamsError("param rl: expected a table of RLParams keys, e.g. {\"lr\": 1e-5}")
        unknown_rl = sorted(set(params["rl"]) - set(RLParams.model_fields))
        if unknown_rl:
            raise ParamsError(f"param rl: unknown key(s) {', '.join(unknown_rl)} for the rl stage; "
                              f"known: {', '.join(sorted(RLParams.model_fields))}")
        params_from(RLParams, params["rl"], f"run kind {kind!r}, param rl")
    # Values too, each stage's view as its worker will read it: a bad value is refused now, not after the
    # stages before it have trained for minutes. (The config's [training.*] defaults were checked at load.)
    for s in stages:
        keys = STAGE_KEYS.get(s)
        if keys is None or keys.model is None or not (keys.flat_model or kind == "rl"):
            continue
        stage_view(keys.model, params, f"run kind {kind!r}, stage {s}")


# -------------------------------------------------------------------------------------------------
# CLI flags
# -------------------------------------------------------------------------------------------------


def _help(field: Any, suffix: str = "") -> str:
    # argparse %-formats every help string (for ``%(default)s``), so a literal ``%`` such as "5% warm-up"
    # must be doubled; every parameter flag goes through here so that no help text can crash ``--help``.
    return ((field.description or "") + suffix).replace("%", "%%")


def _key_value(text: str) -> tuple[str, Any]:
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. format_weight=0.2)")
    try:
        value = json.loads(raw)  # numbers, booleans, lists, objects
    except json.JSONDecodeError:
        value = raw  # a bare string
    return key.strip(), value


def add_param_arguments(parser: argparse.ArgumentParser, model: type[_Params],
                        tables: Mapping[str, str] | None = None) -> None:
    """One flag per field of ``model`` (``--max-steps``; booleans as ``--x/--no-x``; a Literal as choices).

    ``tables`` maps a dict field to a repeatable ``--flag KEY=VALUE`` (VALUE is JSON or a string); read
    the result back with :func:`params_from_args`.
    """
    tables = tables or {}
    for name, f in model.model_fields.items():
        if name in tables:
            parser.add_argument(tables[name], dest=name, type=_key_value, action="append", default=[],
                                metavar="KEY=VALUE", help=_help(f, " (repeatable; VALUE is JSON or a string)"))
            continue
        flag = "--" + name.replace("_", "-")
        ann, default = f.annotation, f.default
        shown = ",".join(f"{k}={v:g}" for k, v in default.items()) if isinstance(default, dict) else default
        help_ = _help(f, f" (default: {shown})")
        if ann is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif get_origin(ann) is Literal:
            parser.add_argument(flag, dest=name, choices=get_args(ann), default=default, help=help_)
        else:
            typ = ann if ann in (int, float) else str
            parser.add_argument(flag, dest=name, type=typ, default=shown if isinstance(default, dict) else default,
                                help=help_)


def params_from_args(model: type[P], args: argparse.Namespace) -> P:
    """The model from parsed flags (see :func:`add_param_arguments`); raises :class:`ParamsError`."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    for k, v in values.items():
        if isinstance(v, list) and isinstance(model.model_fields[k].default, dict):
            values[k] = dict(v)
    return params_from(model, values, model.__name__)
