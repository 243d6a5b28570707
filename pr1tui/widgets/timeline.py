"""Stage timeline: one line per stage of a run with its state, attempt, duration and live progress."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from .format import STATE_GLYPH, fmt_duration, progress_text

STAGE_STYLE = {"pending": "dim", "running": "bold blue", "succeeded": "green", "failed": "bold red",
               "interrupted": "magenta", "cancelled": "dim", "skipped": "dim italic"}


def timeline_table(stages: list[dict], now: float | None = None) -> Table | Text:
    """Stages in order. The running stage's duration counts up to `now` when given (else shows `…`),
    so snapshots that pass no clock stay stable."""
    if not stages:
        return Text("no stages", style="dim italic")
    t = Table.grid(padding=(0, 1))
    t.add_column(width=1)
    t.add_column(style="bold")
    t.add_column()
    t.add_column(justify="right")
    t.add_column()
    for st in stages:
        state = st.get("state") or "pending"
        glyph = Text(STATE_GLYPH.get(state, "·"), style=STAGE_STYLE.get(state, ""))
        started, finished = st.get("started_at"), st.get("finished_at")
        if started and finished:
            took = fmt_duration(finished - started)
        elif started and state == "running":
            took = fmt_duration(now - started) if now else "…"
        else:
            took = ""
        extra = Text()
        if state == "running":
            extra = progress_text(st.get("progress"), st.get("eta_s"))
        elif st.get("error"):
            extra = Text(" ".join(str(st["error"]).split())[:120], style="red")
        elif state == "skipped":
            extra = Text("never ran: the run ended first", style="dim italic")
        if st.get("attempt", 0) > 1:
            extra.append(f"  attempt {st['attempt']}", style="dim")
        t.add_row(glyph, st.get("name", "?"), Text(state, style=STAGE_STYLE.get(state, "")), took, extra)
    return t


class StageTimeline(Static):
    """Renders `stages` (a list of ledger stage dicts); call `show(stages)` after any change."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.stages: list[dict] = []

    def show(self, stages: list[dict], now: float | None = None) -> None:
        self.stages = stages
        self.update(timeline_table(stages, now))
