"""Approvals page: the queue of runs awaiting a person's decision, each with its gate checklist."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from ..widgets.format import fmt_ts, one_line
from ..widgets.gate import GateReport
from .base import Pr1Screen


class ApprovalsScreen(Pr1Screen):
    PAGE = "approvals"
    AUTO_FOCUS = "#approvals"
    BINDINGS = [
        Binding("a", "approve", "Approve"),
        Binding("x", "reject", "Reject"),
        Binding("enter", "open", "Open", show=False),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queue: dict[int, dict] = {}

    def compose_body(self) -> ComposeResult:
        yield Static(id="approvals-info", classes="info")
        yield DataTable(id="approvals", cursor_type="row", zebra_stripes=True)
        yield Label("Gate checklist", classes="section", id="gate-title")
        yield GateReport(id="gate", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#approvals", DataTable).add_columns("run", "agent", "kind", "waiting since", "reason")
        super().on_mount()

    # -- data -------------------------------------------------------------------------------------
    @work(exclusive=True, group="load")
    async def load(self) -> None:
        try:
            runs = await self.app.api.call("runs.list", state="awaiting_approval", limit=1000)
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.app.report_error(e, "listing approvals")
            return
        self.queue = {r["id"]: r for r in runs}
        self._render_queue()
        self.loaded = True

    @work(group="one")
    async def _add(self, run_id: int) -> None:
        # The run event says a run now awaits approval; its gate report comes only with the run row.
        try:
            run = await self.app.api.call("runs.show", run=run_id)
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, f"reading run {run_id}")
            return
        if run.get("state") == "awaiting_approval":
            self.queue[run_id] = run
            self._render_queue()

    def apply_events(self, events: list[dict]) -> None:
        if not self.loaded:
            return
        removed = False
        for ev in events:
            if ev.get("topic") != "run" or not isinstance(ev.get("run"), int):
                continue
            run_id = ev["run"]
            if ev.get("state") == "awaiting_approval" and run_id not in self.queue:
                self._add(run_id)
            elif ev.get("state") != "awaiting_approval" and run_id in self.queue:
                del self.queue[run_id]
                removed = True
        if removed:
            self._render_queue()

    def _render_queue(self) -> None:
        table = self.query_one("#approvals", DataTable)
        keep = self.current_run()
        table.clear()
        for run_id in sorted(self.queue):  # oldest first: the longest waiting is decided first
            r = self.queue[run_id]
            table.add_row(run_id, r.get("agent_id", "?"), r.get("kind", "?"),
                          fmt_ts(r.get("finished_at") or r.get("updated_at"), self.app.utc, short=True),
                          one_line(r.get("reason"), 60), key=str(run_id))
        if keep in self.queue:
            table.move_cursor(row=table.get_row_index(str(keep)))
        n = len(self.queue)
        self.query_one("#approvals-info", Static).update(
            f"{n} run{'s' if n != 1 else ''} awaiting approval" if n else "nothing awaits approval")
        self._show_gate()

    def _show_gate(self) -> None:
        run = self.queue.get(self.current_run() or 0)
        self.query_one("#gate-title", Label).update(f"Gate checklist — run {run['id']}" if run else "Gate checklist")
        self.query_one("#gate", GateReport).gate = run.get("gate") if run else None

    @on(DataTable.RowHighlighted, "#approvals")
    def _highlighted(self) -> None:
        self._show_gate()

    # -- actions ----------------------------------------------------------------------------------
    def current_run(self) -> int | None:
        table = self.query_one("#approvals", DataTable)
        if not table.row_count:
            return None
        return int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _selected_run(self) -> dict | None:
        run = self.queue.get(self.current_run() or 0)
        if run is None:
            self.notify("no run selected: nothing awaits approval", severity="warning")
        return run

    def action_approve(self) -> None:
        run = self._selected_run()
        if run:
            self.app.ask_approve(run)

    def action_reject(self) -> None:
        run = self._selected_run()
        if run:
            self.app.ask_reject(run)

    @on(DataTable.RowSelected, "#approvals")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        run = self.current_run()
        if run is not None:
            self.app.open_run(run)

    def action_back(self) -> None:
        self.app.switch_mode("dashboard")
