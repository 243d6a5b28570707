"""ParallelExecutionPolicy: how an agent runs Parallel-R1 inference (branches, sampling, token budgets).

This is the object pushed to an agent's profile on promotion and the one the forked rollout engine
(:mod:`pr1d.inference.forked`) takes. It is pure Python (no torch) so that the daemon, the registry and the
clients can build, validate and serialise it. The wire form is :meth:`ParallelExecutionPolicy.to_dict`;
:meth:`ParallelExecutionPolicy.from_dict` is strict (unknown keys and wrong types are refused with a
message that says what was expected), because a typo in a pushed profile must not silently fall back
to a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["MAX_BRANCH_COUNT", "ParallelExecutionPolicy", "PolicyError", "min_block_tokens", "sized_to_traces"]

# A guard against typos ("branch_count": 40 instead of 4): every branch is a row of the decode batch,
# so memory and time grow linearly with it; Parallel-R1 itself uses 2-4.
MAX_BRANCH_COUNT = 16


class PolicyError(ValueError):
    """A policy value (or a policy dict) that cannot be used; the message says how to fix it."""


def min_block_tokens(branch_count: int) -> int:
    """Fewest new tokens one Parallel block can take: each path and the summary need >= 1 content token.

    ``<Parallel>`` + k × (``<Path>`` x ``</Path>``) + ``<Summary>`` x ``</Summary>`` + ``</Parallel>``
    = 3k + 5. The engine does not open a block when fewer tokens than this are left in the budget.
    """
    return 3 * branch_count + 5


@dataclass(frozen=True)
class ParallelExecutionPolicy:
    """Branch count, sampling and token budgets of Parallel-R1 inference; validated on construction."""

    branch_count: int = field(
        default=2,
        metadata={
            "help": "paths forked at each <Parallel> (>= 2, at most MAX_BRANCH_COUNT); each path is one "
            "row of the decode batch"
        },
    )
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "sampling temperature (>= 0); 0 is greedy decoding, which makes every path of a block "
            "identical, so use > 0 when the paths should explore"
        },
    )
    top_p: float = field(
        default=0.95, metadata={"help": "nucleus sampling mass in (0, 1]; 1 keeps the whole distribution"}
    )
    max_path_tokens: int = field(
        default=64,
        metadata={"help": "content tokens one path may generate; a path still open then is closed with </Path>"},
    )
    max_parallel_blocks: int = field(
        default=2,
        metadata={
            "help": "Parallel blocks per answer (0: never fork); once reached, <Parallel> is suppressed"
        },
    )
    max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "total new tokens of one answer, every path, tag and the summary included (EOS excluded); "
            "a block is never opened unless it fits"
        },
    )
    summary_max_tokens: int = field(
        default=48,
        metadata={"help": "content tokens of one <Summary>; a summary still open then is closed"},
    )

    def __post_init__(self) -> None:
        for name in ("branch_count", "max_path_tokens", "max_parallel_blocks", "max_new_tokens", "summary_max_tokens"):
            value = getattr(self, name)
            # bool is an int subclass: `true` in a JSON profile must not read as 1.
            if not isinstance(value, int) or isinstance(value, bool):
                raise PolicyError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise PolicyError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 2 <= self.branch_count <= MAX_BRANCH_COUNT:
            raise PolicyError(
                f"branch_count is {self.branch_count}; a Parallel block needs at least 2 paths and at most "
                f"{MAX_BRANCH_COUNT}: set branch_count between 2 and {MAX_BRANCH_COUNT} (Parallel-R1 uses 2-4)"
            )
        if self.temperature < 0:
            raise PolicyError(f"temperature is {self.temperature}; use 0 for greedy decoding or a value > 0 to sample")
        if not 0 < self.top_p <= 1:
            raise PolicyError(f"top_p is {self.top_p}; use a value in (0, 1] (1 disables nucleus filtering)")
        if self.max_path_tokens < 1:
            raise PolicyError(f"max_path_tokens is {self.max_path_tokens}; a path needs at least 1 token: use >= 1")
        if self.summary_max_tokens < 1:
            raise PolicyError(
                f"summary_max_tokens is {self.summary_max_tokens}; a summary needs at least 1 token: use >= 1"
            )
        if self.max_parallel_blocks < 0:
            raise PolicyError(
                f"max_parallel_blocks is {self.max_parallel_blocks}; use 0 (never fork) or a positive count"
            )
        if self.max_new_tokens < 1:
            raise PolicyError(f"max_new_tokens is {self.max_new_tokens}; use >= 1")
        need = min_block_tokens(self.branch_count)
        if self.max_parallel_blocks > 0 and self.max_new_tokens < need:
            raise PolicyError(
                f"max_new_tokens is {self.max_new_tokens} but one block of {self.branch_count} paths needs at "
                f"least {need} tokens; raise max_new_tokens to >= {need}, lower branch_count, or set "
                "max_parallel_blocks to 0"
            )

    @property
    def greedy(self) -> bool:
        """Temperature 0: argmax decoding, no randomness (every path of a block is then the same)."""
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        """The wire form (JSON-ready, every field present): what a profile push carries as ``policy``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelExecutionPolicy:
        """Build from a wire dict; missing keys take the defaults, unknown keys raise :class:`PolicyError`."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy is a mapping of field names to values, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise PolicyError(
                f"unknown policy key(s) {', '.join(unknown)}; expected only: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ParallelExecutionPolicy:
        """A copy with ``changes`` applied (validated again), e.g. ``policy.replace(temperature=0)``."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise PolicyError(f"unknown policy field(s) {', '.join(unknown)}")
        return replace(self, **changes)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's help text, for CLI ``--help`` and docs."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


def sized_to_traces(
    longest_path: int, longest_summary: int, longest_answer: int, *, headroom: float = 1.25,
    base: ParallelExecutionPolicy | None = None,
) -> ParallelExecutionPolicy:
    """The policy a candidate ships with: ``base`` (the default) with every token budget raised, where it is too
    small, to ``headroom`` times the longest path, summary and answer (in tokens) of the traces it was trained on.

    A budget below what the model was taught to write cuts its answers: with the default 64-token paths every hard
    store-catalogue path (74 tokens) was closed mid-sentence in the backtest, and the gate read the unfinished
    answers as a compliance drop. Budgets are only raised, never lowered, so a family of short answers keeps the
    default's room to think."""
    base = base or ParallelExecutionPolicy()
    if headroom < 1:
        raise PolicyError(f"headroom is {headroom}; use >= 1 (1.25 leaves a quarter more than the longest trace)")
    path = max(base.max_path_tokens, math.ceil(longest_path * headroom))
    summary = max(base.summary_max_tokens, math.ceil(longest_summary * headroom))
    # the whole answer: the longest trace with headroom, and never less than one block of full paths can take
    answer = max(base.max_new_tokens, math.ceil(longest_answer * headroom),
                 min_block_tokens(base.branch_count) + base.branch_count * path + summary)
    return replace(base, max_path_tokens=path, summary_max_tokens=summary, max_new_tokens=answer)
