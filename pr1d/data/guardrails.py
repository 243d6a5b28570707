"""Guardrail exemplars for targeted SFT: loaded from ``config/guardrails/*.toml``, each one checked by the dataset gate.

An exemplar is a prompt that tests one answer rule (privacy, unsafe requests, injected instructions,
the answer format, ...) with a compliant completion in the Parallel format, written by a person. Files
hold ``[[exemplar]]`` tables with exactly the keys of :data:`EXEMPLAR_KEYS`, and optionally ``forbid``::

    [[exemplar]]
    id = "privacy-phone"                  # unique across all files; the record id is guardrail:<id>
    rule = "safety-and-privacy"           # which rule it teaches (the KB note under kb/corpus/guardrails/)
    question = "Lena's phone number is 555-0142. She has 23 shells and finds 45 more. How many ...?"
    answer = "68"
    forbid = ["555-0142"]                 # optional: personal data in the question that must not be echoed
    completion = \"\"\"<Parallel><Path>23 + 45 = 68 ...</Path><Path>...</Path><Summary>...</Summary></Parallel>
    I leave the phone number out: the sum does not need it.
    Final Answer: 68\"\"\"

Loading is strict, like the config: an unknown key, a missing one, a duplicate id, or a completion the
dataset gate (:func:`pr1d.data.builder.verify_completion`) refuses stops the load with the file, the
exemplar and the reason. Each ``forbid`` string must occur in the question and not in the completion (the
backtest's ``safety`` check fails an answer that echoes one). On top of the gate, every arithmetic fact in a completion must be right, inside
GSM-lite's domain, and not a held-out fact: an exemplar must never teach arithmetic the evaluation
split keeps for itself.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pr1d.data import parallel_format as pf
from pr1d.data.builder import DropReason, verify_completion
from pr1d.evaluate import gsm_lite

__all__ = [
    "EXEMPLAR_KEYS",
    "GUARDRAIL_TIER",
    "Exemplar",
    "GuardrailError",
    "check_exemplar",
    "default_guardrails_dir",
    "guardrail_count",
    "guardrail_records",
    "load_guardrails",
    "resolve_guardrails_dir",
]

EXEMPLAR_KEYS = ("id", "rule", "question", "answer", "completion")
# Keys an exemplar may leave out. `forbid`: strings of the question (personal data) that a compliant answer
# never repeats; the backtest replays the exemplars and fails the safety check of an answer that does.
OPTIONAL_KEYS = ("forbid",)
# The tier recorded for exemplar records: they are no GSM-lite tier, and the manifest's tier counts
# should show how much of a dataset they are.
GUARDRAIL_TIER = "guardrail"
# The highest share of a dataset that may be exemplars: above it the agent's own tasks would be the
# minority and a handful of hand-written traces would be repeated many times over.
MAX_SHARE = 0.9


class GuardrailError(ValueError):
    """A guardrail file or exemplar that cannot be used; the message names the file, exemplar and reason."""


@dataclass(frozen=True)
class Exemplar:
    """One hand-written compliant trace (see the module docstring for the file format)."""

    id: str
    rule: str
    question: str
    answer: str
    completion: str
    source: str  # the file it came from, for error messages and the manifest
    paths: int = 0  # paths in its Parallel block, filled in by the check
    forbid: tuple[str, ...] = ()  # question strings an answer must not echo (the backtest's safety check)


def default_guardrails_dir() -> Path:
    """The exemplar set kept in the checkout, ``config/guardrails/`` (used when no directory is configured)."""
    return Path(__file__).resolve().parents[2] / "config" / "guardrails"


def resolve_guardrails_dir(configured: str | Path | None) -> Path:
    """``dataset.guardrails_dir`` when set, else :func:`default_guardrails_dir`."""
    return Path(configured).expanduser() if configured else default_guardrails_dir()


def check_exemplar(ex: Exemplar) -> int:
    """The number of paths of a usable exemplar; raises :class:`DropReason` saying why it is not usable."""
    if any(tag in ex.question for tag in (*pf.TAGS, pf.FINAL_ANSWER)):
        raise DropReason("format_invalid", "the question contains a Parallel tag or 'Final Answer:'")
    n_paths = verify_completion({"id": ex.id, "answer": ex.answer}, ex.completion, "parallel")
    for a, op, b, r in gsm_lite.facts_used(ex.completion):
        if (a + b if op == "+" else a - b) != r:
            raise DropReason("wrong_answer", f"wrong arithmetic {a} {op} {b} = {r}")
        if not gsm_lite.in_domain(a, op, b):
            raise DropReason("wrong_answer", f"{a} {op} {b} is outside GSM-lite's arithmetic (10-99, no carrying)")
        if gsm_lite.is_heldout_fact(a, op, b):
            raise DropReason("wrong_answer", f"{a} {op} {b} is a held-out evaluation fact")
    return n_paths


def _exemplar(table: Any, file: Path, index: int) -> Exemplar:
    where = f"{file}: exemplar #{index + 1}"
    if not isinstance(table, dict):
        raise GuardrailError(f"{where}: expected a table ([[exemplar]]), got {type(table).__name__}")
    if isinstance(table.get("id"), str) and table["id"]:
        where = f"{file}: exemplar {table['id']!r}"
    unknown = sorted(set(table) - set(EXEMPLAR_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise GuardrailError(
            f"{where}: unknown key(s) {unknown}; expected {list(EXEMPLAR_KEYS)} and optionally {list(OPTIONAL_KEYS)}"
        )
    for key in EXEMPLAR_KEYS:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise GuardrailError(f"{where}: `{key}` must be a non-empty string")
    forbid = table.get("forbid", [])
    if not isinstance(forbid, list) or not all(isinstance(f, str) and f.strip() for f in forbid):
        raise GuardrailError(f"{where}: `forbid` must be a list of non-empty strings, e.g. [\"555-0142\"]")
    for f in forbid:
        # A forbidden string is data the question gives; one the question lacks could never be echoed, and
        # one the compliant completion itself repeats would teach the very leak the check catches.
        if f.casefold() not in table["question"].casefold():
            raise GuardrailError(f"{where}: forbid {f!r} does not occur in the question")
        if f.casefold() in table["completion"].casefold():
            raise GuardrailError(f"{where}: forbid {f!r} occurs in the completion, which must not repeat it")
    ex = Exemplar(**{k: table[k] for k in EXEMPLAR_KEYS}, source=str(file), forbid=tuple(forbid))
    try:
        n_paths = check_exemplar(ex)
    except DropReason as e:
        raise GuardrailError(f"{where}: refused by the dataset gate: {e}") from None
    return Exemplar(**{k: table[k] for k in EXEMPLAR_KEYS}, source=str(file), paths=n_paths, forbid=tuple(forbid))


def load_guardrails(directory: str | Path) -> list[Exemplar]:
    """Every exemplar of ``directory/*.toml`` (files in name order), checked; raises :class:`GuardrailError`."""
    root = Path(directory)
    if not root.is_dir():
        raise GuardrailError(f"guardrail directory {root} does not exist (set dataset.guardrails_dir)")
    files = sorted(root.glob("*.toml"))
    if not files:
        raise GuardrailError(f"guardrail directory {root} holds no *.toml files")
    out: list[Exemplar] = []
    seen: dict[str, str] = {}
    for file in files:
        try:
            doc = tomllib.loads(file.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise GuardrailError(f"{file}: {e}") from None
        unknown = sorted(set(doc) - {"exemplar"})
        if unknown:
            raise GuardrailError(f"{file}: unknown top-level key(s) {unknown}; expected [[exemplar]] tables")
        tables = doc.get("exemplar", [])
        if not isinstance(tables, list) or not tables:
            raise GuardrailError(f"{file}: no [[exemplar]] tables")
        for i, table in enumerate(tables):
            ex = _exemplar(table, file, i)
            if ex.id in seen:
                raise GuardrailError(f"{file}: exemplar id {ex.id!r} is also used in {seen[ex.id]}")
            seen[ex.id] = str(file)
            out.append(ex)
    return out


def guardrail_count(task_records: int, share: float) -> int:
    """How many exemplar records make them ``share`` of a dataset that has ``task_records`` other records.

    ``ceil(task_records * share / (1 - share))``: rounded up, so any positive share of a non-empty
    dataset carries at least one exemplar. No task records, no exemplars (there is nothing to pair them
    with).
    """
    if not 0.0 <= share <= MAX_SHARE:
        raise ValueError(f"guardrail share must be in [0, {MAX_SHARE}], got {share}")
    if task_records <= 0 or share == 0.0:
        return 0
    # round() first: 3 * 0.25 / 0.75 is 1.0000000000000002 in floating point, which must stay 1.
    return math.ceil(round(task_records * share / (1.0 - share), 9))


def guardrail_records(exemplars: Sequence[Exemplar], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records from ``exemplars``: a seeded order, repeated from the start when ``n`` exceeds the set.

    Repeats get their own ids (``guardrail:<id>#2``, ``#3``, ...) so every record id stays unique. The
    record has the builder's fields; ``tier`` is :data:`GUARDRAIL_TIER`.
    """
    if n <= 0:
        return []
    if not exemplars:
        raise GuardrailError("no guardrail exemplars to draw from")
    order = sorted(exemplars, key=lambda e: e.id)
    random.Random(f"pr1-guardrails/{seed}").shuffle(order)
    out = []
    for k in range(n):
        ex = order[k % len(order)]
        copy = k // len(order) + 1
        out.append({
            "id": f"guardrail:{ex.id}" + (f"#{copy}" if copy > 1 else ""),
            "task_id": f"guardrail:{ex.id}",
            "tier": GUARDRAIL_TIER,
            "answer": ex.answer,
            "prompt": gsm_lite.format_prompt(ex.question),
            "completion": ex.completion,
            "paths": ex.paths,
            "rule": ex.rule,
        })
    return out
