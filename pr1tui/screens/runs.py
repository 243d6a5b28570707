"""Runs page: every run, newest first, filtered by the daemon, paged by keyset as you scroll, live states."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from pr1d.pipeline.plans import PLANS

from ..widgets.filter_bar import FilterBar, RunFilter
from ..widgets.format import DASH, cell, fmt_ts, one_line, state_text
from .base import Pr1Screen

# 500 rows fill any terminal many times over and come back from the daemon in a few ms; the next page
# is asked for when the cursor gets within PREFETCH rows of the end, so scrolling never hits a wall.
PAGE_SIZE = 500
PREFETCH = 100
SORTABLE = ("id", "agent", "kind", "state", "created")
KINDS = tuple(PLANS)


def _sort_value(value: object) -> object:
    # Cells hold ints, strs and rich Text; compare Text by its plain string.
    return value.plain if isinstance(value, Text) else value


class RunsScreen(Pr1Screen):
    PAGE = "runs"
    AUTO_FOCUS = "#runs"
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("enter", "open", "Open", show=False),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("t", "trigger", "Trigger"),
        Binding("c", "cancel", "Cancel"),
        Binding("G", "bottom", "Oldest loaded", show=False),
        Binding("g", "top", "Newest", show=False),
        Binding("escape", "back", "Clear filter / back", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = RunFilter()
        self.rows: dict[int, dict] = {}
        self.oldest_id: int | None = None
        self.exhausted = False
        self.paging = False
        self.sort_key, self.sort_reverse = "id", True

    def compose_body(self) -> ComposeResult:
        bar = FilterBar(kinds=KINDS, id="filter")
        bar.display = False
        yield bar
        yield Static(id="runs-info", classes="info")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#filter", FilterBar).cursor_blink = not self.app.stable
        table = self.query_one("#runs", DataTable)
        # Fixed widths for every column a live event can change: DataTable re-measures a whole column
        # when an auto-width cell shrinks, which costs O(rows) per update and froze the UI in bursts.
        for key, label, width in (("id", "id", 6), ("agent", "agent", None), ("kind", "kind", 12),
                                  ("state", "state", 17), ("stage", "stage", 10), ("created", "created", 11),
                                  ("by", "by", None), ("reason", "reason", 60)):
            table.add_column(label, key=key, width=width)
        super().on_mount()

    # -- data -------------------------------------------------------------------------------------
    def load(self) -> None:
        self._fetch(before_id=None)

    @work(exclusive=True, group="runs")
    async def _fetch(self, before_id: int | None) -> None:
        """The first page (before_id None: replaces the table) or the next older page (appends)."""
        flt = self.filter
        self.paging = True
        try:
            page = await self.app.api.call("runs.list", limit=PAGE_SIZE, before_id=before_id, **flt.as_params())
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.app.report_error(e, "listing runs")
            return
        finally:
            self.paging = False
        if flt != self.filter:
            return  # the filter changed while we waited; that fetch is already on its way
        table = self.query_one("#runs", DataTable)
        if before_id is None:
            keep = self.current_run()
            table.clear()
            self.rows.clear()
        else:
            keep = None
        for run in page:
            if run["id"] in self.rows:
                continue
            self.rows[run["id"]] = run
            table.add_row(*self._cells(run), key=str(run["id"]))
        if page:
            low = page[-1]["id"]
            self.oldest_id = low if self.oldest_id is None or before_id is None else min(self.oldest_id, low)
        elif before_id is None:
            self.oldest_id = None
        self.exhausted = len(page) < PAGE_SIZE
        if self.sort_key != "id" or not self.sort_reverse:
            self._sort()
        if keep is not None and keep in self.rows:
            table.move_cursor(row=table.get_row_index(str(keep)))
        self._info()
        self.loaded = True

    def _cells(self, run: dict) -> list:
        # Plain str/int cells where no colour is needed: they are not tracked by the garbage collector.
        return [
            run["id"], cell(run.get("agent_id") or "?"), cell(run.get("kind") or "?"), state_text(run.get("state")),
            cell(run["current_stage"]) if run.get("current_stage") else DASH,
            fmt_ts(run.get("created_at"), self.app.utc, short=True), cell(run.get("created_by") or ""),
            cell(one_line(run.get("reason"), 60)),
        ]

    def apply_events(self, events: list[dict]) -> None:
        if not self.loaded:
            return
        table = self.query_one("#runs", DataTable)
        added = False
        newest = max(self.rows) if self.rows else 0
        for ev in events:
            topic = ev.get("topic")
            run_id = ev.get("run")
            if topic == "run" and isinstance(run_id, int):
                row = self.rows.get(run_id)
                if row is not None:
                    row.update(state=ev.get("state"), reason=ev.get("reason"))
                    key = str(run_id)
                    table.update_cell(key, "state", state_text(row["state"]))
                    table.update_cell(key, "reason", cell(one_line(row["reason"], 60)))
                    if row["state"] not in ("running", "queued", "interrupted"):
                        row["current_stage"] = None
                        table.update_cell(key, "stage", DASH)
                elif run_id > newest:
                    # A run created after our first page: it belongs on top, if the filter wants it.
                    row = {"id": run_id, "agent_id": ev.get("agent"), "kind": ev.get("kind"),
                           "state": ev.get("state"), "reason": ev.get("reason"), "created_by": ev.get("actor"),
                           "created_at": time.time(), "current_stage": None}
                    if self.filter.matches(row):
                        self.rows[run_id] = row
                        table.add_row(*self._cells(row), key=str(run_id))
                        newest = run_id
                        added = True
            elif topic == "stage" and run_id in self.rows and ev.get("state") == "running":
                self.rows[run_id]["current_stage"] = ev.get("stage")
                table.update_cell(str(run_id), "stage", cell(ev.get("stage") or ""))
        if added:
            self._sort()
            self._info()

    # -- sorting ----------------------------------------------------------------------------------
    def _sort(self) -> None:
        table = self.query_one("#runs", DataTable)
        keep = self.current_run()
        column = self.sort_key
        # Ties (same agent, same state...) fall back to newest first, as the daemon lists them.
        table.sort(column, "id", key=lambda vals: (_sort_value(vals[0]), vals[1]), reverse=self.sort_reverse)
        if keep is not None:
            table.move_cursor(row=table.get_row_index(str(keep)), scroll=True)

    def action_sort(self) -> None:
        self.sort_key = SORTABLE[(SORTABLE.index(self.sort_key) + 1) % len(SORTABLE)]
        self.sort_reverse = self.sort_key in ("id", "created")  # newest first reads best for times
        self._sort()
        self._info()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sort()
        self._info()

    @on(DataTable.HeaderSelected, "#runs")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key not in SORTABLE:
            return
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, key in ("id", "created")
        self._sort()
        self._info()

    def _info(self) -> None:
        more = "end of history" if self.exhausted else "scroll down for older runs"
        arrow = "↓" if self.sort_reverse else "↑"
        self.query_one("#runs-info", Static).update(Text.assemble(
            ("filter ", "dim"), (self.filter.describe(), "bold" if self.filter else "dim"),
            ("  ·  ", "dim"), f"{len(self.rows)} runs loaded", ("  ·  ", "dim"), (more, "dim"),
            ("  ·  ", "dim"), f"sort {self.sort_key} {arrow}",
        ))

    # -- paging -----------------------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = event.data_table
        if (not self.exhausted and not self.paging and self.loaded and self.oldest_id is not None
                and event.cursor_row >= table.row_count - PREFETCH):
            self._fetch(before_id=self.oldest_id)

    # -- actions ----------------------------------------------------------------------------------
    def current_run(self) -> int | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        return int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def set_filter(self, flt: RunFilter) -> None:
        self.filter = flt
        self.exhausted, self.oldest_id = False, None
        if self.is_mounted:  # not yet mounted: on_mount loads with this filter
            self._info()
            if self.app.connected:
                self.load()

    @on(FilterBar.Applied)
    def _filter_applied(self, event: FilterBar.Applied) -> None:
        self.set_filter(event.filter)

    def action_filter(self) -> None:
        self.query_one("#filter", FilterBar).open(self.filter)

    def action_bottom(self) -> None:
        self.query_one("#runs", DataTable).action_scroll_bottom()  # the highlight there loads the next page

    def action_top(self) -> None:
        self.query_one("#runs", DataTable).action_scroll_top()

    def action_back(self) -> None:
        if self.filter:
            self.set_filter(RunFilter())
        else:
            self.app.switch_mode("dashboard")

    @on(DataTable.RowSelected, "#runs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        run = self.current_run()
        if run is not None:
            self.app.open_run(run)

    def action_trigger(self) -> None:
        run = self.rows.get(self.current_run() or 0)
        self.app.ask_trigger(run["agent_id"] if run else self.filter.agent)

    def action_cancel(self) -> None:
        run = self.rows.get(self.current_run() or 0)
        if run is not None:
            self.app.ask_cancel(run)
