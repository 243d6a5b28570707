"""ParallelRLTrainer: TRL GRPO on GSM-lite with the reward adapters, the tier curriculum and explore/verify phases.

``python -m pr1d.train.grpo --model PATH --out DIR [--max-steps N] [--lr X] [--reward KEY=VALUE ...]
[--curriculum KEY=VALUE ...] [--critic-url URL] [--resume]`` (every field of :class:`RLParams` is a flag).

One training step, in the order :meth:`ParallelRLTrainer._generate_and_score_completions` runs it:

1. **Phase.** The step's explore/verify segment (``phase_steps`` steps each,
   :func:`pr1d.train.curriculum.explore_verify_phase`) gives the sampling temperature and the GRPO group
   size G.
2. **Draw.** ``generation_batch // G`` problems of the scheduler's current tier, each repeated G times,
   chosen by a RNG seeded with ``(seed, step)``: a resumed run draws the same problems.
3. **Generate and score.** TRL samples the completions and calls the reward functions
   (:func:`pr1d.train.rewards.make_reward_funcs`: the shared grade, format, diversity, critic).
4. **Observe.** Each completion's correctness feeds :class:`~pr1d.train.curriculum.TierScheduler` (tier
   transitions) and the evaluation windows of the stop criteria; the batch's parallel ratio, path
   diversity and consensus are measured with the format module.

Then TRL computes the GRPO loss and steps the optimizer, and :class:`RLEventCallback` emits the events,
asks :func:`~pr1d.train.curriculum.stop_decision` whether to stop, and honours a stop request (SIGTERM:
save a checkpoint, end).

Why the trainer draws its own batches: TRL builds its sampler once, from one dataset, before training,
while the tier depends on accuracy measured during training. The train dataset is therefore only
numbered slots (one per completion of the run) and the problems are chosen at generation time, when
the tier is known: no prefetched batch is ever of a stale tier or phase.

Why the temperature is changed by hand: TRL reads ``temperature`` once, at init, into three places: the
``GenerationConfig`` used for sampling, the ``generation_kwargs`` that override the model's own generation
config while sampling, and the fused LM head that computes the loss's log-probabilities of ``softmax(z/T)``.
:meth:`ParallelRLTrainer.apply_phase` updates all three, so the policy the loss differentiates is the one
that sampled. TRL's ``rollout_func`` is not used: see docs/runbooks/parallel-rl.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from trl import GRPOConfig, GRPOTrainer

from pr1d.data.parallel_format import measure_batch
from pr1d.evaluate.gsm_lite import format_prompt, train_split
from pr1d.inference.prompting import render_prompt
from pr1d.params import RLParams, add_param_arguments, params_from_args
from pr1d.train.callbacks import EventCallback, EventFn
from pr1d.train.curriculum import (
    Phase,
    StopDecision,
    TierScheduler,
    TierTransition,
    TrainingHistory,
    explore_verify_phase,
    stop_decision,
)
from pr1d.train.rewards import correctness_reward, decode_completions, family_verdicts, make_reward_funcs
from pr1d.train.sft import check_reporters, last_checkpoint, load_trainable, report_args, tensorboard_into

STATE_FILE = "curriculum_state.json"  # written into every checkpoint folder next to TRL's own state


# -------------------------------------------------------------------------------------------------
# Problems
# -------------------------------------------------------------------------------------------------


def tier_pools(tiers, n_per_tier: int, seed: int, tokenizer=None) -> dict[str, list[dict[str, str]]]:
    """GSM-lite training problems per tier as GRPO rows: ``prompt``, ``answer``, ``question``, ``tier``.

    With ``tokenizer``, ``prompt`` is rendered as the model sees it (its chat template, when it has one): TRL
    tokenises the string as it is.
    """
    pools = {}
    for tier in tiers:
        tasks = train_split(n_per_tier, seed=seed, mix={tier: 1.0})
        pools[tier] = [
            {"prompt": render_prompt(tokenizer, format_prompt(t["question"])) if tokenizer is not None
             else format_prompt(t["question"]), "answer": str(t["answer"]), "question": t["question"],
             "tier": tier}
            for t in tasks
        ]
    return pools


def record_pools(records: Iterable[Mapping[str, Any]], tiers: Sequence[str], tokenizer=None,
                 family_tiers: Mapping[str, str] | None = None) -> dict[str, list[dict[str, str]]]:
    """GRPO rows per tier from dataset records of any task family (``prompt`` already holds the KB context).

    A record's tier is its own when it is one of ``tiers``, else its family's tier in ``family_tiers`` (from the
    agent's pass rate, :func:`pr1d.tasks.families.tier_from_pass_rate`); records with neither are left out. A
    tier no record reaches borrows the rows of the nearest easier tier (else the nearest harder), so the
    curriculum can still climb; ValueError when no record has a tier at all.
    """
    pools: dict[str, list[dict[str, str]]] = {t: [] for t in tiers}
    for rec in records:
        family = str(rec.get("family") or "gsm_lite")
        tier = rec.get("tier") if rec.get("tier") in pools else (family_tiers or {}).get(family)
        if tier not in pools:
            continue
        prompt = str(rec["prompt"])
        pools[tier].append({
            "prompt": render_prompt(tokenizer, prompt) if tokenizer is not None else prompt,
            "answer": str(rec.get("answer") or ""), "question": str(rec.get("question") or question_of(prompt)),
            "tier": tier, "family": family,
        })
    filled = [t for t in tiers if pools[t]]
    if not filled:
        raise ValueError(f"no dataset task has one of the tiers {list(tiers)} (nor a family tier from a pass rate)")
    for i, t in enumerate(tiers):
        if not pools[t]:
            easier = [u for u in tiers[:i] if pools[u]]
            pools[t] = [dict(r, tier=t) for r in pools[easier[-1] if easier else filled[0]]]
    return pools


def question_of(prompt: str) -> str:
    """The question of a rendered task prompt (the text after the last ``Question:``, before ``Answer:``)."""
    q = prompt.rpartition("Question: ")[2]
    return q.rpartition("\nAnswer:")[0].strip() or q.strip()


def slots(n: int):
    """The train dataset TRL iterates: ``n`` numbered slots; the problems are drawn at generation time."""
    from datasets import Dataset

    return Dataset.from_dict({"slot": list(range(n))})


# -------------------------------------------------------------------------------------------------
# Curriculum state (the decisions are pure functions in pr1d.train.curriculum)
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """What one generation step sampled with: the settings handed to ``generate`` and the tier drawn from."""

    step: int
    phase: str
    temperature: float
    num_generations: int
    tier: str
    prompts: int


class CurriculumRun:
    """The curriculum's state during one run: tier scheduler, evaluation windows, step rewards, stop reason."""

    def __init__(self, cfg: RLParams, pools: dict[str, list[dict[str, str]]]) -> None:
        self.cfg = cfg
        self.ccfg = cfg.curriculum_params()
        self.pools = pools
        self.scheduler = TierScheduler(self.ccfg, start_tier=cfg.start_tier)
        self.step_rewards: list[float] = []
        self.eval_scores: list[float] = []
        self._window: list[float] = []  # correctness of the current evaluation window's completions
        self._window_start = 1
        self.stop: StopDecision | None = None
        self.elapsed_before = 0.0  # training seconds of earlier (interrupted) runs
        self.sampling: list[Sampling] = []

    @property
    def tier_index(self) -> int:
        return self.ccfg.tiers.index(self.scheduler.tier)

    def phase(self, step: int) -> Phase:
        """Sampling settings of 1-based ``step``."""
        if not self.cfg.explore_verify:
            return Phase("fixed", self.cfg.temperature, self.cfg.num_generations)
        return explore_verify_phase((step - 1) // self.cfg.phase_steps, self.ccfg)

    def draw(self, step: int, n: int, group: int, rank: int = 0) -> list[dict[str, str]]:
        """``n // group`` distinct problems of the current tier, each repeated ``group`` times (TRL's layout).

        Seeded by ``(seed, step, rank)``: a resumed run draws the same problems, and data-parallel ranks
        draw different ones."""
        pool = self.pools[self.scheduler.tier]
        rng = random.Random(f"pr1-grpo/{self.cfg.seed}/{step}/{rank}")
        picks = rng.sample(range(len(pool)), min(n // group, len(pool)))
        return [dict(pool[i]) for i in picks for _ in range(group)]

    def observe(self, step: int, correct: list[float], reward: float) -> TierTransition | None:
        """Feed one step's outcome; returns the tier transition it caused, if any."""
        self.step_rewards.append(reward)
        self._window.extend(correct)
        if step - self._window_start + 1 >= self.cfg.eval_every:
            self.eval_scores.append(sum(self._window) / len(self._window))
            self._window, self._window_start = [], step + 1
        transition = self.scheduler.observe(step, correct)
        if transition is not None:
            # A new tier's accuracy is not comparable with the old one's: the plateau windows restart.
            self.eval_scores, self._window, self._window_start = [], [], step + 1
        return transition

    def decide_stop(self, step: int, elapsed_s: float) -> StopDecision | None:
        history = TrainingHistory(step=step, elapsed_s=self.elapsed_before + elapsed_s,
                                  rewards=self.step_rewards, eval_scores=self.eval_scores)
        return stop_decision(history, self.ccfg)

    def state_dict(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "tier": self.scheduler.tier,
            "window_accuracies": self.scheduler.window_accuracies,
            "transitions": [t.to_dict() for t in self.scheduler.transitions],
            "step_rewards": self.step_rewards,
            "eval_scores": self.eval_scores,
            "window": self._window,
            "window_start": self._window_start,
            "elapsed_s": self.elapsed_before + elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The scheduler keeps no more than this: completions short of a full accuracy window are
        # collected again after the resume (at most one window's worth).
        self.scheduler.tier = state["tier"]
        self.scheduler.window_accuracies = list(state["window_accuracies"])
        self.scheduler.transitions = [TierTransition(**t) for t in state["transitions"]]
        self.step_rewards = list(state["step_rewards"])
        self.eval_scores = list(state["eval_scores"])
        self._window = list(state["window"])
        self._window_start = int(state["window_start"])
        self.elapsed_before = float(state["elapsed_s"])


# -------------------------------------------------------------------------------------------------
# The trainer
# -------------------------------------------------------------------------------------------------


class ParallelRLTrainer(GRPOTrainer):
    """GRPOTrainer whose batches, sampling temperature and group size come from the curriculum."""

    def __init__(self, *args: Any, curriculum: CurriculumRun, families: Any = None, **kwargs: Any) -> None:
        self.curriculum = curriculum
        self.families = families  # graders of the rows' task families (None: every row is GSM-lite)
        self.started = time.monotonic()
        self.new_transitions: list[TierTransition] = []  # caused by the current step; the callback emits them
        super().__init__(*args, **kwargs)
        # The loss head's forward per (temperature, model index), see _set_loss_temperature.
        self._fused_forwards: dict[tuple[float, int], Any] = {}

    # -- data ---------------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        # Slots in order: which problem fills a slot is decided in _generate_and_score_completions.
        return SequentialSampler(dataset if dataset is not None else self.train_dataset)

    # -- one step -----------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        step = self.state.global_step + 1
        cur = self.curriculum
        phase = cur.phase(step)
        self.apply_phase(phase)
        rows = cur.draw(step, len(inputs), phase.num_generations, self.accelerator.process_index)
        cur.sampling.append(Sampling(step, phase.name, float(self.generation_config.temperature),
                                     self.num_generations, cur.scheduler.tier, len(rows) // phase.num_generations))
        tier_index = cur.tier_index
        out = super()._generate_and_score_completions(rows)
        self._observe(step, rows, out, phase, tier_index)
        return out

    def apply_phase(self, phase: Phase) -> None:
        """Sample (and score the loss) at ``phase.temperature`` with groups of ``phase.num_generations``."""
        self.num_generations = phase.num_generations
        if phase.temperature == self.temperature:
            return
        self.temperature = phase.temperature
        self.generation_config.temperature = phase.temperature
        self.generation_kwargs["temperature"] = phase.temperature
        if getattr(self, "vllm_generation", None) is not None:  # use_vllm: TRL's vLLM sampler keeps its own copy
            self.vllm_generation.temperature = phase.temperature
        self._set_loss_temperature(phase.temperature)

    def _set_loss_temperature(self, temperature: float) -> None:
        # TRL's fused LM head (added at init with the init temperature) is a closure over its temperature:
        # wrap TRL's patched forward once per temperature used and switch between the wrappers, so
        # alternating phases never stack wrappers. The non-fused path (generation) is untouched.
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import add_fused_lm_head

        targets = [self.model.get_base_model() if is_peft_model(self.model) else self.model]
        if self.ref_model is not None:
            targets.append(self.ref_model)
        for k, target in enumerate(targets):
            init_key = (self.args.temperature, k)
            self._fused_forwards.setdefault(init_key, target.forward)  # TRL's own, from init
            cache_key = (temperature, k)
            if cache_key not in self._fused_forwards:
                target.forward = self._fused_forwards[init_key]
                add_fused_lm_head(target, temperature=temperature,
                                  cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
                                  outputs=("log_probs", "entropy"))
                self._fused_forwards[cache_key] = target.forward
            target.forward = self._fused_forwards[cache_key]

    def _observe(self, step: int, rows, out, phase: Phase, tier_index: int) -> None:
        """Grade correctness for the curriculum and measure the batch's parallel KPIs (metrics of this step)."""
        # TRL shuffles only after this returns, so completions are still in the order of `rows`.
        ids = [row[mask.bool()].tolist() for row, mask in zip(out["completion_ids"], out["completion_mask"],
                                                               strict=True)]
        decoded = decode_completions(self.processing_class, ids)
        texts = [t for t, _ in decoded]
        correct = [correctness_reward(t, row["answer"]) for t, row in zip(texts, rows, strict=True)]
        verdicts = family_verdicts(self.families, {"family": [r.get("family") for r in rows],
                                                   "question": [r.get("question", "") for r in rows]},
                                   texts, [r["answer"] for r in rows])
        # A family's grader decides for its rows; no verdict (critic down) counts as not correct for the curriculum.
        correct = [c if v is None else float(v.passed) for c, v in zip(correct, verdicts, strict=True)]
        metrics = self._metrics["train"]
        reward = metrics["reward"][-1] if metrics.get("reward") else float("nan")
        transition = self.curriculum.observe(step, correct, reward)
        kpis = measure_batch(texts)
        metrics["pr1/accuracy"].append(sum(correct) / len(correct))
        metrics["pr1/parallel_ratio"].append(kpis.parallel_ratio)
        metrics["pr1/format_adherence"].append(kpis.format_adherence)
        metrics["pr1/diversity"].append(kpis.path_diversity if kpis.path_diversity is not None else math.nan)
        metrics["pr1/consensus"].append(kpis.consensus_rate if kpis.consensus_rate is not None else math.nan)
        metrics["pr1/tier"].append(float(tier_index))
        metrics["pr1/phase"].append(1.0 if phase.name == "explore" else 0.0)
        metrics["pr1/temperature"].append(float(self.temperature))
        metrics["pr1/num_generations"].append(float(self.num_generations))
        rolling = self.curriculum.scheduler.rolling_accuracy
        if rolling is not None and transition is None:
            metrics["pr1/rolling_accuracy"].append(rolling)
        if transition is not None:
            self.new_transitions.append(transition)

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            state = self.curriculum.state_dict(time.monotonic() - self.started)
            (folder / STATE_FILE).write_text(json.dumps(state) + "\n")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (Path(checkpoint) / STATE_FILE).is_file():
            self.curriculum.load_state_dict(json.loads((Path(checkpoint) / STATE_FILE).read_text()))


# -------------------------------------------------------------------------------------------------
# Events
# -------------------------------------------------------------------------------------------------

# TRL's log keys (and ours, "pr1/...") -> event names. Reward terms are mapped by pattern below.
METRIC_NAMES = {
    "reward": "rl.reward",
    "reward_std": "rl.reward_std",
    "kl": "rl.kl",
    "completions/mean_length": "rl.completion_length",
    "completions/clipped_ratio": "rl.clipped_ratio",
    "frac_reward_zero_std": "rl.frac_reward_zero_std",
    "entropy": "rl.entropy",
    "loss": "rl.loss",
    "grad_norm": "rl.grad_norm",
    "learning_rate": "rl.learning_rate",
    "step_time": "rl.step_time",
    "critic_unavailable_total": "rl.critic_unavailable_total",
    "pr1/accuracy": "rl.accuracy",
    "pr1/rolling_accuracy": "rl.rolling_accuracy",
    "pr1/parallel_ratio": "rl.parallel_ratio",
    "pr1/format_adherence": "rl.format_adherence",
    "pr1/diversity": "rl.diversity",
    "pr1/consensus": "rl.consensus",
    "pr1/tier": "rl.tier",
    "pr1/phase": "rl.phase",
    "pr1/temperature": "rl.temperature",
    "pr1/num_generations": "rl.num_generations",
}


def metric_events(logs: dict[str, Any]) -> list[tuple[str, float]]:
    """``(event name, value)`` for every finite value of a TRL log record we report."""
    out = []
    for key, value in logs.items():
        name = METRIC_NAMES.get(key)
        if name is None and key.startswith("rewards/"):
            # rewards/reward_grade/mean -> rl.reward.grade ; .../std -> rl.reward.grade.std
            _, func, stat = key.split("/", 2)
            term = func.removeprefix("reward_")
            name = f"rl.reward.{term}" + ("" if stat == "mean" else f".{stat}")
        if name is None or value is None:
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append((name, v))
    return out


class RLEventCallback(EventCallback):
    """The shared events and stop requests, plus tier transitions as they happen and the stop criteria."""

    def __init__(self, on_event: EventFn, stop: threading.Event | None) -> None:
        super().__init__(on_event, stop, metrics=lambda logs, _state, _elapsed: metric_events(logs))
        self.trainer: ParallelRLTrainer | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # The time budget counts training, not model loading (earlier runs' seconds come from the checkpoint).
        self.trainer.started = self.t0 = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        tr = self.trainer
        cur = tr.curriculum
        for t in tr.new_transitions:
            self.on_event("metric", {"name": "rl.tier", "value": float(cur.ccfg.tiers.index(t.to_tier)),
                                     "step": t.step})
            self.on_event("log", {"message": f"tier {t.from_tier} -> {t.to_tier} at step {t.step} ({t.reason}, "
                                             f"rolling accuracy {t.rolling_accuracy:.3f} over {t.windows} windows)"})
        tr.new_transitions.clear()
        last = cur.sampling[-1] if cur.sampling else None
        msg = f"tier {cur.scheduler.tier}" + (f", {last.phase} T={last.temperature:g} G={last.num_generations}"
                                             if last else "")
        self.emit_progress(state, message=msg)
        if self.stop_requested(control):
            return control
        decision = cur.decide_stop(state.global_step, time.monotonic() - tr.started)
        if decision is not None:
            cur.stop = decision
            control.should_training_stop = True
            if decision.reason != "step_budget":
                control.should_save = True  # a re-run resumes here and stops at once instead of training on
                self.on_event("log", {"message": f"stopping: {decision.reason} ({decision.detail})"})
        return control


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


class VLLMUnavailable(RuntimeError):
    """``use_vllm`` asked for where vLLM cannot run: no GPU, or the package is not installed."""


def vllm_args(cfg: RLParams, use_cpu: bool) -> dict[str, Any]:
    """TRL's vLLM settings for ``cfg`` (none when ``use_vllm`` is off); a clear error where vLLM cannot run."""
    if not cfg.use_vllm:
        return {}
    if use_cpu:
        raise VLLMUnavailable("use_vllm needs a GPU (vLLM has no CPU path here): set use_vllm = false in "
                              "[training.rl] to generate with transformers")
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailable(f"use_vllm is set but vllm is not installed in this environment ({sys.executable}): "
                              "pip install vllm (a build matching this torch), or set use_vllm = false")
    return vllm_settings(cfg)


def vllm_settings(cfg: RLParams) -> dict[str, Any]:
    """The GRPOConfig fields of ``cfg``'s vLLM settings (whether or not vLLM can run here)."""
    out: dict[str, Any] = {"use_vllm": True, "vllm_mode": cfg.vllm_mode}
    if cfg.vllm_mode == "colocate":
        out.update(vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                   vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                   vllm_max_model_length=None)
    else:
        out["vllm_server_base_url"] = cfg.vllm_server_url
    return out


def grpo_args(cfg: RLParams, output_dir: str | Path, use_cpu: bool, run_name: str | None = None) -> GRPOConfig:
    """TRL's config for ``cfg``; bf16 and gradient checkpointing explicit (``cfg``), since TRL turns both on.

    ``run_name``: the run's name in the ``cfg.report_to`` trackers. ``cfg.use_vllm``: TRL generates the rollouts
    with vLLM (colocated on the training GPUs, or a `trl vllm-serve` server); the curriculum's temperature
    changes reach vLLM's sampling too (:meth:`ParallelRLTrainer.apply_phase`)."""
    return GRPOConfig(
        **vllm_args(cfg, use_cpu),
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.generation_batch // cfg.micro_batch,  # one generation batch per step
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        bf16=cfg.bf16 and not use_cpu,  # TRL turns it on by default; on the CPU it only slows the tiny model
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name; TRL 1.16 still sets the old one
        use_cpu=use_cpu,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.checkpoint_every,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **report_args(cfg, run_name),
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,
    )


def build_trainer(
    model_path: str | Path,
    checkpoint_dir: str | Path,
    cfg: RLParams,
    *,
    on_event: EventFn | None = None,
    stop: threading.Event | None = None,
    critic: Any = None,
    use_cpu: bool | None = None,
    logging_dir: str | Path | None = None,
    run_name: str | None = None,
    task_records: Sequence[Mapping[str, Any]] | None = None,
    families: Any = None,
    family_tiers: Mapping[str, str] | None = None,
) -> tuple[ParallelRLTrainer, RLEventCallback]:
    """The trainer and its event callback, ready to ``train()``; the model is loaded from ``model_path``.

    ``logging_dir``: where TensorBoard's event files go when ``cfg.report_to`` has it (default: under the
    checkpoint folder); ``run_name``: the run's name in the trackers. ``task_records`` (with ``cfg.tasks =
    "dataset"``): the problems, from the run's dataset (:func:`record_pools`), graded by ``families``.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    check_reporters(cfg.report_to)  # before the model loads: a missing tracker is a one-line error
    torch.set_num_threads(cfg.threads)
    emit = on_event or (lambda _t, _f: None)
    model, tokenizer = load_trainable(model_path, cfg)  # reads the finetune/lora_* fields both configs share
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    tiers = cfg.curriculum_params().tiers
    if cfg.tasks == "dataset":
        if not task_records:
            raise ValueError("tasks = dataset but no dataset tasks were given (run a dataset stage before rl)")
        pools = record_pools(task_records, tiers, tokenizer, family_tiers)
    else:
        pools = tier_pools(tiers, cfg.tier_pool, cfg.seed, tokenizer)
    curriculum = CurriculumRun(cfg, pools)
    # The alternating reward schedule reads TRL's trainer_state.global_step: the 0-based step being generated.
    reward_funcs = make_reward_funcs(cfg.reward_params(), tokenizer, critic=critic, families=families)
    callback = RLEventCallback(emit, stop)
    trainer = ParallelRLTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=grpo_args(cfg, checkpoint_dir, use_cpu, run_name),
        train_dataset=slots(cfg.max_steps * cfg.generation_batch),
        processing_class=tokenizer,
        callbacks=[callback],
        curriculum=curriculum,
        families=families,
    )
    callback.trainer = trainer
    trainer.reward_metrics = reward_funcs.metrics
    # Events go through on_event; the Trainer's own printing would interleave with the event stream on stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    tensorboard_into(trainer, logging_dir)
    return trainer, callback


def train_grpo(
    model_path: str | Path,
    checkpoint_dir: str | Path,
    cfg: RLParams,
    *,
    on_event: EventFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
    critic: Any = None,
    use_cpu: bool | None = None,
    logging_dir: str | Path | None = None,
    run_name: str | None = None,
    **tasks: Any,
):
    """Train; returns ``(model, tokenizer, summary)``. ``summary["interrupted"]``: stopped on request.
    ``logging_dir``, ``run_name`` and ``tasks`` (task_records, families, family_tiers): see :func:`build_trainer`."""
    trainer, callback = build_trainer(model_path, checkpoint_dir, cfg, on_event=on_event, stop=stop,
                                      critic=critic, use_cpu=use_cpu, logging_dir=logging_dir, run_name=run_name,
                                      **tasks)
    ckpt = last_checkpoint(checkpoint_dir) if resume else None
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=ckpt)
    elapsed = time.monotonic() - started
    return trainer.model, trainer.processing_class, summarize(trainer, callback, ckpt, elapsed)


def summarize(trainer: ParallelRLTrainer, callback: RLEventCallback, resumed_from: str | None,
              elapsed: float) -> dict[str, Any]:
    """The training part of the stage result (what the ledger stores)."""
    cur = trainer.curriculum
    logs = [h for h in trainer.state.log_history if "reward" in h]
    rewards = [h["reward"] for h in logs]
    q = max(1, len(rewards) // 4)
    stop = cur.stop.to_dict() if cur.stop else None
    if stop is None and not callback.stopped and trainer.state.global_step >= trainer.args.max_steps:
        stop = StopDecision("step_budget", trainer.state.global_step,
                            f"{trainer.state.global_step} steps reached the budget of {trainer.args.max_steps}"
                            ).to_dict()
    return {
        "steps": trainer.state.global_step,
        "resumed_from": resumed_from,
        "interrupted": callback.stopped,
        "train_s": round(elapsed, 1),
        "reward_first_quarter": sum(rewards[:q]) / q if rewards else None,
        "reward_last_quarter": sum(rewards[-q:]) / q if rewards else None,
        "curriculum": {
            "final_tier": cur.scheduler.tier,
            "transitions": [t.to_dict() for t in cur.scheduler.transitions],
            "eval_scores": cur.eval_scores,
        },
        "stop": stop,
        "critic": trainer.reward_metrics.to_dict(),
        "config": trainer.curriculum.cfg.model_dump(mode="json"),
    }


def copy_policy(model_path: str | Path, out_dir: str | Path) -> None:
    """Carry the starting model's ``policy.json`` (its ParallelExecutionPolicy) over to the candidate."""
    src = Path(model_path) / "policy.json"
    if src.is_file():
        shutil.copyfile(src, Path(out_dir) / "policy.json")


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pr1d.params.RLParams` field; the two tables as repeatable ``--reward KEY=VALUE``
    and ``--curriculum KEY=VALUE``."""
    add_param_arguments(parser, RLParams, tables={"rewards": "--reward", "curriculum": "--curriculum"})


def config_from_args(args: argparse.Namespace) -> RLParams:
    return params_from_args(RLParams, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pr1d.train.grpo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="starting model: a folder (e.g. an SFT candidate) or a Hub id in the local Hugging Face cache")
    parser.add_argument("--allow-download", action="store_true",
                        help="fetch a Hub id missing from the cache (safetensors, configs, tokenizer; never code)")
    parser.add_argument("--out", required=True,
                        help="output folder: candidate/, checkpoints/, rl.json (and tensorboard/ with --report-to)")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when CUDA is available")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--critic-url", help="scoring API base URL for the critic term (with --critic)")
    parser.add_argument("--critic-token-env", default="PR1_SCORING_TOKEN",
                        help="environment variable holding the critic's bearer token")
    parser.add_argument("--critic-token-file", default="",
                        help="file holding the token, read when the variable is unset (as the daemon reads it)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.critic and not args.critic_url:
        parser.error("--critic needs --critic-url (the scoring API's base URL)")
    from pr1d.inference.source import ModelNotFound, resolve_model

    try:
        args.model = str(resolve_model(args.model, local_files_only=not args.allow_download,
                                        allow_hint="pass --allow-download"))
    except ModelNotFound as exc:
        parser.error(str(exc))
    check_reporters(cfg.report_to)  # before the held-out evaluation below, not after it
    out = Path(args.out)
    critic = None
    if cfg.critic:
        from pr1d.config import read_token
        from pr1d.train.rewards import make_critic

        critic = make_critic(cfg.reward_params(), args.critic_url, read_token(args.critic_token_env,
                                                                             args.critic_token_file))

    def show(kind: str, fields: dict[str, Any]) -> None:
        if kind == "progress" and (fields["step"] % 10 == 0 or fields["step"] == fields["total"]):
            print(f"step {fields['step']}/{fields['total']} {fields['message']} eta {fields['eta_s'] or 0:.0f}s",
                  file=sys.stderr)
        elif kind == "metric" and fields["name"] in ("rl.reward", "rl.accuracy") and fields["step"] % 10 == 0:
            print(f"  {fields['name']} {fields['value']:.3f}", file=sys.stderr)
        elif kind == "log":
            print(f"  {fields['message']}", file=sys.stderr)

    from pr1d.train.sft import evaluate_model, save_candidate

    summary: dict[str, Any] = {}
    if cfg.eval_per_tier:
        from pr1d.inference.generate import load_model

        base_m, base_t = load_model(args.model)
        summary["eval_before"] = evaluate_model(base_m, base_t, cfg.eval_per_tier)
    # Ctrl-C or SIGTERM: finish the step, save a checkpoint, exit 75 (as the stage does); --resume continues.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    model, tokenizer, train = train_grpo(args.model, out / "checkpoints", cfg, on_event=show, stop=stop,
                                         resume=args.resume, critic=critic, use_cpu=True if args.cpu else None,
                                         logging_dir=out / "tensorboard", run_name=f"pr1-rl-{out.name}")
    if train["interrupted"]:
        print(f"stopped at step {train['steps']} after saving a checkpoint; rerun with --resume", file=sys.stderr)
        return 75
    summary["train"] = train
    summary["candidate"] = save_candidate(model, tokenizer, out / "candidate")
    copy_policy(args.model, out / "candidate")
    if cfg.eval_per_tier:
        model.eval()
        summary["eval_after"] = evaluate_model(model, tokenizer, cfg.eval_per_tier)
    (out / "rl.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    json.dump(summary, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
