"""GSM-lite: the deterministic grade-school word-problem benchmark, its splits, solutions and answer checker.

Pure Python on purpose (no torch, no numpy): the daemon, the simulated platform and the stage workers all
import it, and the daemon must stay free of the training stack.

The arithmetic world
--------------------
Every quantity in a question and every intermediate result of the left-to-right solution lies in
``[LOW, HIGH] = [10, 99]``; the only operations are ``+`` and ``-``, with no carrying and no borrowing
(``34 + 52`` yes, ``37 + 55`` no). Why: the benchmark exists so that a tiny (~1M parameter) model can be
pretrained on a shared two-core CPU in minutes and then improved by the curriculum. Such a model learns
place-value arithmetic (each digit from the two digits above it) in a few hundred steps and generalises
it to unseen facts, whereas carrying was still unlearnt after 800 steps (per-digit accuracy stuck at
~50%), and three-digit operands gave 63% on one-step problems after six minutes. The difficulty left
is the one the curriculum targets: reading the story, choosing the operations and chaining them.

The held-out rule
-----------------
Arithmetic facts are grouped in *families*: ``x + y = z``, ``y + x = z``, ``z - x = y`` and ``z - y = x``
all belong to the family ``(min(x, y), max(x, y))``. A family is held out when
``crc32("x+y") % 8 == 0`` (about one in eight). Then:

* the training split never contains a held-out family in any step of its left-to-right solution,
  nor in any path of :func:`solution_strategies`, nor in :func:`arithmetic_drills` (so no form of a
  held-out fact ever reaches training text, not even its inverse); :func:`training_facts` lists all
  the arithmetic training text may use;
* every evaluation problem needs at least one held-out family in its left-to-right solution, so the
  evaluation split measures arithmetic the model has never seen, not memorised questions. (Its
  strategy paths may use the held-out families that problem needs, and no others.)

1000 families (3960 facts) are in the domain, 129 of them held out.

Tiers
-----
``easy``: one operation. ``medium``: two operations. ``hard``: three or four operations and one
distractor sentence carrying a quantity the solution must ignore.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Iterable
from decimal import Decimal
from itertools import permutations
from pathlib import Path
from typing import Any

from pr1d.data.parallel_format import normalize_number

__all__ = [
    "EVAL_SEED",
    "HIGH",
    "LOW",
    "TIERS",
    "arithmetic_drills",
    "check_answer",
    "eval_split",
    "extract_answer",
    "fact_family",
    "facts_used",
    "format_prompt",
    "generate_task",
    "in_domain",
    "is_heldout_fact",
    "load_tasks_jsonl",
    "path_answer",
    "render_sequential",
    "solution_strategies",
    "task_terms",
    "train_split",
    "training_facts",
]

LOW, HIGH = 10, 99
TIERS = ("easy", "medium", "hard")
# Operations per tier; hard picks one of these counts uniformly.
_TIER_OPS = {"easy": (1,), "medium": (2,), "hard": (3, 4)}
# One family in eight is held out; the residue is arbitrary but fixed forever (changing it changes
# both splits, and with them every recorded accuracy).
HELDOUT_MODULUS, HELDOUT_RESIDUE = 8, 0
# The evaluation split is fixed: everyone comparing models on GSM-lite sees the same problems.
EVAL_SEED = 20_240_805
DEFAULT_TRAIN_MIX = {"easy": 0.7, "medium": 0.25, "hard": 0.05}

Task = dict[str, Any]
Fact = tuple[int, str, int, int]  # (a, op, b, result)


# --------------------------------------------------------------------------------------------------
# Arithmetic facts and the held-out rule
# --------------------------------------------------------------------------------------------------


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    raise ValueError(f"unsupported operation {op!r} (GSM-lite uses '+' and '-')")


def in_domain(a: int, op: str, b: int) -> bool:
    """True for the only arithmetic GSM-lite uses: operands and result in [LOW, HIGH], no carry or borrow."""
    if op not in ("+", "-"):
        return False
    if not all(LOW <= v <= HIGH for v in (a, b, _apply(a, op, b))):
        return False
    # Tens cannot overflow once the result is <= 99, so only the ones digits need checking.
    return a % 10 + b % 10 <= 9 if op == "+" else a % 10 >= b % 10


def fact_family(a: int, op: str, b: int) -> tuple[int, int]:
    """The addition pair ``(x, y)``, ``x <= y``, that the fact ``a op b`` is a form of.

    ``23 + 45``, ``45 + 23``, ``68 - 23`` and ``68 - 45`` all map to ``(23, 45)``: holding out the
    family hides every way of writing the fact, so an inverse form cannot leak it into training.
    """
    if op == "+":
        x, y = a, b
    elif op == "-":
        x, y = b, a - b
    else:
        raise ValueError(f"unsupported operation {op!r}")
    return (x, y) if x <= y else (y, x)


def _family_heldout(family: tuple[int, int]) -> bool:
    x, y = family
    # crc32 is stable across Python versions and processes (str hash() is salted per process).
    return zlib.crc32(f"{x}+{y}".encode()) % HELDOUT_MODULUS == HELDOUT_RESIDUE


def is_heldout_fact(a: int, op: str, b: int) -> bool:
    """True when the fact ``a op b`` belongs to a held-out family (never in training text).

    Facts outside the GSM-lite domain are never generated at all, so they are reported as not held out.
    """
    if not in_domain(a, op, b):
        return False
    return _family_heldout(fact_family(a, op, b))


_NUM = r"-?\d[\d,]*"
_FACT_RE = re.compile(rf"({_NUM})\s*([+\-−])\s*({_NUM})\s*=\s*({_NUM})")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def facts_used(path_text: str) -> list[Fact]:
    """Every ``a op b = r`` written in a solution text, in order, as ``(a, op, b, r)`` tuples.

    The result is the one *written*, so a caller can also catch wrong arithmetic (``r != a op b``).
    """
    facts = []
    for a, op, b, r in _FACT_RE.findall(path_text):
        facts.append((_int(a), "-" if op == "−" else op, _int(b), _int(r)))
    return facts


# --------------------------------------------------------------------------------------------------
# Answer extraction and checking
# --------------------------------------------------------------------------------------------------

_FINAL_RE = re.compile(r"final\s+answer\s*[:：]", re.IGNORECASE)
# Thousands separators only where they are well formed ("1,234"), so "1,2" is not read as 12.
_ANSWER_NUM_RE = re.compile(r"[-−]?\s?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _normalize_number(text: str) -> str | None:
    """First number in ``text`` as a canonical string ("1234", "-5", "3.5"), or None.

    Finding the number is this module's tolerance ("51 apples.", "**51**", "- $ 5"); its canonical form is
    the one Parallel-format rule (:func:`pr1d.data.parallel_format.normalize_number`), so a GSM-lite check
    and a path's consensus can never disagree about what "the same number" is.
    """
    match = _ANSWER_NUM_RE.search(text)
    if match is None:
        return None
    return normalize_number(match.group(0).replace(" ", ""))


def extract_answer(text: str) -> str | None:
    """The number after the *last* ``Final Answer:`` in ``text``, normalised; None when absent.

    Tolerant of formatting ("$1,234", "51 apples.", "**51**") but not of content: no marker, or a marker
    with no number on its line, gives None rather than a guess.
    """
    markers = list(_FINAL_RE.finditer(text))
    if not markers:
        return None
    rest = text[markers[-1].end() :]
    line = rest.strip().splitlines()[0] if rest.strip() else ""
    return _normalize_number(line)


def check_answer(text_or_answer: str | int | float, expected: str | int | float) -> bool:
    """True when a model output (or a bare answer) has exactly the expected value.

    A string containing ``Final Answer:`` is read with :func:`extract_answer`; anything else is taken to
    be the answer itself ("$1,234", "51", 51).
    """
    if isinstance(text_or_answer, str) and _FINAL_RE.search(text_or_answer):
        got = extract_answer(text_or_answer)
    else:
        got = _normalize_number(str(text_or_answer))
    want = _normalize_number(str(expected))
    if got is None or want is None:
        return False
    return Decimal(got) == Decimal(want)


# --------------------------------------------------------------------------------------------------
# Story material
# --------------------------------------------------------------------------------------------------

_NAMES = [
    ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Emma", "she"), ("Omar", "he"),
    ("Zoe", "she"), ("Ravi", "he"), ("Lena", "she"), ("Jack", "he"), ("Sofia", "she"), ("Kenji", "he"),
    ("Nora", "she"), ("Diego", "he"), ("Ines", "she"), ("Felix", "he"), ("Priya", "she"), ("Sam", "he"),
    ("Hana", "she"), ("Leo", "he"), ("Amara", "she"), ("Tom", "he"), ("Chloe", "she"), ("Ivan", "he"),
    ("Maya", "she"), ("Ben", "he"), ("Yara", "she"), ("Luca", "he"), ("Elif", "she"), ("Max", "he"),
]

# Item kinds decide which verbs make sense ("eats 12 marbles" would teach nonsense).
_ITEMS = {
    "food": ["apples", "cookies", "oranges", "muffins", "strawberries", "crackers", "plums"],
    "things": ["marbles", "stickers", "cards", "pencils", "stamps", "shells", "beads", "books"],
}
_GAIN = {
    "food": [
        "{P} buys {q} more {item}.", "{P} picks {q} more {item}.", "{B} gives {N} {q} {item}.",
        "{P} gets {q} more {item} from {B}.", "{P} bakes {q} more {item}.",
    ],
    "things": [
        "{P} buys {q} more {item}.", "{P} finds {q} more {item}.", "{B} gives {N} {q} {item}.",
        "{P} wins {q} {item} in a game.", "{P} gets {q} more {item} from {B}.",
    ],
}
_LOSS = {
    "food": [
        "{P} eats {q} of the {item}.", "{P} gives {q} {item} to {B}.", "{P} sells {q} {item}.",
        "{P} shares {q} {item} with {B}.", "{q} of the {item} go bad and are thrown away.",
    ],
    "things": [
        "{P} gives {q} {item} to {B}.", "{P} loses {q} {item}.", "{P} sells {q} {item}.",
        "{P} trades away {q} {item}.", "{B} borrows {q} {item} and keeps them.",
    ],
}
_STOCK_OPEN = ["{N} has {s} {item}.", "{N} starts the day with {s} {item}.", "{N} owns {s} {item}."]
_STOCK_ASK = [
    "How many {item} does {N} have now?", "How many {item} does {N} have in the end?",
    "How many {item} are left with {N}?",
]
_MONEY_OPEN = ["{N} has ${s}.", "{N} saved ${s}.", "{N} has ${s} in a piggy bank."]
_MONEY_GAIN = [
    "{P} earns ${q} for washing cars.", "{B} gives {N} ${q}.", "{P} earns ${q} walking dogs.",
    "{P} sells a toy for ${q}.", "{P} gets ${q} for a birthday.",
]
_MONEY_LOSS = [
    "{P} spends ${q} on a book.", "{P} pays ${q} for lunch.", "{P} buys a game for ${q}.",
    "{P} gives ${q} to {B}.", "{P} spends ${q} on a gift for {B}.",
]
_MONEY_ASK = ["How many dollars does {N} have now?", "How much money, in dollars, does {N} have left?"]
_STOPS = ["first", "second", "third", "fourth", "fifth"]
_BUS_OPEN = ["A bus leaves the station with {s} passengers.", "A train starts its trip with {s} people on board."]
_BUS_GAIN = ["At the {nth} stop, {q} people get on.", "{q} passengers board at the {nth} stop."]
_BUS_LOSS = ["At the {nth} stop, {q} people get off.", "{q} passengers leave at the {nth} stop."]
_BUS_ASK = ["How many passengers are on board now?", "How many people are riding after the last stop?"]
# Distractors: a quantity in the same range that no operation uses.
_DISTRACT = [
    "{B} is {d} years old.", "{N} also has {d} {other}.", "The shop is {d} meters from the park.",
    "{B} has {d} {other} at home.", "It takes {N} {d} minutes to walk to school.",
]
_BUS_DISTRACT = ["The driver has worked there for {d} months.", "The bus has {d} seats.", "The trip takes {d} minutes."]


def _names(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return rng.sample(_NAMES, n)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# --------------------------------------------------------------------------------------------------
# Problem generation
# --------------------------------------------------------------------------------------------------


# Valid second operands for each (first operand, op): the chain sampler draws from these directly.
_OPERANDS = {
    (a, op): [b for b in range(LOW, HIGH + 1) if in_domain(a, op, b)] for a in range(LOW, HIGH + 1) for op in "+-"
}


def _plan_chain(rng: random.Random, n_ops: int) -> tuple[int, list[tuple[str, int]]] | None:
    """A random start value and ``n_ops`` (op, quantity) steps whose every fact is in the domain."""
    value = rng.randint(LOW, HIGH)
    start, ops = value, []
    for _ in range(n_ops):
        choices = [op for op in ("+", "-") if _OPERANDS[value, op]]
        if not choices:
            return None
        op = rng.choice(choices)
        q = rng.choice(_OPERANDS[value, op])
        ops.append((op, q))
        value = _apply(value, op, q)
    return start, ops


def _chain_steps(start: int, ops: list[tuple[str, int]]) -> list[Fact]:
    facts, value = [], start
    for op, q in ops:
        result = _apply(value, op, q)
        facts.append((value, op, q, result))
        value = result
    return facts


def _fact_str(fact: Fact) -> str:
    a, op, b, r = fact
    return f"{a} {op} {b} = {r}"


def _story(rng: random.Random, start: int, ops: list[tuple[str, int]], distractor: int | None) -> str:
    """Render a chain as a word problem. Each kind keeps its verbs consistent with its objects."""
    n_ops = len(ops)
    if n_ops == 1:
        kinds = ["stock", "money", "bus", "compare", "relative"]
    else:
        kinds = ["stock", "money", "bus", "relative"]
    kind = rng.choice(kinds)
    people = _names(rng, n_ops + 2)
    (main, pronoun), (other_person, _) = people[0], people[1]
    fill = {"N": main, "P": _cap(pronoun), "B": other_person}
    sentences: list[str]
    other_items = [i for group in _ITEMS.values() for i in group]

    if kind == "compare":
        item = rng.choice(other_items)
        (op, q), = ops
        if op == "+":
            sentences = [
                f"{main} has {start} {item}.", f"{other_person} has {q} {item}.",
                rng.choice([f"How many {item} do they have together?",
                            f"How many {item} do {main} and {other_person} have in all?"]),
            ]
        else:
            # Compare phrasing "how many more does A have than B" is subtraction from the larger amount.
            sentences = [
                f"{main} has {start} {item}.", f"{other_person} has {q} {item}.",
                f"How many more {item} does {main} have than {other_person}?",
            ]
        item_used = item
    elif kind == "relative":
        item = rng.choice(other_items)
        item_used = item
        sentences = [f"{main} has {start} {item}."]
        previous = main
        for i, (op, q) in enumerate(ops):
            person = people[i + 1][0]
            word = "more" if op == "+" else "fewer"
            sentences.append(f"{person} has {q} {word} {item} than {previous}.")
            previous = person
        sentences.append(f"How many {item} does {previous} have?")
        # The "B" of a distractor must not be someone in the chain, or the story gets ambiguous.
        fill["B"] = people[-1][0]
    elif kind == "money":
        item_used = "dollars"
        sentences = [rng.choice(_MONEY_OPEN).format(s=start, **fill)]
        for op, q in ops:
            pool = _MONEY_GAIN if op == "+" else _MONEY_LOSS
            sentences.append(rng.choice(pool).format(q=q, **fill))
        sentences.append(rng.choice(_MONEY_ASK).format(**fill))
    elif kind == "bus":
        item_used = "passengers"
        sentences = [rng.choice(_BUS_OPEN).format(s=start)]
        for i, (op, q) in enumerate(ops):
            pool = _BUS_GAIN if op == "+" else _BUS_LOSS
            sentences.append(_cap(rng.choice(pool).format(q=q, nth=_STOPS[i])))
        sentences.append(rng.choice(_BUS_ASK))
    else:  # stock
        group = rng.choice(list(_ITEMS))
        item = rng.choice(_ITEMS[group])
        item_used = item
        sentences = [rng.choice(_STOCK_OPEN).format(s=start, item=item, **fill)]
        for op, q in ops:
            pool = _GAIN[group] if op == "+" else _LOSS[group]
            sentences.append(_cap(rng.choice(pool).format(q=q, item=item, **fill)))
        sentences.append(rng.choice(_STOCK_ASK).format(item=item, **fill))

    if distractor is not None:
        other = rng.choice([i for i in other_items if i != item_used])
        pool = _BUS_DISTRACT if kind == "bus" else _DISTRACT
        text = rng.choice(pool).format(d=distractor, other=other, **fill)
        # Anywhere after the opening sentence and before the question.
        sentences.insert(rng.randint(1, len(sentences) - 1), text)
    return " ".join(sentences)


def _heldout_count(steps: list[Fact]) -> int:
    return sum(is_heldout_fact(a, op, b) for a, op, b, _ in steps)


def generate_task(rng: random.Random, tier: str, split: str, task_id: str) -> Task:
    """One problem of ``tier`` satisfying the ``split``'s held-out rule (rejection sampling).

    ``split="train"``: no held-out family anywhere (steps and strategy paths). ``split="eval"``: at
    least one held-out family among the steps. Both: at least two solution strategies.
    """
    if tier not in _TIER_OPS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'eval'")
    while True:
        n_ops = rng.choice(_TIER_OPS[tier])
        plan = _plan_chain(rng, n_ops)
        if plan is None:
            continue
        start, ops = plan
        steps = _chain_steps(start, ops)
        heldout = _heldout_count(steps)
        if (split == "train" and heldout) or (split == "eval" and not heldout):
            continue
        distractor = None
        if tier == "hard":
            used = {start, *(q for _, q in ops), *(r for *_, r in steps)}
            distractor = rng.choice([v for v in range(LOW, HIGH + 1) if v not in used])
        task = {
            "id": task_id,
            "question": _story(rng, start, ops, distractor),
            "answer": str(steps[-1][3]),
            "tier": tier,
            "steps": [_fact_str(f) for f in steps],
        }
        # Every task must offer the dataset builder two in-competence paths.
        if len(solution_strategies(task)) >= 2:
            return task


def _tier_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    unknown = set(mix) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown tiers in mix: {sorted(unknown)}; expected {TIERS}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("tier mix must have a positive weight")
    counts = {t: int(n * mix.get(t, 0.0) / total) for t in TIERS}
    # Give the rounding remainder to the heaviest tier so the split has exactly n tasks.
    counts[max(mix, key=mix.__getitem__)] += n - sum(counts.values())
    return counts


def train_split(n: int, seed: int = 0, mix: dict[str, float] | None = None) -> list[Task]:
    """``n`` training problems, tiers drawn per ``mix`` and shuffled; deterministic by ``seed``.

    Training problems never touch a held-out arithmetic family; duplicates are allowed (it is a corpus,
    and easy problems repeat facts anyway).
    """
    rng = random.Random(f"gsm-lite/train/{seed}")
    counts = _tier_counts(n, mix or DEFAULT_TRAIN_MIX)
    tiers = [t for t in TIERS for _ in range(counts[t])]
    rng.shuffle(tiers)
    return [generate_task(rng, tier, "train", f"train-{seed}-{i}") for i, tier in enumerate(tiers)]


def eval_split(n_per_tier: int = 200, seed: int = EVAL_SEED) -> list[Task]:
    """The fixed held-out evaluation split: ``n_per_tier`` unique problems per tier, easy first.

    Each tier's list is a prefix of the same stream, so ``eval_split(50)`` is the first 50 per tier of
    ``eval_split(200)`` and a quick evaluation is comparable with a full one.
    """
    tasks: list[Task] = []
    for tier in TIERS:
        rng = random.Random(f"gsm-lite/eval/{seed}/{tier}")
        seen: set[str] = set()
        while len(seen) < n_per_tier:
            task = generate_task(rng, tier, "eval", f"eval-{tier}-{len(seen):04d}")
            if task["question"] in seen:
                continue
            seen.add(task["question"])
            tasks.append(task)
    return tasks


def training_facts() -> list[Fact]:
    """Every in-domain fact outside the held-out families: all the arithmetic training text may use."""
    facts = []
    for (a, op), operands in sorted(_OPERANDS.items()):
        facts += [(a, op, b, _apply(a, op, b)) for b in operands if not is_heldout_fact(a, op, b)]
    return facts


def arithmetic_drills(n: int, seed: int = 0, facts_per_drill: int = 8) -> list[str]:
    """``n`` drill texts of ``facts_per_drill`` training facts each, one ``a op b = r`` per line.

    Pretraining mixes these into the word problems: a fact costs ~11 tokens in a drill against ~55 in
    an easy problem, so the arithmetic gets the repetitions it needs within a minutes-long budget.
    Drills draw only from :func:`training_facts`, so they respect the held-out rule like the problems.
    """
    rng = random.Random(f"gsm-lite/drills/{seed}")
    pool = training_facts()
    return ["\n".join(_fact_str(rng.choice(pool)) for _ in range(facts_per_drill)) for _ in range(n)]


def load_tasks_jsonl(path: str | Path) -> list[Task]:
    """Tasks from a JSON-lines file of ``{"question", "answer", "tier"}`` objects (``id`` optional)."""
    tasks = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
            missing = {"question", "answer"} - set(obj)
            if missing:
                raise ValueError(f"{path}:{lineno}: missing keys {sorted(missing)}")
            tasks.append({
                "id": str(obj.get("id", f"{Path(path).stem}-{lineno}")),
                "question": str(obj["question"]),
                "answer": str(obj["answer"]),
                "tier": str(obj.get("tier", "custom")),
                "steps": list(obj.get("steps", [])),
            })
    return tasks


# --------------------------------------------------------------------------------------------------
# Prompts and solutions
# --------------------------------------------------------------------------------------------------


def format_prompt(question: str) -> str:
    """The prompt every GSM-lite consumer (pretraining, SFT, RL, evaluation) shows the model."""
    return f"Question: {question}\nAnswer:\n"


def render_sequential(task: Task) -> str:
    """The left-to-right chain of thought: one fact per line, then ``Final Answer: N``."""
    return "\n".join([*task["steps"], f"Final Answer: {task['answer']}"])


def task_terms(task: Task) -> tuple[int, list[tuple[str, int]]]:
    """``(start, [(op, quantity), ...])`` recovered from a task's left-to-right steps."""
    facts = facts_used("\n".join(task["steps"]))
    if not facts:
        raise ValueError(f"task {task.get('id')!r} has no arithmetic steps")
    return facts[0][0], [(op, b) for _, op, b, _ in facts]


def path_answer(path_text: str) -> int | None:
    """The number a strategy path concludes with (its ``So the result is N.`` line)."""
    match = re.findall(r"result is (-?\d+)", path_text)
    return int(match[-1]) if match else None


def _fold(start: int, terms: Iterable[tuple[str, int]]) -> list[Fact] | None:
    """Left-fold ``terms`` onto ``start``; None if any fact leaves the domain."""
    facts, value = [], start
    for op, q in terms:
        if not in_domain(value, op, q):
            return None
        result = _apply(value, op, q)
        facts.append((value, op, q, result))
        value = result
    return facts


def _sum_chain(values: list[int]) -> tuple[list[Fact], int] | None:
    facts = _fold(values[0], [("+", v) for v in values[1:]])
    return (facts, facts[-1][3]) if facts else None


def _candidate_paths(start: int, ops: list[tuple[str, int]]) -> list[tuple[str, list[Fact]]]:
    """Solution paths in order of preference, as (label, facts). May contain invalid (None-free) dupes."""
    answer = _chain_steps(start, ops)[-1][3]
    out: list[tuple[str, list[Fact]]] = [("left-to-right", _chain_steps(start, ops))]
    adds = [q for op, q in ops if op == "+"]
    subs = [q for op, q in ops if op == "-"]

    if len(ops) == 1:
        (op, q), = ops
        if op == "+":
            # Reordering the commutative step, then computing and checking by the inverse.
            out.append(("commuted", [(q, "+", start, answer)]))
            out.append(("check by subtraction", [(start, "+", q, answer), (answer, "-", q, start)]))
        else:
            # Check by addition first: both operands known, the usual direction. Counting up (what must
            # be added to q to reach start) asks the model for a missing addend, a less familiar form.
            out.append(("check by addition", [(start, "-", q, answer), (answer, "+", q, start)]))
            out.append(("count up", [(q, "+", answer, start)]))
        return out

    # Reorderings of the terms: take-aways first, additions first, then any other order. Any positive
    # term may lead (addition is commutative), so the start value need not come first.
    orders = [
        [("-", q) for q in subs] + [("+", q) for q in adds],
        [("+", q) for q in adds] + [("-", q) for q in subs],
    ]
    for order in orders:
        facts = _fold(start, order)
        if facts:
            out.append(("reordered", facts))
    # Regrouping: total the take-aways (or the additions) first, then apply them in one step.
    if len(subs) >= 2:
        summed = _sum_chain(subs)
        if summed:
            sub_facts, total = summed
            rest = _fold(start, [("+", q) for q in adds] + [("-", total)])
            if rest:
                out.append(("group take-aways", sub_facts + rest))
    if len(adds) >= 2:
        summed = _sum_chain(adds)
        if summed:
            add_facts, total = summed
            rest = _fold(start, [("+", total)] + [("-", q) for q in subs])
            if rest:
                out.append(("group additions", add_facts + rest))
    # Net change: gains minus losses first, when the difference stays in range.
    if adds and subs:
        g = _sum_chain(adds) if len(adds) > 1 else ([], adds[0])
        t = _sum_chain(subs) if len(subs) > 1 else ([], subs[0])
        if g and t:
            (g_facts, g_total), (t_facts, t_total) = g, t
            if g_total > t_total and in_domain(g_total, "-", t_total):
                net = g_total - t_total
                rest = _fold(start, [("+", net)])
                if rest:
                    out.append(("net change", g_facts + t_facts + [(g_total, "-", t_total, net)] + rest))
    # Remaining permutations, in a fixed order, as a last resort for variety.
    terms = [(op, q) for op, q in ops]
    for perm in permutations(range(len(terms))):
        facts = _fold(start, [terms[i] for i in perm])
        if facts:
            out.append(("reordered", facts))
    # A different leading positive term: "q + start" instead of "start + q".
    for i, (op, q) in enumerate(ops):
        if op == "+":
            facts = _fold(q, [("+", start)] + [t for j, t in enumerate(ops) if j != i])
            if facts:
                out.append(("reordered", facts))
                break
    return out


def solution_strategies(task: Task, limit: int | None = 4) -> list[str]:
    """At least two solution paths with different arithmetic, each ending ``So the result is N.``.

    Paths are plain fact lines (no ``Final Answer:``): the dataset builder wraps them in ``<Path>`` tags.
    The first path is always the left-to-right solution. Every path stays within the model's
    competence: all its facts are in the domain, and a path may only use a held-out family if the
    left-to-right solution already needs it (so training problems get no held-out fact at all).
    Paths are unique by their sequence of facts, not just by wording. At most ``limit`` paths (None: all).
    """
    start, ops = task_terms(task)
    needed = {fact_family(a, op, b) for a, op, b, _ in _chain_steps(start, ops)}
    paths, seen = [], set()
    for _label, facts in _candidate_paths(start, ops):
        key = tuple(facts)
        if key in seen:
            continue
        families = {fact_family(a, op, b) for a, op, b, _ in facts}
        if any(_family_heldout(f) for f in families - needed):
            continue
        seen.add(key)
        lines = [_fact_str(f) for f in facts]
        paths.append("\n".join([*lines, f"So the result is {task['answer']}."]))
        if limit is not None and len(paths) >= limit:
            break
    return paths
