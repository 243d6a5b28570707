"""The weighted grading function shared by the RL reward and the backtest: one completion -> one Grade.

Parallel-R1's plan says "reuse the existing scoring as reward signal": the number a candidate is
rewarded with during GRPO and the numbers the backtest reports come from the same function. The
promotion gate compares only the ``correctness`` column (what the platform scores) and holds the parallel
columns as bounds: a sequential model in service can never earn ``parallel_format`` or
``consensus_confidence`` (see pr1d/evaluate/gate.py). Pure Python, no torch: the daemon may import it too.

Columns (each in [0, 1]; the score is their weighted mean, weights normalised to sum to 1)
------------------------------------------------------------------------------------------------
* ``correctness`` -- 1 when the completion's final answer has the expected value, else 0. The final
  answer is the ``Final Answer:`` line *outside every block*
  (:func:`pr1d.data.parallel_format.extract_final_answer`, tolerant of bad format), so an answer
  written inside a path of a truncated completion never counts. Values are compared as numbers with
  :func:`pr1d.evaluate.gsm_lite.check_answer` (``"$1,234."`` equals ``"1234"``); when the expected
  answer is not a number, as case-insensitive text.
* ``parallel_format`` -- 1 when the whole text is valid Parallel format (final answer included) and
  holds at least one ``<Parallel>`` block, else 0. A sequential answer scores 0 here on purpose: this
  column is what rewards thinking in parallel at all.
* ``consensus_confidence`` -- the share of the *last* block's paths (the block the answer follows
  from; earlier blocks may solve sub-steps) whose answer (:func:`~pr1d.data.parallel_format.path_answer`,
  the last number of the path) equals the final answer read the same way. 0 when there is no valid
  block or no final answer: no evidence is no confidence.
* ``compliance`` -- 1 when every compliance check below passed, else 0.

Compliance checks (named, so the backtest can count each and the gate can report which failed)
---------------------------------------------------------------------------------------------
* ``final_answer_present`` -- a ``Final Answer:`` line outside every block, with something on it.
* ``finished`` -- the model stopped by itself (emitted EOS), not cut off by the token budget.
* ``no_guardrail_violation`` -- none of the configured guardrail phrases occurs in the text
  (case-insensitive substring match).
* ``well_formed`` -- the block structure has no format error
  (``parse(text, require_final_answer=False)``; a missing answer is ``final_answer_present``'s
  business, so the two checks never fail for the same reason).
* ``critic_agrees`` -- only when ``critic_agree`` is given: the platform's critic agreed with the
  final answer (the backtest's verification-consistency check).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pr1d.data.parallel_format import (
    FormatError,
    ParallelBlock,
    Solution,
    clean_answer,
    extract_final_answer,
    parse,
    path_answer,
    path_diversity,
)
from pr1d.evaluate.gsm_lite import check_answer

__all__ = ["COLUMNS", "COMPLIANCE_CHECKS", "Grade", "GradeWeights", "answers_match", "consensus_confidence", "grade"]

COLUMNS = ("correctness", "parallel_format", "consensus_confidence", "compliance")
# Always run; "critic_agrees" is added only when a critic verdict is passed in.
COMPLIANCE_CHECKS = ("final_answer_present", "finished", "no_guardrail_violation", "well_formed")


class GradeWeights(BaseModel):
    """Weights of the grading columns (`[rewards.grading]`); normalised to sum to 1 when grading."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    correctness: float = Field(0.7, ge=0.0, description="Weight of answer correctness (1 right / 0 wrong).")
    parallel_format: float = Field(
        0.1, ge=0.0, description="Weight of 'valid Parallel format with at least one <Parallel> block' (1/0)."
    )
    consensus_confidence: float = Field(
        0.1, ge=0.0,
        description="Weight of the share of the last block's paths that reach the final answer (0 without a block).",
    )
    compliance: float = Field(
        0.1, ge=0.0,
        description="Weight of 'every compliance check passed' (answer present, finished, no guardrail "
        "phrase, well formed; critic agrees when a critic verdict is given).",
    )

    @model_validator(mode="after")
    def _positive_total(self) -> GradeWeights:
        total = sum(getattr(self, c) for c in COLUMNS)
        if not math.isfinite(total) or total <= 0:
            raise ValueError(
                "the grading weights must be finite and sum to more than 0 (they are normalised to sum to 1); "
                f"got {', '.join(f'{c}={getattr(self, c)}' for c in COLUMNS)} -- set at least one above 0"
            )
        return self

    def normalised(self) -> dict[str, float]:
        """``{column: weight / sum of weights}``: what :func:`grade` multiplies the columns by."""
        total = sum(getattr(self, c) for c in COLUMNS)
        return {c: getattr(self, c) / total for c in COLUMNS}


_DEFAULT_WEIGHTS = GradeWeights()


@dataclass(frozen=True)
class Grade:
    """One completion's grade: the weighted ``score`` in [0, 1] and everything it was made of.

    ``columns`` maps each of :data:`COLUMNS` to its value in [0, 1]; ``compliance`` maps each check
    that ran to its outcome; ``path_diversity`` is the mean
    :func:`~pr1d.data.parallel_format.path_diversity` over the valid blocks (None without one);
    ``n_paths`` the number of paths over all valid blocks; ``final_answer`` the answer that was graded.
    """

    score: float
    columns: dict[str, float]
    compliance: dict[str, bool]
    path_diversity: float | None
    n_paths: int
    final_answer: str | None = None
    weights: dict[str, float] = field(default_factory=dict, repr=False)  # the normalised weights used

    @property
    def compliance_ok(self) -> bool:
        """Every compliance check that ran passed."""
        return all(self.compliance.values())

    def to_dict(self) -> dict:
        """JSON-friendly form (what the backtest stores per item)."""
        return {
            "score": self.score,
            "columns": dict(self.columns),
            "compliance": dict(self.compliance),
            "compliance_ok": self.compliance_ok,
            "path_diversity": self.path_diversity,
            "n_paths": self.n_paths,
            "final_answer": self.final_answer,
        }


def answers_match(got: str | None, expected: str) -> bool:
    """True when answer ``got`` has the value ``expected``: numerically, or as text for a non-number."""
    if got is None:
        return False
    if check_answer(got, expected):
        return True
    if check_answer(expected, expected):
        return False  # the expected answer is a number and ``got`` is not that number
    return clean_answer(got).casefold() == clean_answer(str(expected)).casefold()


def consensus_confidence(completion: str) -> float:
    """The ``consensus_confidence`` column of ``completion`` alone (see the module docstring)."""
    solution = _structure(completion)
    return _consensus_confidence(solution.blocks if solution else (), extract_final_answer(completion))


def _consensus_confidence(blocks: Sequence[ParallelBlock], final: str | None,
                          agrees: Callable[[str, str], bool] | None = None) -> float:
    if not blocks or final is None:
        return 0.0
    if agrees is not None:
        last = blocks[-1].paths
        return sum(agrees(p, final) for p in last) / len(last)
    target = path_answer(final)
    if target is None:
        return 0.0
    last = blocks[-1].paths
    return sum(path_answer(p) == target for p in last) / len(last)


def _structure(text: str) -> Solution | None:
    try:
        return parse(text, require_final_answer=False)
    except FormatError:
        return None


def grade(
    completion: str,
    answer: str,
    *,
    weights: GradeWeights | None = None,
    finished: bool = True,
    critic_agree: bool | None = None,
    guardrails: Sequence[str] = (),
    correct: bool | None = None,
    path_agrees: Callable[[str, str], bool] | None = None,
) -> Grade:
    """Grade ``completion`` against the expected ``answer`` (see the module docstring for each column).

    ``finished`` is False when the completion was cut off by the token budget; ``critic_agree`` is the
    critic's verdict on the final answer when one was asked (None: no critic check);
    ``guardrails`` are phrases that must never appear (matched case-insensitively).
    For a task family with its own grader (pr1d.tasks): ``correct`` is the grader's verdict on the final answer
    (it replaces the match with ``answer``), ``path_agrees(path, final)`` says whether a path reaches the final
    answer (default: the last numbers are equal).
    """
    w = (weights or _DEFAULT_WEIGHTS).normalised()
    final = extract_final_answer(completion)
    solution = _structure(completion)
    blocks = solution.blocks if solution is not None else ()

    lowered = completion.casefold()
    checks: dict[str, bool] = {
        "final_answer_present": final is not None,
        "finished": bool(finished),
        "no_guardrail_violation": not any(g and g.casefold() in lowered for g in guardrails),
        "well_formed": solution is not None,
    }
    if critic_agree is not None:
        checks["critic_agrees"] = bool(critic_agree)

    # Strictly valid (answer line included) and at least one block: a structure-only parse is not enough.
    strict_ok = solution is not None and solution.final_answer is not None
    columns = {
        "correctness": 1.0 if (answers_match(final, answer) if correct is None else correct) else 0.0,
        "parallel_format": 1.0 if strict_ok and blocks else 0.0,
        "consensus_confidence": _consensus_confidence(blocks, final, path_agrees),
        "compliance": 1.0 if all(checks.values()) else 0.0,
    }
    score = sum(w[c] * columns[c] for c in COLUMNS)
    diversity = sum(path_diversity(b.paths) for b in blocks) / len(blocks) if blocks else None
    return Grade(
        score=min(1.0, max(0.0, score)),  # float rounding of the weighted sum must not leave [0, 1]
        columns=columns,
        compliance=checks,
        path_diversity=diversity,
        n_paths=sum(len(b.paths) for b in blocks),
        final_answer=final,
        weights=w,
    )
