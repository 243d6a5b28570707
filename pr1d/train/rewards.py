"""GRPO rewards: pure reward terms (weighted per pr1d.params.RewardParams), Parallel-R1's alternating schedule, and the TRL adapters.

Every term maps one completion (with the task's expected answer) to a number in [0, 1]; the adapters
multiply it by its weight, so the per-function means TRL logs (``rewards/<name>/mean``) add up to the
total reward. Formulas, bounds and the reasons behind them are in docs/rewards.md.

Importing this module loads no torch: the TRL adapters only call the tokenizer they are given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pr1d.data.parallel_format import (
    Consensus,
    FormatError,
    consensus,
    extract_final_answer,
    parse,
    path_diversity,
)
from pr1d.evaluate.grading import GradeWeights, answers_match, consensus_confidence, grade
from pr1d.params import RewardParams

__all__ = [
    "AlternatingSchedule",
    "alternating_schedule",
    "RewardFuncs",
    "RewardMetrics",
    "consensus_counts",
    "consensus_reward",
    "correctness_reward",
    "critic_reward",
    "decode_completions",
    "diversity_reward",
    "format_reward",
    "grade_reward",
    "make_critic",
    "make_reward_funcs",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The terms (pure)
# --------------------------------------------------------------------------------------------------


def correctness_reward(completion: str, answer: str) -> float:
    """1.0 when the final answer (outside every block) has the expected value, else 0.0."""
    return 1.0 if answers_match(extract_final_answer(completion), answer) else 0.0


def format_reward(completion: str, *, require_parallel: bool = True) -> float:
    """1.0 when the Parallel-format validator accepts the whole text, else 0.0.

    Any malformed block (or a missing/duplicated answer line) gives 0. With ``require_parallel`` a
    valid but sequential answer (no ``<Parallel>`` block) also gives 0: the term is there to teach the
    format, and a sequential answer has not used it.
    """
    try:
        solution = parse(completion)
    except FormatError:
        return 0.0
    return 1.0 if solution.blocks or not require_parallel else 0.0


def _blocks(completion: str):
    # The block structure, answer line not required: a truncated completion's finished blocks still count.
    try:
        return parse(completion, require_final_answer=False).blocks
    except FormatError:
        return ()


def diversity_reward(completion: str) -> float:
    """Mean over the valid blocks of ``1 − mean pairwise Jaccard similarity`` of their paths, in [0, 1].

    The measure is :func:`pr1d.data.parallel_format.path_diversity` (word unigrams + bigrams), so the
    reward and the scoreboard KPI are one number: identical paths score exactly 0, paths sharing no
    word score 1. 0 when the text has no valid block (a malformed structure has no trusted paths).
    Parallel-R1 uses ``1.2 − 0.2·self-BLEU`` instead; docs/rewards.md says why we do not.
    """
    blocks = _blocks(completion)
    if not blocks:
        return 0.0
    return sum(path_diversity(b.paths) for b in blocks) / len(blocks)


def consensus_counts(completion: str) -> tuple[Consensus, ...]:
    """The exact :class:`~pr1d.data.parallel_format.Consensus` of each valid block, in order.

    Each carries every path's answer, the majority answer and how many paths reach it; empty when the
    structure is malformed or has no block.
    """
    return tuple(consensus(b.paths) for b in _blocks(completion))


def consensus_reward(completion: str) -> float:
    """Share of the last block's paths that reach the final answer: grading's ``consensus_confidence``."""
    return consensus_confidence(completion)


def grade_reward(
    completion: str,
    answer: str,
    *,
    weights: GradeWeights | None = None,
    finished: bool = True,
    guardrails: Sequence[str] = (),
) -> float:
    """The shared grading function's score (:func:`pr1d.evaluate.grading.grade`), in [0, 1]."""
    return grade(completion, answer, weights=weights, finished=finished, guardrails=guardrails).score


def critic_reward(result: Any) -> float | None:
    """1.0 when the critic agreed with the final answer, 0.0 when it disagreed, None when it had no verdict.

    ``result`` is a :class:`pr1d.train.critic.CriticResult` or None. None must stay None: a missing
    verdict is not a disagreement, and TRL drops a None term for that sample.
    """
    if result is None:
        return None
    return 1.0 if result.agree else 0.0


# --------------------------------------------------------------------------------------------------
# Alternating schedule (Parallel-R1 stage 2)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlternatingSchedule:
    """Which reward phase a trainer step is in: accuracy-only, or accuracy + the parallel terms.

    Steps are grouped in windows of ``window`` steps; every ``every``-th window (the last of each
    cycle: windows ``every-1``, ``2·every-1``, ...) is a bonus window. ``every = 5`` gives Parallel-R1's
    split of about 80% accuracy-only steps and 20% with the parallel reward. Disabled: always bonus
    (every configured term on every step).
    """

    enabled: bool = False
    window: int = 10
    every: int = 5

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"alternate_window must be >= 1 step, got {self.window}")
        if self.every < 1:
            raise ValueError(f"alternate_every must be >= 1 (1: every window has the bonus), got {self.every}")

    def bonus_active(self, step: int) -> bool:
        """True when the parallel terms count at trainer ``step`` (0-based global step)."""
        if not self.enabled:
            return True
        return (max(step, 0) // self.window) % self.every == self.every - 1

    def phase(self, step: int) -> str:
        """``"parallel"`` in a bonus window, else ``"accuracy"`` (what the progress events report)."""
        return "parallel" if self.bonus_active(step) else "accuracy"


# --------------------------------------------------------------------------------------------------
# Config (declared in pr1d.params: the `[rewards]` section and the rl stage's `rewards` table)
# --------------------------------------------------------------------------------------------------


def alternating_schedule(cfg: RewardParams) -> AlternatingSchedule:
    """The alternating schedule ``cfg`` asks for (always-bonus when ``alternating`` is off)."""
    return AlternatingSchedule(cfg.alternating, cfg.alternate_window, cfg.alternate_every)


def make_critic(cfg: RewardParams, base_url: str, token: str | None = None):
    """A :class:`pr1d.train.critic.CriticClient` with the cache and timeouts of ``cfg``."""
    from pr1d.train.critic import CriticClient, make_critic_cache

    cache = make_critic_cache(cfg.critic_redis_url, lru_size=cfg.critic_lru_size)
    return CriticClient(base_url, token, cache=cache, timeout=cfg.critic_timeout_s, cooldown_s=cfg.critic_cooldown_s)


# --------------------------------------------------------------------------------------------------
# TRL adapters
# --------------------------------------------------------------------------------------------------


@dataclass
class RewardMetrics:
    """Counters the reward functions keep for the trainer's progress events and /metrics.

    ``critic_unavailable_total``: reward calls (steps) whose critic term was dropped because the critic
    gave no verdict for some completion; ``critic_calls``: reward calls that asked the critic.
    """

    critic_unavailable_total: int = 0
    critic_calls: int = 0
    critic_last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"critic_unavailable_total": self.critic_unavailable_total, "critic_calls": self.critic_calls,
                "critic_last_error": self.critic_last_error}


class RewardFuncs(list):
    """The reward functions for ``GRPOTrainer(reward_funcs=...)``, plus what the trainer reports.

    A plain list of callables (TRL accepts it as is); weights are applied inside each function, so
    leave ``GRPOConfig.reward_weights`` unset. ``metrics`` holds the counters, ``schedule`` the
    alternating schedule (``schedule.phase(step)`` for progress events), ``critic`` the client or None.
    """

    metrics: RewardMetrics
    schedule: AlternatingSchedule
    critic: Any


def decode_completions(tokenizer, completion_ids: Sequence[Sequence[int]]) -> list[tuple[str, bool]]:
    """``(text, finished)`` per completion, decoded with the Parallel tags kept.

    TRL hands reward functions texts decoded with ``skip_special_tokens=True``, which deletes the tags
    (they are special tokens) and with them the format. Here the ids are cut at the first EOS (as
    TRL's own completion mask does; ``finished`` says whether there was one), padding is dropped, and
    the rest is decoded with ``skip_special_tokens=False``.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out = []
    for ids in completion_ids:
        ids = [int(t) for t in ids]
        finished = eos is not None and eos in ids
        if finished:
            ids = ids[: ids.index(eos)]
        ids = [t for t in ids if t != pad]
        out.append((tokenizer.decode(ids, skip_special_tokens=False), finished))
    return out


def _as_text(completion: Any) -> str:
    # Conversational datasets give [{"role": "assistant", "content": ...}]; ours are plain text.
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def make_reward_funcs(
    cfg: RewardParams,
    tokenizer,
    *,
    critic: Any = None,
    step_fn: Callable[[], int] | None = None,
    families: Any = None,
) -> RewardFuncs:
    """The TRL reward functions of ``cfg``: ``f(prompts, completions, completion_ids=None, **kwargs)``.

    ``kwargs`` carries the dataset columns (``answer``, ``question``, ``tier``) repeated per completion,
    and TRL's ``trainer_state`` (whose ``global_step`` drives the alternating schedule unless ``step_fn``
    is given) and ``log_metric``. Each function returns one float per completion, or None where its
    term does not apply (TRL turns None into NaN and leaves it out of the sum and of the logged mean).
    Terms of weight 0 are left out; the critic term exists only with a ``critic`` (a
    :class:`pr1d.train.critic.CriticClient`). ``tokenizer`` decodes ``completion_ids`` with the tags
    kept; None falls back to TRL's tag-less texts (only for tests of the pure terms).

    ``families`` (a :class:`pr1d.tasks.families.Families`): rows with a ``family`` column of a family other
    than GSM-lite are graded by that family's grader (the critic for a family without a reference answer,
    batched per step); where the grader has no verdict (critic down) the row's grade term is None.
    """
    schedule = alternating_schedule(cfg)
    metrics = RewardMetrics()
    funcs = RewardFuncs()
    funcs.metrics, funcs.schedule, funcs.critic = metrics, schedule, critic

    def texts(completions, completion_ids) -> list[tuple[str, bool]]:
        if tokenizer is not None and completion_ids is not None:
            return decode_completions(tokenizer, completion_ids)
        return [(_as_text(c), True) for c in completions]

    def current_step(kwargs: Mapping[str, Any]) -> int:
        if step_fn is not None:
            return int(step_fn())
        state = kwargs.get("trainer_state")
        return int(getattr(state, "global_step", 0) or 0)

    def column(kwargs: Mapping[str, Any], name: str, n: int) -> list:
        values = kwargs.get(name)
        if values is None or len(values) != n:
            raise ValueError(
                f"the reward functions need the dataset column {name!r} (one value per completion); "
                f"add it to the GRPO dataset (got {type(values).__name__})"
            )
        return list(values)

    # Parallel terms: on every step without the schedule, only in bonus windows with it.
    def gated(fn: Callable[[str], float], weight: float, name: str) -> Callable[..., list[float | None]]:
        def reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
            if not schedule.bonus_active(current_step(kwargs)):
                return [None] * len(completions)
            return [weight * fn(text) for text, _ in texts(completions, completion_ids)]

        reward.__name__ = reward.__qualname__ = name
        return reward

    if cfg.grade_weight > 0:
        def reward_grade(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
            answers = column(kwargs, "answer", len(completions))
            decoded = texts(completions, completion_ids)
            verdicts = family_verdicts(families, kwargs, [t for t, _ in decoded], answers)
            out: list[float | None] = []
            names = kwargs.get("family") or [None] * len(decoded)
            for (text, finished), ans, v, name in zip(decoded, answers, verdicts, names, strict=True):
                if v is not None and v.unavailable:
                    out.append(None)  # the grader (critic) had no verdict: no grade term, not a 0
                    continue
                out.append(cfg.grade_weight * grade(
                    text, str(ans), weights=cfg.grading, finished=finished, guardrails=cfg.guardrails,
                    correct=None if v is None else v.passed,
                    path_agrees=None if v is None else _path_agrees(families, str(name))).score)
            return out

        funcs.append(reward_grade)
    if cfg.format_weight > 0:
        funcs.append(gated(lambda t: format_reward(t, require_parallel=cfg.format_require_parallel),
                           cfg.format_weight, "reward_format"))
    if cfg.diversity_weight > 0:
        funcs.append(gated(diversity_reward, cfg.diversity_weight, "reward_diversity"))
    if cfg.alternating and cfg.parallel_bonus > 0:
        funcs.append(gated(lambda t: format_reward(t, require_parallel=True), cfg.parallel_bonus,
                           "reward_parallel_bonus"))
    if critic is not None and cfg.critic_weight > 0:
        def reward_critic(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
            n = len(completions)
            questions = column(kwargs, "question", n)
            finals = [extract_final_answer(text) for text, _ in texts(completions, completion_ids)]
            # No final answer: nothing for the critic to agree with, which is a 0, not a missing verdict.
            asked = [i for i, f in enumerate(finals) if f is not None]
            out: list[float | None] = [0.0] * n
            if not asked:
                _log_metric(kwargs, "critic_unavailable_total", metrics.critic_unavailable_total)
                return out
            metrics.critic_calls += 1
            try:
                verdicts = critic.verify([(str(questions[i]), finals[i]) for i in asked])
                reason = getattr(critic, "last_error", None)
            except Exception as e:  # the client never raises by contract; a bug there must not end training
                verdicts, reason = [None] * len(asked), f"{type(e).__name__}: {e}"
            if any(v is None for v in verdicts):
                # Dropped for the whole step, not per sample: scoring some completions of a group and
                # not others would shift the group baseline by the critic term of the lucky ones.
                metrics.critic_unavailable_total += 1
                metrics.critic_last_error = reason
                log.warning("critic reward dropped for this step (%d of %d verdicts missing: %s)",
                            sum(v is None for v in verdicts), len(asked), reason or "unknown")
                _log_metric(kwargs, "critic_unavailable_total", metrics.critic_unavailable_total)
                return [None] * n
            for i, v in zip(asked, verdicts, strict=True):
                out[i] = cfg.critic_weight * critic_reward(v)
            _log_metric(kwargs, "critic_unavailable_total", metrics.critic_unavailable_total)
            return out

        funcs.append(reward_critic)
    if not funcs:
        raise ValueError("rewards: no reward term is active; set grade_weight (or another weight) above 0")
    return funcs


def family_verdicts(families: Any, kwargs: Mapping[str, Any], texts: Sequence[str],
                    answers: Sequence[Any]) -> list[Any]:
    """The family grader's verdict per completion for rows of a family other than GSM-lite, None for the rest
    (GSM-lite rows, or no ``family`` column / no ``families``: graded against ``answer`` as always)."""
    names = kwargs.get("family")
    if families is None or names is None:
        return [None] * len(texts)
    questions = kwargs.get("question") or [""] * len(texts)
    idx = [i for i, name in enumerate(names) if name and name != "gsm_lite"]
    out: list[Any] = [None] * len(texts)
    if idx:
        got = families.grade([(str(names[i]), str(questions[i]), str(answers[i]) or None,
                               extract_final_answer(texts[i])) for i in idx])
        for i, v in zip(idx, got, strict=True):
            out[i] = v
    return out


def _path_agrees(families: Any, name: str) -> Callable[[str, str], bool]:
    """Whether a path reaches the final answer, read the family's way (its path reader, text or number)."""
    from pr1d.tasks.contract import same_answer

    fam = families.family(name)
    return lambda path, final: same_answer(fam.read_path(path), final)


def _log_metric(kwargs: Mapping[str, Any], name: str, value: float) -> None:
    # TRL passes log_metric to reward functions; values are averaged per logging step alongside `kl`.
    fn = kwargs.get("log_metric")
    if callable(fn):
        fn(name, float(value))
