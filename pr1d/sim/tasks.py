"""GSM-lite-style arithmetic word problems for the simulator, and the answer checks its critic uses.

`make_task` is the one place a task is made, so a real generator (pr1d.evaluate.gsm_lite, written
separately) can replace it without touching the platform: it only needs the same
``(rng, tier) -> {question, answer, transcript, tier}`` shape.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pr1d.data.parallel_format import normalize_number

TIERS = ("easy", "medium", "hard")

_NAMES = (
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena",
    "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera", "Wen", "Yusuf",
)  # fmt: skip
_ITEMS = (
    "apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards", "stamps",
    "cookies", "beads", "seeds",
)  # fmt: skip
_ADD = ("buys {n} more", "finds {n} more", "gets {n} more from a friend", "picks up {n} more")
_SUB = ("gives {n} to a friend", "loses {n}", "sells {n}", "uses {n}")
_MUL = {2: "doubles the pile", 3: "triples the pile"}

# Operand range for addition and subtraction (the brief: two-digit numbers, so every step is a
# realistic one-line calculation for a small model).
_LO, _HI = 10, 99
# Multiplication only while the running total stays small enough to read at a glance.
_MUL_LIMIT = 150


def make_task(rng: random.Random, tier: str) -> dict[str, Any]:
    """One GSM-lite word problem for ``tier`` (pr1d.evaluate.gsm_lite, the training split: no held-out
    arithmetic, so the gradebook never leaks evaluation facts into SFT data). Returns
    ``{question, answer, transcript, tier, steps}``; the transcript is the left-to-right solution
    ending in ``Final Answer: <answer>``."""
    from pr1d.evaluate.gsm_lite import generate_task, render_sequential

    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r} (expected one of {', '.join(TIERS)})")
    task = generate_task(rng, tier, "train", task_id="sim")
    return {"question": task["question"], "answer": task["answer"], "transcript": render_sequential(task),
            "tier": tier, "steps": task["steps"]}


_FINAL = re.compile(r"final answer\s*:\s*([^\n]*)", re.IGNORECASE)


def normalize_answer(answer: Any) -> str | None:
    """The canonical numeric string of an answer (``"$1,234.0"`` -> ``"1234"``), or None when it is
    not a number. A full transcript is accepted: the text after its last ``Final Answer:`` counts
    (case-insensitive, as a lenient grader reads it). The number itself must be the whole answer and is
    canonicalised by the one shared rule, :func:`pr1d.data.parallel_format.normalize_number`."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | float):
        text = repr(answer)
    elif isinstance(answer, str):
        text = answer
    else:
        return None
    finals = _FINAL.findall(text)
    if finals:
        text = finals[-1]  # the last "Final Answer:" wins, as graders read it
    text = text.strip().splitlines()[0] if text.strip() else ""
    return normalize_number(text)


def wrong_answer(answer: str, salt: int) -> str:
    """A deterministic plausible wrong answer (an off-by-a-few slip), for evaluations graded incorrect."""
    return str(int(answer) + 1 + salt % 9)
