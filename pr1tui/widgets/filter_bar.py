"""The `/` filter bar and its little query language: `agent:a1 state:running kind:sleep`.

Bare words are classified: a run state name filters by state, a run kind by kind, anything else by
agent — so `/ failed` and `/ a1` do what an operator expects. Filters are applied by the daemon
(runs.list takes agent, state and kind), so they stay exact over any number of runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

from .format import RUN_STATES

FILTER_KEYS = ("agent", "state", "kind")


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class RunFilter:
    agent: str | None = None
    state: str | None = None
    kind: str | None = None

    def as_params(self) -> dict[str, str]:
        return {k: v for k, v in (("agent", self.agent), ("state", self.state), ("kind", self.kind)) if v}

    def matches(self, run: dict) -> bool:
        """Whether a run (or a run event, which carries agent/kind/state) passes this filter."""
        agent = run.get("agent_id", run.get("agent"))
        return ((self.agent is None or agent == self.agent) and (self.state is None or run.get("state") == self.state)
                and (self.kind is None or run.get("kind") == self.kind))

    def describe(self) -> str:
        return " ".join(f"{k}:{v}" for k, v in self.as_params().items()) or "none"

    def __bool__(self) -> bool:
        return bool(self.as_params())


def parse_filter(text: str, kinds: tuple[str, ...] = ()) -> RunFilter:
    """Parse the filter bar's text; raises FilterError with a message fit for a notification."""
    found: dict[str, str] = {}
    for tok in text.split():
        if ":" in tok:
            key, _, value = tok.partition(":")
            key = key.lower()
            if key not in FILTER_KEYS:
                raise FilterError(f"unknown filter key {key!r}; use {', '.join(k + ':' for k in FILTER_KEYS)}")
            if not value:
                raise FilterError(f"{key}: needs a value, e.g. {key}:{'a1' if key == 'agent' else 'running'}")
        elif tok in RUN_STATES:
            key, value = "state", tok
        elif tok in kinds:
            key, value = "kind", tok
        else:
            key, value = "agent", tok
        if key == "state" and value not in RUN_STATES:
            raise FilterError(f"unknown state {value!r}; one of {', '.join(RUN_STATES)}")
        if key in found and found[key] != value:
            raise FilterError(f"two values for {key}: {found[key]} and {value}")
        found[key] = value
    return RunFilter(**found)


class FilterBar(Input):
    """Hidden until `/`; enter applies, escape closes (and keeps the current filter)."""

    BINDINGS = [Binding("escape", "close", "Close filter")]

    class Applied(Message):
        def __init__(self, flt: RunFilter):
            super().__init__()
            self.filter = flt

    def __init__(self, kinds: tuple[str, ...] = (), **kw):
        kw.setdefault("placeholder", "agent:a1 state:running kind:sleep   (enter applies, empty clears, esc closes)")
        kw.setdefault("compact", True)
        super().__init__(**kw)
        self.kinds = kinds

    def open(self, current: RunFilter) -> None:
        self.value = "" if not current else current.describe()
        self.display = True
        self.focus()

    def action_close(self) -> None:
        self.display = False
        self.screen.focus_next()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            flt = parse_filter(event.value, self.kinds)
        except FilterError as e:
            self.notify(str(e), title="Filter", severity="error")
            return
        self.post_message(self.Applied(flt))
        self.action_close()
