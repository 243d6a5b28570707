"""The run and stage life cycles: the one place that says which state changes are legal."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    queued = "queued"
    running = "running"
    interrupted = "interrupted"  # daemon stopped mid-stage; resumes from the stage's last checkpoint
    awaiting_approval = "awaiting_approval"
    succeeded = "succeeded"  # finished with nothing to approve (diagnostic kinds such as `sleep`)
    promoted = "promoted"
    rejected = "rejected"
    failed = "failed"
    cancelled = "cancelled"
    rolled_back = "rolled_back"


class StageState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    interrupted = "interrupted"
    cancelled = "cancelled"
    # Never started because its run ended first (a gate rejected it, it failed or was cancelled).
    skipped = "skipped"


R = RunState
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    R.queued: frozenset({R.running, R.cancelled}),
    # running -> rejected: a gate (SFT uplift, promotion gate) said no; running -> queued never happens.
    R.running: frozenset({R.awaiting_approval, R.succeeded, R.rejected, R.failed, R.cancelled, R.interrupted}),
    R.interrupted: frozenset({R.queued, R.running, R.cancelled, R.failed}),
    # awaiting_approval -> rejected covers both a person's "no" and an expired approval.
    R.awaiting_approval: frozenset({R.promoted, R.rejected, R.cancelled}),
    R.promoted: frozenset({R.rolled_back}),
    R.rolled_back: frozenset(),
    R.succeeded: frozenset(),
    R.rejected: frozenset(),
    R.failed: frozenset(),
    R.cancelled: frozenset(),
}

# States in which a run holds its agent: no second run may be created for that agent meanwhile.
ACTIVE_RUN_STATES = frozenset({R.queued, R.running, R.interrupted, R.awaiting_approval})
TERMINAL_RUN_STATES = frozenset(s for s, nxt in RUN_TRANSITIONS.items() if not nxt) | {R.promoted}

S = StageState
STAGE_TRANSITIONS: dict[StageState, frozenset[StageState]] = {
    S.pending: frozenset({S.running, S.cancelled, S.skipped}),
    S.running: frozenset({S.succeeded, S.failed, S.interrupted, S.cancelled}),
    S.interrupted: frozenset({S.running, S.cancelled, S.failed}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
    S.skipped: frozenset(),
}

# A run ending in one of these leaves no later stage to run: its pending stages become `skipped` in
# the same transaction. (awaiting_approval and succeeded come only after every stage succeeded.)
RUN_ENDS_SKIPPING_STAGES = frozenset({R.rejected, R.failed, R.cancelled})


class IllegalTransition(Exception):
    """Raised for a state change the life cycle does not allow; the ledger is left untouched."""

    def __init__(self, what: str, ident: object, src: str, dst: str):
        super().__init__(f"{what} {ident}: cannot go from {src} to {dst}")
        self.src, self.dst = src, dst


def check_run_transition(run_id: object, src: str, dst: str) -> None:
    if RunState(dst) not in RUN_TRANSITIONS[RunState(src)]:
        raise IllegalTransition("run", run_id, src, dst)


def check_stage_transition(stage_id: object, src: str, dst: str) -> None:
    if StageState(dst) not in STAGE_TRANSITIONS[StageState(src)]:
        raise IllegalTransition("stage", stage_id, src, dst)
