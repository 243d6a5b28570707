"""The selection split: held-out GSM-lite problems the curriculum chooses between models on, apart from the gates'.

Kept out of ``gsm_lite.py`` on purpose: that file is part of the demo model's recipe hash
(:func:`pr1d.demo.recipe_key`), and a split used only to choose between trained models shapes no base model.
"""

from __future__ import annotations

import random

from .gsm_lite import EVAL_SEED, TIERS, Task, eval_split, generate_task

# The fixed split's largest prefix any stage reads (the backtest's and the gates' n_per_tier stay under it).
GATE_SPLIT_MAX = 500


def selection_split(n_per_tier: int = 50) -> list[Task]:
    """Held-out problems for *choosing* between models inside the curriculum, apart from the gate's split.

    The rl stage keeps its RL candidate only when it beats its starting model on held-out problems; were
    those the fixed split's, the gate (which scores the same split) would judge a choice made on its own
    data. These are drawn from another seed of the same held-out rule, minus every question of the fixed
    split's first :data:`GATE_SPLIT_MAX` per tier (a few easy ones coincide), ids prefixed ``select-``.
    """
    taken = {t["question"] for t in eval_split(GATE_SPLIT_MAX)}
    tasks: list[Task] = []
    for tier in TIERS:
        rng = random.Random(f"gsm-lite/select/{EVAL_SEED}/{tier}")
        seen: set[str] = set()
        while len(seen) < n_per_tier:
            task = generate_task(rng, tier, "eval", f"select-{tier}-{len(seen):04d}")
            if task["question"] in seen or task["question"] in taken:
                continue
            seen.add(task["question"])
            tasks.append(task)
    return tasks


