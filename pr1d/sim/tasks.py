"""GSM-lite-style arithmetic word problems for the simulator, and the answer checks its critic uses.

`make_task` is the one place a task is made, so a real generator (pr1d.evaluate.gsm_lite, written
separately) can replace it without touching the platform: it only needs the same
``(rng, tier) -> {question, answer, transcript, tier}`` shape.
"""

from __future__ import annotations

import random
import re
from typing import Any

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
    """One word problem for ``tier``: easy = one operation, medium = two, hard = three or four plus a
    distractor quantity. Returns ``{question, answer, transcript, tier}`` with ``answer`` the exact
    integer as a string and a step-by-step ``transcript`` ending in ``Final Answer: <answer>``."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r} (expected one of {', '.join(TIERS)})")
    n_ops = {"easy": 1, "medium": 2, "hard": rng.choice((3, 4))}[tier]
    name = rng.choice(_NAMES)
    items = rng.choice(_ITEMS)
    start = value = rng.randint(_LO, _HI)
    steps: list[str] = []  # phrases for the question
    lines = [f"{name} starts with {value} {items}."]
    for k in range(n_ops):
        ops = ["add"]
        if value >= _LO:
            ops.append("sub")
        if k > 0 and value <= _MUL_LIMIT:  # the first step is always +/- so easy tasks stay pure add/sub
            ops.append("mul")
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(_LO, _HI)
            steps.append(rng.choice(_ADD).format(n=n))
            lines.append(f"{value} + {n} = {value + n}")
            value += n
        elif op == "sub":
            n = rng.randint(_LO, min(_HI, value))
            steps.append(rng.choice(_SUB).format(n=n))
            lines.append(f"{value} - {n} = {value - n}")
            value -= n
        else:
            f = rng.choice((2, 3))
            steps.append(_MUL[f])
            lines.append(f"{value} * {f} = {value * f}")
            value *= f
    if n_ops == 1:
        question = f"{name} has {start} {items} and {steps[0]}. How many {items} does {name} have now?"
    else:
        parts = [f"{name} has {start} {items}."]
        if tier == "hard":
            friend = rng.choice([n for n in _NAMES if n != name])
            distractor = rng.randint(_LO, _HI)
            parts.append(f"{friend} has {distractor} {items}.")
            lines.insert(1, f"{friend}'s {distractor} {items} do not change how many {name} has.")
        connectors = ["First,", "Then", "Next,", "Finally,"]
        for k, phrase in enumerate(steps):
            conn = connectors[k] if k < len(steps) - 1 else "Finally,"
            parts.append(f"{conn} {name} {phrase}.")
        parts.append(f"How many {items} does {name} have now?")
        question = " ".join(parts)
    answer = str(value)
    lines.append(f"Final Answer: {answer}")
    return {"question": question, "answer": answer, "transcript": "\n".join(lines), "tier": tier}


_FINAL = re.compile(r"final answer\s*:\s*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$")


def normalize_answer(answer: Any) -> str | None:
    """The canonical numeric string of an answer (``"$1,234.0"`` -> ``"1234"``), or None when it is
    not a number. A full transcript is accepted: the text after its last ``Final Answer:`` counts."""
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
    text = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return str(int(value)) if value.is_integer() else repr(value)


def wrong_answer(answer: str, salt: int) -> str:
    """A deterministic plausible wrong answer (an off-by-a-few slip), for evaluations graded incorrect."""
    return str(int(answer) + 1 + salt % 9)
