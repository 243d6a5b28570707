"""Run detail page: stage timeline with live progress and ETA, metric charts, evidence, gate report,
artifacts with hashes, audit trail, and a log tail that follows the running stage."""

from __future__ import annotations

import asyncio
import json
import time

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.timer import Timer
from textual.widgets import DataTable, Label, Log, OptionList, ProgressBar, Static, TabbedContent, TabPane

from pr1d.explain import run_origin, ungraded_families
from pr1d.rpc.client import AsyncClient, DaemonUnreachable
from pr1d.rpc.schema import RpcError

from ..client import DISCONNECTED
from ..widgets.format import fmt_duration, fmt_size, fmt_ts, one_line, short_hash, state_text
from ..widgets.gate import GateReport
from ..widgets.metric_chart import MetricChart
from ..widgets.timeline import StageTimeline
from .base import Pr1Screen

CHART_REDRAW_S = 0.25  # metric events can arrive many per second; the chart redraws at most this often
LOG_LINES = 5000
# (key, tab id, footer label): free keys on this page (a, c, x, f, q and 1-4 are taken).
TAB_KEYS = (("o", "tab-overview", "Overview"), ("m", "tab-metrics", "Metrics"), ("l", "tab-logs", "Logs"),
            ("t", "tab-artifacts", "Artifacts"), ("u", "tab-audit", "Audit"))
TABS_GROUP = Binding.Group("Tabs", compact=True)


class RunDetailScreen(Pr1Screen):
    PAGE = ""
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "cancel", "Cancel"),
        Binding("a", "approve", "Approve"),
        Binding("x", "reject", "Reject"),
        Binding("f", "follow", "Follow log", show=False),
        # One key per tab (the tab bar needs a mouse or tab-focus otherwise), shown in the footer as one compact
        # group, `omltu Tabs`, so an 80-column footer still has room for approve, reject, help and quit;
        # each key's tooltip and the help page name its tab.
        *(Binding(key, f"show_tab('{tab}')", label, group=TABS_GROUP) for key, tab, label in TAB_KEYS),
    ]

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id
        self.run: dict = {}
        self.stages: list[dict] = []
        self._redraw_timer: Timer | None = None
        self._refetch_timer: Timer | None = None
        self._log_pending: list[str] = []
        self._log_timer: Timer | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(f"run {self.run_id}", id="run-header", classes="panel")
        with TabbedContent(id="tabs"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll():
                yield StageTimeline(id="timeline")
                with Horizontal(id="progress-row"):
                    yield Label("", id="progress-label")
                    yield ProgressBar(total=1.0, show_eta=False, id="progress")
                yield Label("Evidence", classes="section")
                yield Static(id="evidence")
                yield Label("Gate / backtest report", classes="section")
                yield GateReport(id="gate")
            with TabPane("Metrics", id="tab-metrics"), Horizontal():
                yield OptionList(id="metric-names")
                yield MetricChart(id="chart")
            with TabPane("Logs", id="tab-logs"):
                yield Log(max_lines=LOG_LINES, auto_scroll=True, id="log")
            with TabPane("Artifacts", id="tab-artifacts"):
                yield DataTable(id="artifacts", cursor_type="row")
            with TabPane("Audit", id="tab-audit"):
                yield DataTable(id="audit", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#artifacts", DataTable).add_columns("name", "kind", "size", "sha256", "path")
        self.query_one("#audit", DataTable).add_columns("when", "who", "change", "reason")
        self.query_one("#progress-row").display = False
        super().on_mount()

    # -- data -------------------------------------------------------------------------------------
    @work(exclusive=True, group="load")
    async def load(self) -> None:
        api = self.app.api
        self.loaded = False  # new log lines wait in _log_pending until the tail below is written
        self._follow_log()  # subscribe first: a line written meanwhile is never lost (at worst shown twice)
        try:
            run, metrics, logs = await asyncio.gather(
                api.call("runs.show", run=self.run_id), api.call("runs.metrics", run=self.run_id),
                api.call("runs.logs", run=self.run_id, tail_bytes=256 * 1024))
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.app.report_error(e, f"loading run {self.run_id}")
            return
        self._apply_run(run)
        chart = self.query_one("#chart", MetricChart)
        chart.series.clear()
        for m in metrics:
            xs, ys = chart.series.setdefault(m["name"], ([], []))
            xs.append(m["step"] if m.get("step") is not None else len(xs))
            ys.append(m["value"])
        names = self.query_one("#metric-names", OptionList)
        names.clear_options()
        names.add_options(sorted(chart.series))
        if chart.series:
            names.highlighted = 0
        chart.show(sorted(chart.series)[0] if chart.series else None)
        log = self.query_one("#log", Log)
        log.clear()
        if not logs.get("logs"):
            log.write_line("(no stage log yet: lines appear here as the running stage writes them)")
        for part in logs.get("logs", []):
            log.write_line(f"── {part['stage']}" + (" (tail)" if part.get("truncated") else "") + " ──")
            text = part.get("text") or ""
            if text:
                log.write_lines(text.rstrip("\n").split("\n"))
        self.loaded = True
        self._flush_log()

    @work(exclusive=True, group="show")
    async def _refetch(self) -> None:
        """runs.show again: artifacts, gate and audit rows have no events of their own."""
        self._refetch_timer = None
        try:
            run = await self.app.api.call("runs.show", run=self.run_id)
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, f"reloading run {self.run_id}")
            return
        self._apply_run(run)

    def _refetch_soon(self) -> None:
        if self._refetch_timer is None:
            self._refetch_timer = self.set_timer(0.2, self._refetch)

    def _apply_run(self, run: dict) -> None:
        self.run = run
        self.stages = run.get("stages") or []
        self._render_header()
        self._render_stages()
        self.query_one("#evidence", Static).update(self._evidence())
        self.query_one("#gate", GateReport).gate = run.get("gate")
        arts = self.query_one("#artifacts", DataTable)
        arts.clear()
        for a in run.get("artifacts") or []:
            arts.add_row(a["name"], a.get("kind", ""), fmt_size(a.get("size")), short_hash(a.get("sha256"), 16),
                         a.get("path", ""))
        audit = self.query_one("#audit", DataTable)
        audit.clear()
        for row in run.get("audit") or []:
            change = f"{row.get('from_state') or '∅'} → {row.get('to_state') or '?'}" if row.get("to_state") \
                else row.get("action", "")
            audit.add_row(fmt_ts(row.get("ts"), self.app.utc), row.get("actor", ""), change,
                          one_line(row.get("reason"), 80))
        self.refresh_bindings()

    # -- rendering --------------------------------------------------------------------------------
    def _render_header(self) -> None:
        r = self.run
        out = Text.assemble((f"run {self.run_id}", "bold"), "  ", (str(r.get("agent_id")), "bold"), "  ",
                            str(r.get("kind")), "  ", state_text(r.get("state")))
        if r.get("reason"):
            out.append(f"  {one_line(r['reason'], 90)}", style="dim")
        started, finished = r.get("started_at"), r.get("finished_at")
        out.append(f"\ncreated {fmt_ts(r.get('created_at'), self.app.utc)} by {r.get('created_by', '?')}")
        if started and finished:
            out.append(f"  ·  took {fmt_duration(finished - started)}")
        self.query_one("#run-header", Static).update(out)

    def _render_stages(self) -> None:
        now = None if self.app.stable else time.time()
        self.query_one("#timeline", StageTimeline).show(self.stages, now)
        running = next((s for s in self.stages if s.get("state") == "running"), None)
        row = self.query_one("#progress-row")
        row.display = running is not None
        if running is not None:
            p = running.get("progress")
            eta = running.get("eta_s")
            self.query_one("#progress", ProgressBar).update(total=1.0, progress=p if p is not None else 0.0)
            label = f"{running['name']}  " + (f"ETA {fmt_duration(eta)}" if eta is not None else "ETA unknown")
            self.query_one("#progress-label", Label).update(label)

    def _evidence(self) -> Table:
        """Why this run exists: the trigger's signal, window and numbers against thresholds (or who queued it
        by hand), then its params and last metrics."""
        r = self.run
        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold", no_wrap=True)
        t.add_column(overflow="fold")  # sentences wrap at the page's width rather than run off it
        for label, text in run_origin(r):
            t.add_row(label, Text(text, style="bold red") if text.endswith(": FIRED") else text)
        for label, text in ungraded_families(r):
            t.add_row(label, Text(text, style="bold yellow"))
        t.add_row("params", json.dumps(r.get("params") or {}, sort_keys=True))
        if r.get("idempotency_key"):
            t.add_row("key", r["idempotency_key"])
        for name, value in sorted((r.get("metrics_last") or {}).items()):
            t.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
        return t

    @work(exclusive=True, group="log")
    async def _follow_log(self) -> None:
        """This run's log lines, on a connection of their own subscribed to `log` for this run only.

        Ends when that connection drops; the app then reconnects and reloads this page, which follows
        again. Cancelled (and the connection closed) when the page closes.
        """
        client = AsyncClient(self.app.api.path)
        try:
            await client.connect()
            await client.call("events.subscribe", topics=["log"], run=self.run_id)
            while True:
                ev = await client.events.get()
                if ev.get("topic") == DISCONNECTED:
                    return
                if ev.get("topic") == "log" and ev.get("run") == self.run_id:
                    self._log_pending.append(str(ev.get("line", "")))
                    if self._log_timer is None:
                        self._log_timer = self.set_timer(0.1, self._flush_log)  # batch lines per repaint
        except (DaemonUnreachable, RpcError, OSError):
            return  # the main connection's banner and reconnect cover this
        finally:
            await client.close()

    def _flush_log(self) -> None:
        self._log_timer = None
        if self.loaded and self._log_pending:
            lines, self._log_pending = self._log_pending, []
            self.query_one("#log", Log).write_lines(lines)

    def _schedule_redraw(self) -> None:
        if self._redraw_timer is None:
            self._redraw_timer = self.set_timer(CHART_REDRAW_S, self._redraw)

    def _redraw(self) -> None:
        self._redraw_timer = None
        self.query_one("#chart", MetricChart).redraw()

    # -- live events ------------------------------------------------------------------------------
    def apply_events(self, events: list[dict]) -> None:
        if not self.loaded:
            return
        stages_changed = False
        chart = self.query_one("#chart", MetricChart)
        for ev in events:
            if ev.get("run") != self.run_id:
                continue
            topic = ev.get("topic")
            if topic == "run":
                self.run.update(state=ev.get("state"), reason=ev.get("reason"))
                self._render_header()
                self.refresh_bindings()
                self._refetch_soon()
            elif topic == "stage":
                for st in self.stages:
                    if st.get("name") == ev.get("stage") and st.get("seq") == ev.get("seq", st.get("seq")):
                        st["state"] = ev.get("state")
                        if ev.get("error"):
                            st["error"] = ev["error"]
                        if ev.get("state") == "running":
                            st["started_at"] = st.get("started_at") or time.time()
                        stages_changed = True
                # Finished stages bring artifacts and results, which only runs.show carries.
                if ev.get("state") != "running":
                    self._refetch_soon()
            elif topic == "progress":
                for st in self.stages:
                    if st.get("id") == ev.get("stage_id") or (ev.get("stage_id") is None and st.get("state") == "running"):
                        st["progress"], st["eta_s"] = ev.get("progress"), ev.get("eta_s")
                        stages_changed = True
            elif topic == "metric":
                name = ev.get("name")
                if name is None:
                    continue
                if name not in chart.series:
                    chart.series[name] = ([], [])
                    self.query_one("#metric-names", OptionList).add_option(name)
                    if chart.current is None:
                        chart.current = name
                xs, ys = chart.series[name]
                xs.append(ev["step"] if ev.get("step") is not None else len(xs))
                ys.append(ev.get("value"))
                if name == chart.current:
                    self._schedule_redraw()
        if stages_changed:
            self._render_stages()

    @on(OptionList.OptionHighlighted, "#metric-names")
    def _metric_picked(self, event: OptionList.OptionHighlighted) -> None:
        self.query_one("#chart", MetricChart).show(str(event.option.prompt))

    # -- actions ----------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if not allowed:
            return allowed
        state = self.run.get("state")
        if action == "cancel":
            return state in ("queued", "running", "interrupted", "awaiting_approval")
        if action in ("approve", "reject"):
            return state == "awaiting_approval"
        return True

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_follow(self) -> None:
        log = self.query_one("#log", Log)
        log.auto_scroll = not log.auto_scroll
        self.notify("log follows new lines" if log.auto_scroll else "log follow paused")

    def action_cancel(self) -> None:
        self.app.ask_cancel({**self.run, "id": self.run_id})

    def action_approve(self) -> None:
        self.app.ask_approve({**self.run, "id": self.run_id})

    def action_reject(self) -> None:
        self.app.ask_reject({**self.run, "id": self.run_id})
