"""Curriculum decisions for GRPO: tier promotion (easy -> medium -> hard), explore/verify phases, stop criteria.

All pure: each decision is a function of recorded numbers and a :class:`CurriculumParams`, tested
against tables of cases; the RL stage worker only feeds them what it measured and writes what they
return (tier transitions and the stop reason go to the ledger through the stage's events).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pr1d.params import CurriculumParams

__all__ = [
    "STOP_REASONS",
    "Phase",
    "StopDecision",
    "TierScheduler",
    "TierTransition",
    "TrainingHistory",
    "explore_verify_phase",
    "plateaued",
    "stop_decision",
    "tier_move",
]

STOP_REASONS = ("step_budget", "time_budget", "plateau", "reward_stable")


# --------------------------------------------------------------------------------------------------
# Plateau (shared by tier promotion and the stop criteria)
# --------------------------------------------------------------------------------------------------


def plateaued(scores: Sequence[float], windows: int, min_improvement: float) -> bool:
    """True when the last ``windows`` scores did not beat the best earlier score by ``min_improvement``.

    Needs ``windows + 1`` scores (a baseline and the windows after it); fewer is never a plateau.
    The comparison is with the best earlier score, not the last one, so a single lucky window does
    not reset the count and a slow decline counts as no improvement.
    """
    if len(scores) <= windows:
        return False
    best_before = max(scores[:-windows])
    # A tiny epsilon: 0.81 - 0.80 is 0.010000000000000009 in floats, and exactly 1 point must count.
    return max(scores[-windows:]) - best_before < min_improvement - 1e-9


# --------------------------------------------------------------------------------------------------
# Tiers
# --------------------------------------------------------------------------------------------------


def tier_move(window_accuracies: Sequence[float], cfg: CurriculumParams) -> str | None:
    """Why the current tier is done (``"threshold"`` or ``"plateau"``), or None to stay.

    ``window_accuracies`` are the tier's accuracies over consecutive full windows, oldest first.
    """
    if not window_accuracies:
        return None
    if window_accuracies[-1] >= cfg.promote_accuracy:
        return "threshold"
    if plateaued(window_accuracies, cfg.tier_plateau_windows, cfg.tier_min_improvement):
        return "plateau"
    return None


@dataclass(frozen=True)
class TierTransition:
    """One tier change, as the ledger records it."""

    from_tier: str
    to_tier: str
    step: int
    reason: str  # "threshold" or "plateau"
    rolling_accuracy: float  # accuracy of the window that decided
    windows: int  # accuracy windows measured on the tier being left

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TierScheduler:
    """Walks the tiers of ``cfg`` in order, fed with graded completions; see :func:`tier_move`.

    The only state is what was observed (outcomes not yet forming a full window, and the tier's window
    accuracies); every decision is :func:`tier_move` over it, so the scheduler can be rebuilt on resume
    from the recorded transitions with ``start_tier``.
    """

    def __init__(self, cfg: CurriculumParams | None = None, *, start_tier: str | None = None) -> None:
        self.cfg = cfg or CurriculumParams()
        tier = start_tier if start_tier is not None else self.cfg.tiers[0]
        if tier not in self.cfg.tiers:
            raise ValueError(f"start_tier {tier!r} is not one of the curriculum tiers {list(self.cfg.tiers)}")
        self.tier = tier
        self.window_accuracies: list[float] = []
        self.transitions: list[TierTransition] = []
        self._pending: list[bool] = []

    @property
    def is_last(self) -> bool:
        return self.tier == self.cfg.tiers[-1]

    @property
    def rolling_accuracy(self) -> float | None:
        """Accuracy of the current tier's last full window; None before the first one."""
        return self.window_accuracies[-1] if self.window_accuracies else None

    def observe(self, step: int, correct: Sequence[bool | float]) -> TierTransition | None:
        """Add graded completions of the current tier (1/True right, 0/False wrong) seen at ``step``.

        Returns the transition when this observation finishes the tier (the new tier starts with no
        history); None otherwise, and always None on the last tier.
        """
        for c in correct:
            self._pending.append(bool(c))
            w = self.cfg.accuracy_window
            if len(self._pending) >= w:
                self.window_accuracies.append(sum(self._pending[:w]) / w)
                del self._pending[:w]
        if self.is_last:
            return None
        reason = tier_move(self.window_accuracies, self.cfg)
        if reason is None:
            return None
        nxt = self.cfg.tiers[self.cfg.tiers.index(self.tier) + 1]
        t = TierTransition(self.tier, nxt, step, reason, self.window_accuracies[-1], len(self.window_accuracies))
        self.transitions.append(t)
        self.tier = nxt
        self.window_accuracies, self._pending = [], []
        return t


# --------------------------------------------------------------------------------------------------
# Explore / verify
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """Sampling settings of one segment: ``"explore"`` (wider) or ``"verify"`` (conservative)."""

    name: str
    temperature: float
    num_generations: int


def explore_verify_phase(segment: int, cfg: CurriculumParams) -> Phase:
    """The phase of ``segment`` (0-based epoch or trainer segment): explore first, then verify, cycling.

    With ``explore_segments = 2`` and ``verify_segments = 1``: E E V E E V ...
    """
    if segment < 0:
        raise ValueError(f"segment must be >= 0, got {segment}")
    if segment % (cfg.explore_segments + cfg.verify_segments) < cfg.explore_segments:
        return Phase("explore", cfg.explore_temperature, cfg.explore_generations)
    return Phase("verify", cfg.verify_temperature, cfg.verify_generations)


# --------------------------------------------------------------------------------------------------
# Stop criteria
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingHistory:
    """What the stop criteria look at: steps done, seconds spent, per-step mean rewards, and the
    evaluation scores of each evaluation window (oldest first)."""

    step: int
    elapsed_s: float = 0.0
    rewards: Sequence[float] = ()
    eval_scores: Sequence[float] = ()


@dataclass(frozen=True)
class StopDecision:
    """Why training stops (one of :data:`STOP_REASONS`), with the numbers that decided, for the ledger."""

    reason: str
    step: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_decision(history: TrainingHistory, cfg: CurriculumParams) -> StopDecision | None:
    """The first stop criterion that holds, or None to go on.

    Budgets come first (they are promises to the operator); plateau and reward stability are judged
    only from ``cfg.min_steps`` on. ``plateau``: the last ``plateau_windows`` evaluation scores did not
    beat the best earlier one by ``stop_min_improvement``. ``reward_stable``: the population variance
    of the last ``reward_window`` step rewards is below ``reward_variance`` and the reward no longer
    rises: the mean of the window's second half is less than ``stop_min_improvement`` above its first.
    """
    h, step = history, history.step
    if cfg.max_steps and step >= cfg.max_steps:
        return StopDecision("step_budget", step, f"{step} steps reached the budget of {cfg.max_steps}")
    if cfg.max_seconds and h.elapsed_s >= cfg.max_seconds:
        return StopDecision("time_budget", step, f"{h.elapsed_s:.0f} s reached the budget of {cfg.max_seconds:.0f} s")
    if step < cfg.min_steps:
        return None
    scores = list(h.eval_scores)
    if plateaued(scores, cfg.plateau_windows, cfg.stop_min_improvement):
        best_before = max(scores[: -cfg.plateau_windows])
        best_after = max(scores[-cfg.plateau_windows :])
        return StopDecision(
            "plateau", step,
            f"best evaluation score of the last {cfg.plateau_windows} windows {best_after:.4f} vs "
            f"{best_before:.4f} before: less than {cfg.stop_min_improvement} better",
        )
    rewards = [r for r in h.rewards[-cfg.reward_window :] if math.isfinite(r)]
    if cfg.reward_variance > 0 and len(h.rewards) >= cfg.reward_window and len(rewards) == cfg.reward_window:
        var = statistics.pvariance(rewards)
        half = max(1, len(rewards) // 2)
        rise = statistics.fmean(rewards[-half:]) - statistics.fmean(rewards[:half])
        # Low variance alone is not convergence: the per-step mean reward varies little even while it
        # climbs (variance 0.009 over 20 steps of a tiny model whose reward was still rising).
        if var < cfg.reward_variance and rise < cfg.stop_min_improvement:
            return StopDecision(
                "reward_stable", step,
                f"reward variance {var:.4f} over the last {cfg.reward_window} steps < {cfg.reward_variance}, "
                f"and no longer rising (second half {rise:+.4f} on the first, under {cfg.stop_min_improvement})",
            )
    return None
