"""The simulator's GSM-lite-style task generator and answer normalisation."""

from __future__ import annotations

import random
import re

import pytest

from pr1d.sim.tasks import TIERS, make_task, normalize_answer, wrong_answer

STEP = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")


def _steps(transcript: str) -> list[tuple[int, str, int, int]]:
    out = []
    for line in transcript.splitlines():
        m = STEP.match(line)
        if m:
            out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return out


@pytest.mark.parametrize("tier", TIERS)
def test_tasks_are_consistent_worked_problems(tier: str) -> None:
    ops_expected = {"easy": {1}, "medium": {2}, "hard": {3, 4}}[tier]
    for seed in range(200):
        t = make_task(random.Random(seed), tier)
        assert set(t) == {"question", "answer", "transcript", "tier", "steps"}
        assert t["tier"] == tier
        assert t["transcript"].splitlines()[-1] == f"Final Answer: {t['answer']}"
        steps = _steps(t["transcript"])
        assert len(steps) in ops_expected
        # Each step is correct arithmetic and chains from the previous one to the answer.
        for a, op, b, c in steps:
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
            if op in "+-":
                assert 10 <= b <= 99
            assert c >= 0
        for prev, nxt in zip(steps, steps[1:], strict=False):
            assert prev[3] == nxt[0]
        assert str(steps[-1][3]) == t["answer"]
        assert 10 <= steps[0][0] <= 99 and str(steps[0][0]) in t["question"]
        if tier == "hard":
            # the distractor quantity is in the story but never in the solution
            used = {n for st in steps for n in (st[0], st[2], st[3])}
            import re as _re

            assert set(map(int, _re.findall(r"\d+", t["question"].replace("$", "")))) - used


def test_easy_tasks_use_one_add_or_sub() -> None:
    ops = {_steps(make_task(random.Random(s), "easy")["transcript"])[0][1] for s in range(100)}
    assert ops == {"+", "-"}


def test_tasks_are_deterministic_per_rng_seed() -> None:
    assert make_task(random.Random(7), "hard") == make_task(random.Random(7), "hard")
    assert make_task(random.Random(7), "hard") != make_task(random.Random(8), "hard")


def test_unknown_tier_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tier 'expert'"):
        make_task(random.Random(0), "expert")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("68", "68"),
        (" 68. ", "68"),
        ("$1,234", "1234"),
        ("68.0", "68"),
        (68, "68"),
        (68.5, "68.5"),
        ("Step 1...\n23 + 45 = 68\nFinal Answer: 68", "68"),
        ("final answer: 12\nFinal Answer: 13", "13"),
        ("sixty-eight", None),
        ("", None),
        (True, None),
        (None, None),
    ],
)
def test_normalize_answer(given: object, expected: str | None) -> None:
    assert normalize_answer(given) == expected


def test_wrong_answer_is_wrong_and_deterministic() -> None:
    for salt in range(20):
        assert wrong_answer("68", salt) != "68"
        assert wrong_answer("68", salt) == wrong_answer("68", salt)
