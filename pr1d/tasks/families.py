"""Task families: how a gradebook entry of one kind of work becomes a :class:`~pr1d.tasks.contract.Task`, how
its answers are read and graded, and which families an agent serves.

A family is named by the entry's ``family`` field (the platform's task type); entries without one belong to
the profile's default family (``gsm_lite`` for the demo's platform). Two kinds:

* :class:`GsmLite` -- the internal arithmetic benchmark. Its entries are verified step by step (every fact
  line recomputed, the chain checked against the question) and its Parallel traces come from deterministic
  solution strategies, no teacher needed.
* :class:`Configured` -- any family the platform grades, described by config: its grader (exact, numeric,
  critic, rubric) and whether the graded answer itself is the reference. Its traces come from a teacher or
  from rejection sampling (pr1d.data.teacher, pr1d.data.self_sample); every path is graded on its own.

:class:`Families` maps entries to families; an entry whose family is not configured is *reported*
(``unknown_family``, with the family's name and count), never dropped in silence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pr1d.data import parallel_format as pf
from pr1d.data.gradebook import content_hash

from .contract import (
    DropReason,
    Grader,
    GraderSpec,
    NumericMatch,
    Task,
    Verdict,
    final_answer,
    grader_from_spec,
    path_answer,
)

__all__ = [
    "GSM_LITE",
    "PASS_SCORE",
    "Configured",
    "Families",
    "FamilySpec",
    "GsmLite",
    "TaskFamily",
    "entry_family",
    "family_pass_rates",
    "load_heldout",
    "load_train_tasks",
    "tier_from_pass_rate",
]

GSM_LITE = "gsm_lite"
_NAME = r"^[a-z][a-z0-9_]{0,47}$"


def entry_family(entry: Mapping[str, Any], default: str) -> str:
    """The family an entry belongs to: its ``family`` field (the platform's task type), else ``default``."""
    fam = entry.get("family")
    return str(fam).strip() if isinstance(fam, str) and fam.strip() else default


# An evaluation at or above this weighted score passed (the platform's usual pass mark; the sim's default).
PASS_SCORE = 0.7


def family_pass_rates(entries: Iterable[Mapping[str, Any]], default: str = GSM_LITE,
                      pass_score: float = PASS_SCORE) -> dict[str, float]:
    """The share of an agent's graded entries that passed, per task family."""
    seen: dict[str, list[int]] = {}
    for e in entries:
        try:
            score = float(e.get("score", 0.0))
        except (TypeError, ValueError):
            continue
        n = seen.setdefault(entry_family(e, default), [0, 0])
        n[0] += score >= pass_score
        n[1] += 1
    return {f: ok / total for f, (ok, total) in sorted(seen.items()) if total}


def tier_from_pass_rate(rate: float, tiers: Sequence[str] = ("easy", "medium", "hard")) -> str:
    """The tier of a family's untiered tasks from the agent's pass rate on it: what the agent mostly gets right is
    easy (>= 0.8), what it gets right half the time medium (>= 0.5), the rest hard. Two tiers: easy/hard at 0.5."""
    if len(tiers) == 1:
        return tiers[0]
    if len(tiers) == 2:
        return tiers[0] if rate >= 0.5 else tiers[1]
    return tiers[0] if rate >= 0.8 else tiers[1] if rate >= 0.5 else tiers[2]


class TaskFamily:
    """One kind of task. Subclasses set ``name`` and ``grader`` and implement :meth:`task_from_entry`."""

    name: str
    grader: Grader

    def task_from_entry(self, entry: Mapping[str, Any]) -> Task:
        """The task behind a (well-graded) gradebook entry; raises :class:`DropReason` when it has none."""
        raise NotImplementedError

    def read_path(self, path_text: str) -> str | None:
        """The answer one Parallel path reaches (graded on its own)."""
        return path_answer(path_text)

    def sequential(self, task: Task) -> str | None:
        """A verified single-path solution of ``task`` (the sequential control arm's record), if known."""
        return task.meta.get("transcript") if isinstance(task.meta.get("transcript"), str) else None

    def strategies(self, task: Task, branches: int) -> list[str] | None:
        """Deterministic Parallel completions, for a family that can write its own (GSM-lite); else None."""
        return None


# -- GSM-lite ----------------------------------------------------------------------------------------------

_QUESTION_NUMBER = re.compile(r"\d+")  # plain integers in the question text (not format tags)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def gsm_task_dict(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The GSM-lite task behind a gradebook entry, recovered from its transcript's fact lines.

    Raises :class:`DropReason`: ``unparseable_transcript`` (no fact lines, no ``Final Answer:``, or facts
    that do not form one chain), ``wrong_answer`` (wrong arithmetic, a final answer that is not the
    chain's result, or quantities the question does not contain).
    """
    from pr1d.evaluate import gsm_lite

    transcript = entry.get("transcript")
    question = entry.get("question")
    if not isinstance(transcript, str) or not isinstance(question, str) or not question.strip():
        raise DropReason("unparseable_transcript", "missing question or transcript")
    facts = gsm_lite.facts_used(transcript)
    if not facts:
        raise DropReason("unparseable_transcript", "no arithmetic fact lines")
    stated = gsm_lite.extract_answer(transcript)
    if stated is None:
        raise DropReason("unparseable_transcript", "no Final Answer line")
    for i, (a, op, b, r) in enumerate(facts):
        if _apply(a, op, b) != r:
            raise DropReason("wrong_answer", f"wrong arithmetic {a} {op} {b} = {r}")
        if i and a != facts[i - 1][3]:
            raise DropReason("unparseable_transcript", "fact lines do not form one chain")
    answer = str(facts[-1][3])
    if not gsm_lite.check_answer(stated, answer):
        raise DropReason("wrong_answer", f"final answer {stated} but the steps give {answer}")
    final = entry.get("final_answer")
    if final is not None and not gsm_lite.check_answer(str(final), answer):
        raise DropReason("wrong_answer", f"final_answer field {final!r} but the steps give {answer}")
    in_question = {int(n) for n in _QUESTION_NUMBER.findall(question)}
    used = {facts[0][0], *(b for _, _, b, _ in facts)}
    if not used <= in_question:
        raise DropReason("wrong_answer", f"quantities {sorted(used - in_question)} are not in the question")
    n_ops = len(facts)
    tier = entry.get("tier") or ("easy" if n_ops == 1 else "medium" if n_ops == 2 else "hard")
    return {
        "id": str(entry.get("task_id") or content_hash(dict(entry))[:16]),
        "question": question,
        "answer": answer,
        "tier": str(tier),
        "steps": [f"{a} {op} {b} = {r}" for a, op, b, r in facts],
    }


class GsmLite(TaskFamily):
    """Two-digit arithmetic word problems: numeric grading, traces from the deterministic strategies."""

    name = GSM_LITE

    def __init__(self) -> None:
        self.grader = NumericMatch()

    @staticmethod
    def to_task(d: Mapping[str, Any]) -> Task:
        return Task(str(d["id"]), GSM_LITE, str(d["question"]), str(d["answer"]), str(d.get("tier", "")),
                    meta={"steps": list(d.get("steps", []))})

    def task_from_entry(self, entry: Mapping[str, Any]) -> Task:
        return self.to_task(gsm_task_dict(entry))

    def read_path(self, path_text: str) -> str | None:
        return pf.path_answer(path_text)  # the last number: a path may end on its fact line

    def sequential(self, task: Task) -> str | None:
        return "\n".join([*task.meta["steps"], f"Final Answer: {task.reference}"])

    def strategies(self, task: Task, branches: int) -> list[str] | None:
        from pr1d.data.builder import StrategyGenerator

        return StrategyGenerator().completions({"id": task.id, "question": task.question, "answer": task.reference,
                                                "tier": task.tier, "steps": list(task.meta["steps"])}, branches)


# -- configured families -----------------------------------------------------------------------------------


class FamilySpec(BaseModel):
    """One task family an agent serves (``[tasks.families.<name>]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grader: GraderSpec = Field(description="How an answer of this family is graded: exact, numeric, critic or rubric.")
    reference_from_entry: bool = Field(
        True,
        description="The graded entry's own final answer is the reference (a well-graded answer is right). "
        "False for graders that need none (critic, rubric without matches_reference).",
    )
    tiers: tuple[str, ...] = Field(
        ("easy", "medium", "hard"),
        description="The difficulty tiers in order; an entry's `tier` must be one of them or empty (then the tier is "
        "set from the agent's measured pass rate on the family).",
    )
    min_score: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Entries of this family seed datasets from this score instead of [dataset] min_score. Lower it for "
        "a family whose grader needs no reference (critic, rubric): the agent's failed tasks are then learnt from, "
        "the teacher answering and the grader judging every path. Not allowed with reference_from_entry (a "
        "low-scored entry's answer is no reference).",
    )
    heldout: str | None = Field(
        None,
        description="Held-out tasks the SFT gate scores base and candidate on for this family: a JSON-lines file of "
        '{"question", "answer", "tier"} objects, or `builtin:kb_facts` (the store catalogue\'s held-out products). '
        "Unset: the family is judged by the backtest's gradebook replay only.",
    )
    select: str | None = Field(
        None,
        description="Tasks the RL stage's keep check scores the SFT candidate and the RL model on for this family "
        "(the selection split): a JSON-lines file like `heldout`'s, or `builtin:kb_facts` (held-out products the gate "
        "never asks about). Keep it apart from `heldout`, so the gate never scores what RL chose on. Unset: RL keeps or "
        "drops its model without looking at this family.",
    )
    train_tasks: str | None = Field(
        None,
        description="A bank of this family's training tasks the dataset stage tops up from when the gradebook holds "
        "fewer than `min_records` of them: a JSON-lines file ({\"question\", \"answer\"?, \"tier\"}) or "
        "`builtin:kb_facts` (the store catalogue's training products). Same trace source, grader and KB context as "
        "gradebook tasks; never the held-out set.",
    )
    min_records: int = Field(
        0, ge=0, description="Top the family's dataset entries up to this many from `train_tasks` (0: no top-up).")
    kb_context: bool = Field(
        True,
        description="Prompts of this family get retrieved KB context (when [kb] is configured), in datasets and "
        "backtests alike.",
    )


class Configured(TaskFamily):
    """A family described by config; tasks are the graded entries themselves."""

    def __init__(self, name: str, spec: FamilySpec, *, critic: Any = None) -> None:
        if not re.match(_NAME, name):
            raise ValueError(f"task family name {name!r}: lowercase letters, digits and '_', starting with a letter")
        self.name, self.spec = name, spec
        self.grader = grader_from_spec(spec.grader, critic=critic, where=f"[tasks.families.{name}] grader")
        if spec.select and spec.select == spec.heldout and not spec.select.startswith("builtin:"):
            raise ValueError(f"[tasks.families.{name}]: select and heldout name the same file ({spec.select}); the "
                             "gate would score the tasks RL chose its model on")
        if spec.min_records and not spec.train_tasks:
            raise ValueError(f"[tasks.families.{name}]: min_records needs train_tasks (the bank to top up from)")
        if spec.min_score is not None and spec.reference_from_entry:
            raise ValueError(f"[tasks.families.{name}]: min_score needs reference_from_entry = false (a low-scored "
                             "entry's own answer is no reference); use a critic or rubric grader")
        if self.grader.needs_reference and not spec.reference_from_entry:
            raise ValueError(f"[tasks.families.{name}]: the {self.grader.kind} grader needs a reference answer; "
                             "set reference_from_entry = true")

    def task_from_entry(self, entry: Mapping[str, Any]) -> Task:
        question = entry.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DropReason("unparseable_transcript", "missing question")
        transcript = entry.get("transcript") if isinstance(entry.get("transcript"), str) else ""
        reference = None
        if self.spec.reference_from_entry:
            raw = entry.get("final_answer")
            reference = str(raw).strip() if raw is not None and str(raw).strip() else None
            if reference is None and transcript:
                reference = final_answer(transcript)
            if reference is None:
                raise DropReason("unparseable_transcript", "no final answer to take as the reference")
        tier = entry.get("tier")
        tier = str(tier) if tier else ""
        if tier and tier not in self.spec.tiers:
            raise DropReason("unparseable_transcript", f"tier {tier!r} is not one of {list(self.spec.tiers)}")
        meta: dict[str, Any] = {}
        if transcript and pf.check(transcript) is None and not pf.parse(transcript).blocks:
            meta["transcript"] = transcript.strip()  # a valid sequential answer: the control arm's record
        return Task(str(entry.get("task_id") or content_hash(dict(entry))[:16]), self.name, question.strip(),
                    reference, tier, meta=meta)


class Families:
    """The families an agent serves, and the default for entries that name none."""

    def __init__(self, families: Iterable[TaskFamily], default: str = GSM_LITE) -> None:
        self.by_name = {f.name: f for f in families}
        if default not in self.by_name:
            raise ValueError(f"the default task family {default!r} is not configured (have: {sorted(self.by_name)})")
        self.default = default

    @classmethod
    def gsm_only(cls) -> Families:
        return cls([GsmLite()])

    @classmethod
    def from_config(cls, specs: Mapping[str, FamilySpec | Mapping[str, Any]], *, default: str = GSM_LITE,
                    critic: Any = None) -> Families:
        """GSM-lite always, plus each configured family (a bad block raises ValueError naming it)."""
        fams: list[TaskFamily] = [GsmLite()]
        for name, spec in specs.items():
            if name == GSM_LITE:
                raise ValueError(f"[tasks.families.{GSM_LITE}] is built in; configure other families")
            parsed = spec if isinstance(spec, FamilySpec) else FamilySpec.model_validate(dict(spec))
            fams.append(Configured(name, parsed, critic=critic))
        return cls(fams, default)

    def name_of(self, entry: Mapping[str, Any]) -> str:
        return entry_family(entry, self.default)

    def family(self, name: str) -> TaskFamily:
        """The family called ``name``; ValueError naming the configured ones when there is none."""
        fam = self.by_name.get(name or self.default)
        if fam is None:
            raise ValueError(f"task family {name!r} is not configured (have: {sorted(self.by_name)}); "
                             f"add [tasks.families.{name}]")
        return fam

    def grade(self, items: Sequence[tuple[str, str, str | None, str | None]]) -> list[Verdict]:
        """Verdicts for ``(family, question, reference, answer)`` items, batched per family (one critic request
        per family and call)."""
        out: list[Verdict | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (name, *_rest) in enumerate(items):
            groups.setdefault(name or self.default, []).append(i)
        for name, idxs in groups.items():
            fam = self.family(name)
            tasks = [(Task(f"item-{i}", fam.name, items[i][1], items[i][2] or None), items[i][3]) for i in idxs]
            for i, v in zip(idxs, fam.grader.grade_many(tasks), strict=True):
                out[i] = v
        return [v for v in out if v is not None]

    def for_entry(self, entry: Mapping[str, Any]) -> TaskFamily | None:
        """The entry's family, or None when it is not configured (the caller reports ``unknown_family``)."""
        return self.by_name.get(self.name_of(entry))


BUILTIN_HELDOUT = {"builtin:kb_facts"}


def load_train_tasks(ref: str) -> list[dict[str, Any]]:
    """The training-task bank a family's ``train_tasks`` names (``{"id", "question", "answer", "tier"}``; answer
    may be None in a file for a critic-graded family)."""
    if ref == "builtin:kb_facts":
        from . import kb_facts

        return [{"id": t["task_id"], "question": t["question"], "answer": t["answer"], "tier": t["tier"]}
                for t in kb_facts.train_split()]
    return load_heldout(ref, need_answer=False)


def load_heldout(ref: str, per_tier: int | None = None, *, need_answer: bool = True,
                 split: str = "eval") -> list[dict[str, Any]]:
    """The held-out tasks a family's ``heldout`` (``split="eval"``) or ``select`` (``split="select"``) names
    (``{"id", "question", "answer", "tier"}`` each), at most ``per_tier`` of each tier in file order; a built-in set
    has both splits, a file is its own. A missing file or a bad line raises ValueError naming it."""
    import json
    from pathlib import Path

    if split not in ("eval", "select"):
        raise ValueError(f"unknown held-out split {split!r}; expected 'eval' or 'select'")
    if ref == "builtin:kb_facts":
        from . import kb_facts

        raw = (kb_facts.eval_split if split == "eval" else kb_facts.select_split)(per_tier)
        return [{"id": t["task_id"], "question": t["question"], "answer": t["answer"], "tier": t["tier"]} for t in raw]
    if ref.startswith("builtin:"):
        raise ValueError(f"heldout {ref!r}: unknown built-in set (have: {', '.join(sorted(BUILTIN_HELDOUT))})")
    path = Path(ref).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"heldout {ref}: cannot read it: {e.strerror or e}") from None
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or (
                need_answer and obj.get("answer") is None):
            raise ValueError(f"{path}:{lineno}: expected an object with a string question"
                             + (" and an answer" if need_answer else ""))
        tier = str(obj.get("tier") or "custom")
        if per_tier is not None and seen.get(tier, 0) >= per_tier:
            continue
        seen[tier] = seen.get(tier, 0) + 1
        answer = obj.get("answer")
        out.append({"id": str(obj.get("id", f"{path.stem}-{lineno}")), "question": obj["question"],
                    "answer": None if answer is None else str(answer), "tier": tier})
    if not out:
        raise ValueError(f"heldout {ref}: no tasks in it")
    return out
