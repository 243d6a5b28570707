"""Which stages each run kind executes, in order, and whether this build has them."""

from __future__ import annotations

import importlib.util

# The curriculum per trigger kind (design brief, issue entry-criteria table). Stage names are
# modules under pr1d.stages. `sleep` and `noop` exercise the stage frame itself.
PLANS: dict[str, tuple[str, ...]] = {
    "sft": ("dataset", "sft", "sft_gate", "backtest", "gate"),
    "targeted-sft": ("dataset", "sft", "sft_gate", "backtest", "gate"),
    "rl": ("rl", "backtest", "gate"),
    "full": ("dataset", "sft", "sft_gate", "rl", "backtest", "gate"),
    "dataset": ("dataset",),  # build (and version) a training dataset on demand, nothing to approve
    # Evaluate and gate a candidate made elsewhere (params.candidate) against the model in service.
    "backtest": ("backtest", "gate"),
    "sleep": ("sleep",),
    "noop": ("noop",),
}


class UnknownPlan(ValueError):
    pass


def stage_available(name: str) -> bool:
    # find_spec on a submodule imports only the light pr1d.stages package, never the stage itself.
    return importlib.util.find_spec(f"pr1d.stages.{name}") is not None


def plan_for(kind: str) -> tuple[str, ...]:
    """The stage list for a kind; raises UnknownPlan when the kind is unknown or a stage is missing."""
    stages = PLANS.get(kind)
    if stages is None:
        raise UnknownPlan(f"unknown run kind {kind!r}; known: {', '.join(sorted(PLANS))}")
    missing = [s for s in stages if not stage_available(s)]
    if missing:
        raise UnknownPlan(
            f"run kind {kind!r} needs stage(s) {', '.join(missing)}, which this pr1d build does not have yet"
        )
    return stages
