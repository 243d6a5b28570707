"""The task contract: a task is its prompt (with retrieved KB context), an optional reference answer and a grader.

Every consumer of tasks (the dataset builder, the RL reward, the backtest, the gates) reads tasks through
this module, whatever the family: two-digit arithmetic (GSM-lite), questions answered from the knowledge
base, or whatever the platform grades. Pure Python, no torch, no I/O of its own: the critic grader is handed
a client (:class:`pr1d.train.critic.CriticClient` or anything with its ``verify``).

Graders
-------
* ``exact`` -- the answer equals the reference after normalisation (case, whitespace, surrounding
  punctuation and quotes, a leading article; numbers compared as numbers, so ``"$1,234."`` is ``"1234"``).
* ``numeric`` -- both are numbers and equal within ``tolerance`` (absolute); a non-number fails.
* ``critic`` -- the platform's critic (``POST /v1/critic/verify``) agrees with the answer. No reference
  needed. Batched: :meth:`Grader.grade_many` sends one request for the batch (the client de-duplicates
  and caches). An outage is a verdict with ``unavailable=True`` (not passed), never an exception.
* ``rubric`` -- named checks on the answer text (``contains``, ``not_contains``, ``regex``,
  ``max_words``, ``min_words``, ``matches_reference``); it passes when the share of checks passed is at
  least ``pass_share`` (default: all of them).

The answer a grader sees is a completion's final answer (:func:`final_answer`) or a path's answer
(:func:`path_answer`); each Parallel path is graded on its own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pr1d.data import parallel_format as pf

__all__ = [
    "DROP_REASONS",
    "CriticGrader",
    "DropReason",
    "ExactMatch",
    "Grader",
    "GraderSpec",
    "NumericMatch",
    "Rubric",
    "Task",
    "Verdict",
    "final_answer",
    "format_prompt",
    "grader_from_spec",
    "normalise_text",
    "path_answer",
    "same_answer",
]

DROP_REASONS = (
    "unparseable_transcript",
    "wrong_answer",
    "too_few_strategies",
    "format_invalid",
    "paths_identical",
    "paths_disagree",
    "duplicate",
    "teacher_error",
    # Targeted SFT only (pr1d.data.targeted): a failing task the gradebook holds no transcript for, and a
    # task whose recovered answer the platform's critic did not confirm.
    "not_in_gradebook",
    "unverified",
    # Any family: an entry whose family no configured family handles (reported, never dropped in silence),
    # and a path the family's grader rejected or could not grade (the critic was down).
    "unknown_family",
    "path_rejected",
    "grader_unavailable",
)


class DropReason(Exception):
    """An entry or record that cannot be used; ``code`` is one of :data:`DROP_REASONS`."""

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {code!r}")
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


def format_prompt(question: str, context: str = "") -> str:
    """What the model is shown for a task: retrieved context (if any), a blank line, then the question.

    The one prompt shape of every family (GSM-lite's ``format_prompt`` is this without context), so a model
    trained on one family reads another's prompts the same way.
    """
    prompt = f"Question: {question}\nAnswer:\n"
    return context.rstrip() + "\n\n" + prompt if context.strip() else prompt


@dataclass(frozen=True)
class Task:
    """One task of a family. ``reference`` is None when only the grader knows what is right (the critic)."""

    id: str
    family: str
    question: str
    reference: str | None = None
    tier: str = ""
    context: str = ""  # retrieved KB context, shown before the question
    meta: Mapping[str, Any] = field(default_factory=dict)

    def prompt(self) -> str:
        return format_prompt(self.question, self.context)

    def with_context(self, context: str) -> Task:
        return Task(self.id, self.family, self.question, self.reference, self.tier, context, self.meta)


@dataclass(frozen=True)
class Verdict:
    """A grader's verdict on one answer: ``passed``, a ``score`` in [0, 1], the named ``checks`` behind it.

    ``unavailable`` is True when the grader could not decide (the critic was unreachable): not passed, and
    callers that must not count an outage as a wrong answer (the dataset builder, the backtest) tell it apart.
    """

    passed: bool
    score: float
    checks: Mapping[str, bool] = field(default_factory=dict)
    reason: str = ""
    unavailable: bool = False


class Grader(Protocol):
    kind: str
    needs_reference: bool

    def grade_many(self, items: Sequence[tuple[Task, str | None]]) -> list[Verdict]:
        """One verdict per ``(task, answer)``; ``answer`` None (no answer found) never passes."""
        ...


# -- reading answers ----------------------------------------------------------------------------------------

_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)
_EDGE = " \t\n\"'`“”‘’.,;:!?()[]{}*_"
_PATH_PREFIX = re.compile(
    r"^(?:so\s+)?(?:the\s+)?(?:final\s+)?(?:answer|result)\s*(?:is|=|:)\s*", re.IGNORECASE
)


def normalise_text(text: str) -> str:
    """Text as the ``exact`` grader compares it: NFKC, case-folded, whitespace collapsed, surrounding
    punctuation and quotes and a leading article removed (``" The Cedar Stool."`` → ``"cedar stool"``)."""
    t = " ".join(unicodedata.normalize("NFKC", text).split()).strip(_EDGE)
    return _ARTICLE.sub("", t).strip(_EDGE).casefold()


def final_answer(completion: str) -> str | None:
    """The answer on the last ``Final Answer:`` line outside every block, or None."""
    return pf.extract_final_answer(completion)


def path_answer(path_text: str) -> str | None:
    """What one path concludes: its last non-empty line, with a leading "So the answer is" / "Answer:" taken
    off (``"...\\nSo the answer is Lyon."`` → ``"Lyon"``); None for an empty path."""
    lines = [ln.strip() for ln in path_text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = _PATH_PREFIX.sub("", lines[-1])
    return pf.clean_answer(last) or None


def _number(text: str) -> Decimal | None:
    n = pf.normalize_number(text)
    if n is None:
        return None
    try:
        return Decimal(n)
    except InvalidOperation:
        return None


def same_answer(a: str | None, b: str | None) -> bool:
    """Two answers say the same thing: equal as numbers when ``b`` is one, else equal as normalised text."""
    if a is None or b is None:
        return False
    want = _number(b)
    return _number(a) == want if want is not None else normalise_text(a) == normalise_text(b)


# -- graders ------------------------------------------------------------------------------------------------


def _no_answer() -> Verdict:
    return Verdict(False, 0.0, {}, "no answer")


class ExactMatch:
    """Normalised match with the reference; numbers compare as numbers."""

    kind = "exact"
    needs_reference = True

    def grade_one(self, task: Task, answer: str | None) -> Verdict:
        if answer is None:
            return _no_answer()
        if task.reference is None:
            raise ValueError(f"task {task.id}: the exact grader needs a reference answer")
        ok = same_answer(answer, task.reference)
        return Verdict(ok, float(ok), {"matches_reference": ok}, "" if ok else f"{answer!r} is not {task.reference!r}")

    def grade_many(self, items: Sequence[tuple[Task, str | None]]) -> list[Verdict]:
        return [self.grade_one(t, a) for t, a in items]


class NumericMatch:
    """Both numbers, equal within ``tolerance``."""

    kind = "numeric"
    needs_reference = True

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = Decimal(str(tolerance))

    def grade_one(self, task: Task, answer: str | None) -> Verdict:
        if answer is None:
            return _no_answer()
        want = _number(task.reference or "")
        if want is None:
            raise ValueError(f"task {task.id}: the numeric grader needs a numeric reference, got {task.reference!r}")
        got = _number(answer)
        ok = got is not None and abs(got - want) <= self.tolerance
        reason = "" if ok else (f"{answer!r} is not a number" if got is None else f"{got} is not {want}")
        return Verdict(ok, float(ok), {"numeric_match": ok}, reason)

    def grade_many(self, items: Sequence[tuple[Task, str | None]]) -> list[Verdict]:
        return [self.grade_one(t, a) for t, a in items]


class CriticGrader:
    """The platform's critic decides; ``client.verify([(question, answer), ...])`` returns a result with
    ``.agree`` (and ``.confidence``) or None (outage) per item, as :class:`pr1d.train.critic.CriticClient` does."""

    kind = "critic"
    needs_reference = False

    def __init__(self, client: Any) -> None:
        self.client = client

    def grade_many(self, items: Sequence[tuple[Task, str | None]]) -> list[Verdict]:
        asked = [(i, t.question, a) for i, (t, a) in enumerate(items) if a is not None]
        results = self.client.verify([(q, a) for _, q, a in asked]) if asked else []
        out: list[Verdict] = [_no_answer() for _ in items]
        for (i, _, _), r in zip(asked, results, strict=True):
            if r is None:
                why = getattr(self.client, "last_error", None) or "the critic did not answer"
                out[i] = Verdict(False, 0.0, {}, f"critic unavailable: {why}", unavailable=True)
            else:
                agree = bool(r.agree)
                out[i] = Verdict(agree, float(agree), {"critic_agrees": agree}, "" if agree else "the critic disagrees")
        return out


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="What the check is called in verdicts and reports.")
    kind: Literal["contains", "not_contains", "regex", "max_words", "min_words", "matches_reference"]
    terms: tuple[str, ...] = Field((), description="contains: all of these (case-insensitive); not_contains: none.")
    pattern: str = Field("", description="regex: must match somewhere in the answer (re.search).")
    words: int = Field(0, ge=0, description="max_words / min_words: the bound.")


class Rubric:
    """Named checks on the answer; passes when at least ``pass_share`` of them pass."""

    kind = "rubric"

    def __init__(self, checks: Sequence[_Check], pass_share: float = 1.0) -> None:
        if not checks:
            raise ValueError("a rubric needs at least one check")
        names = [c.name for c in checks]
        if len(set(names)) != len(names):
            raise ValueError(f"rubric check names must be unique, got {names}")
        self.checks = tuple(checks)
        self.pass_share = pass_share
        self.needs_reference = any(c.kind == "matches_reference" for c in checks)
        self._regex = {c.name: re.compile(c.pattern) for c in checks if c.kind == "regex"}

    def _run(self, check: _Check, task: Task, answer: str) -> bool:
        low = answer.casefold()
        if check.kind == "contains":
            return all(t.casefold() in low for t in check.terms)
        if check.kind == "not_contains":
            return not any(t.casefold() in low for t in check.terms)
        if check.kind == "regex":
            return self._regex[check.name].search(answer) is not None
        if check.kind == "max_words":
            return len(answer.split()) <= check.words
        if check.kind == "min_words":
            return len(answer.split()) >= check.words
        return ExactMatch().grade_one(task, answer).passed  # matches_reference

    def grade_many(self, items: Sequence[tuple[Task, str | None]]) -> list[Verdict]:
        out = []
        for task, answer in items:
            if answer is None:
                out.append(_no_answer())
                continue
            results = {c.name: self._run(c, task, answer) for c in self.checks}
            share = sum(results.values()) / len(results)
            failed = [n for n, ok in results.items() if not ok]
            out.append(Verdict(share >= self.pass_share, share, results, f"failed: {', '.join(failed)}" if failed else ""))
        return out


# -- configuration ------------------------------------------------------------------------------------------


class _ExactSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["exact"]


class _NumericSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["numeric"]
    tolerance: float = Field(0.0, ge=0.0, description="Absolute tolerance.")


class _CriticSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["critic"]


class _RubricSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["rubric"]
    checks: tuple[_Check, ...] = Field(min_length=1)
    pass_share: float = Field(1.0, gt=0.0, le=1.0, description="Share of checks that must pass.")


GraderSpec = Annotated[_ExactSpec | _NumericSpec | _CriticSpec | _RubricSpec, Field(discriminator="kind")]
_SPEC = TypeAdapter(GraderSpec)


def grader_from_spec(spec: Mapping[str, Any] | BaseModel, *, critic: Any = None, where: str = "grader") -> Grader:
    """The grader a config block describes (``{"kind": "exact"}``, ``{"kind": "rubric", "checks": [...]}``, ...).

    A malformed block raises ValueError naming ``where`` and the field; a critic grader without a ``critic``
    client raises ValueError too (the caller has no scoring endpoint configured).
    """
    try:
        parsed = spec if isinstance(spec, BaseModel) else _SPEC.validate_python(dict(spec))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'kind'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{where}: {problems}") from None
    if isinstance(parsed, _ExactSpec):
        return ExactMatch()
    if isinstance(parsed, _NumericSpec):
        return NumericMatch(parsed.tolerance)
    if isinstance(parsed, _RubricSpec):
        return Rubric(parsed.checks, parsed.pass_share)
    if critic is None:
        raise ValueError(f"{where}: the critic grader needs the platform's critic ([scoring] base_url)")
    return CriticGrader(critic)
