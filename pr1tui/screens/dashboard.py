"""Dashboard page: daemon health and one row per agent (version, hold, active run with live progress, trend)."""

from __future__ import annotations

import asyncio
import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import DataTable, Static

from ..widgets.format import ACTIVE_STATES, DASH, cell, fmt_ts, one_line, progress_text, state_text
from ..widgets.sparkline import spark
from .base import Pr1Screen

HOLD = Text("HOLD", style="bold yellow")  # shared cells (see widgets/format.py)
IDLE = Text("idle", style="dim")
TREND_WIDTH = 12
PROGRESS_WIDTH = 21  # "██████ 100% ETA 10m05s"
STATUS_DEBOUNCE_S = 0.5  # a burst of run events costs one status call, not one per event


class DashboardScreen(Pr1Screen):
    PAGE = "dashboard"
    AUTO_FOCUS = "#agents"
    BINDINGS = [
        Binding("enter", "open_agent", "Agent's runs", show=False),
        Binding("o", "open_run", "Open run"),
        Binding("t", "trigger", "Trigger"),
        Binding("h", "hold", "Hold/unhold"),
        Binding("c", "cancel", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, dict] = {}
        self.active: dict[str, dict] = {}  # agent -> its active run (id, state, kind, progress, eta_s)
        self.run_agent: dict[int, str] = {}  # run -> agent, for progress events (they carry no agent)
        self.scores: dict[str, list[float]] = {}  # agent -> score trend; filled once the monitor exists
        self.status: dict = {}
        self._status_timer: Timer | None = None
        self._columns_have_signals = False

    def compose_body(self) -> ComposeResult:
        yield Static(id="health", classes="panel")
        yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self._set_columns(signals=False)
        super().on_mount()

    def _set_columns(self, signals: bool) -> None:
        table = self.query_one("#agents", DataTable)
        table.clear(columns=True)
        # Columns that live events change have fixed widths (see RunsScreen: shrinking auto-width cells
        # make DataTable re-measure the whole column on every update).
        # Most urgent first, so an 80-column terminal shows what on-call needs; the rest scrolls.
        table.add_column("agent", key="agent")
        table.add_column("hold", key="hold", width=4)
        table.add_column("state", key="state", width=17)
        table.add_column("run", key="run", width=12)
        table.add_column("score trend", key="trend", width=TREND_WIDTH)
        table.add_column("progress", key="progress", width=PROGRESS_WIDTH)
        table.add_column("version", key="version")
        if signals:  # only once the daemon reports signal states (the monitor's issue)
            table.add_column("signals", key="signals")
        self._columns_have_signals = signals

    # -- data -------------------------------------------------------------------------------------
    @work(exclusive=True, group="load")
    async def load(self) -> None:
        api = self.app.api
        try:
            status, agents, *by_state = await asyncio.gather(
                api.call("status"), api.call("agents.list"),
                *(api.call("runs.list", state=s, limit=1000) for s in ACTIVE_STATES))
            active: dict[str, dict] = {}
            for runs in by_state:
                for r in runs:
                    cur = active.get(r["agent_id"])
                    if cur is None or r["id"] > cur["id"]:
                        active[r["agent_id"]] = {"id": r["id"], "state": r["state"], "kind": r["kind"],
                                                 "progress": None, "eta_s": None}
            # Progress of a running stage lives on the stage row: one runs.show per running run (few).
            running = [a for a in active.values() if a["state"] == "running"]
            details = await asyncio.gather(*(api.call("runs.show", run=a["id"]) for a in running))
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.app.report_error(e, "loading the dashboard")
            return
        for a, d in zip(running, details, strict=True):
            st = next((s for s in d["stages"] if s["state"] == "running"), None)
            if st:
                a["progress"], a["eta_s"] = st.get("progress"), st.get("eta_s")
        self.status = status
        self.agents = {a["id"]: a for a in agents}
        self.active = active
        self.run_agent = {a["id"]: agent for agent, a in active.items()}
        self._render_health()
        self._render_agents()
        self.loaded = True

    @work(exclusive=True, group="status")
    async def _refresh_status(self) -> None:
        self._status_timer = None
        try:
            self.status = await self.app.api.call("status")
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, "reading daemon status")
            return
        self._render_health()

    def _status_soon(self) -> None:
        if self._status_timer is None:
            self._status_timer = self.set_timer(STATUS_DEBOUNCE_S, self._refresh_status)

    @work(exclusive=True, group="agents")
    async def _reload_agents(self) -> None:
        try:
            agents = await self.app.api.call("agents.list")
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, "listing agents")
            return
        self.agents = {a["id"]: a for a in agents}
        self._render_agents()

    def apply_events(self, events: list[dict]) -> None:
        changed: set[str] = set()
        for ev in events:
            topic = ev.get("topic")
            if topic == "run":
                agent, run_id, state = ev.get("agent"), ev.get("run"), ev.get("state")
                if agent is None or run_id is None:
                    continue
                cur = self.active.get(agent)
                if state in ACTIVE_STATES:
                    keep = cur if cur and cur["id"] == run_id else {"progress": None, "eta_s": None}
                    self.active[agent] = {**keep, "id": run_id, "state": state, "kind": ev.get("kind")}
                    self.run_agent[run_id] = agent
                elif cur and cur["id"] == run_id:
                    del self.active[agent]
                    self.run_agent.pop(run_id, None)
                changed.add(agent)
                self._status_soon()
            elif topic == "progress":
                agent = self.run_agent.get(ev.get("run"))
                if agent and agent in self.active:
                    self.active[agent]["progress"] = ev.get("progress")
                    self.active[agent]["eta_s"] = ev.get("eta_s")
                    changed.add(agent)
            elif topic == "agent":
                agent = ev.get("agent")
                if agent in self.agents:
                    if "hold" in ev:
                        self.agents[agent]["hold"] = bool(ev["hold"])
                        self.agents[agent]["hold_by"] = ev.get("actor")
                    changed.add(agent)
                else:
                    self._reload_agents()  # a new agent appeared: fetch the list once
            elif topic == "daemon":
                self._status_soon()
        if changed and self.loaded:
            self._update_rows(changed)

    # -- rendering --------------------------------------------------------------------------------
    def _render_health(self) -> None:
        s = self.status
        if not s:
            return
        app = self.app
        out = Text()
        healthy = not s.get("stopping") and not s.get("config_reload_error")
        out.append("● " if healthy else "▲ ", style="green" if healthy else "yellow")
        out.append(f"pr1d {s.get('version', '?')}", style="bold")
        if not app.stable:  # volatile values: hidden in snapshot mode so pictures stay stable
            out.append(f"  pid {s.get('pid')}  up since {fmt_ts(s.get('started_at') or _since(s))}")
            out.append(f"  clients {s.get('clients', '?')}", style="dim")
        if s.get("burst"):
            out.append("  burst mode", style="yellow")
        if s.get("stopping"):
            out.append("  stopping", style="bold yellow")
        monitor = s.get("monitor")
        if isinstance(monitor, dict):
            last = monitor.get("last_cycle") or {}
            if not monitor.get("enabled"):
                out.append("  monitor off", style="dim")
            elif last and not last.get("ok", True):
                out.append(f"  monitor: last poll failed: {one_line(last.get('error'), 120)}", style="yellow")
            else:
                out.append("  monitor on", style="green")
        out.append(f"\nqueue {s.get('queue_length', 0)}")
        running = s.get("running") or []
        if running:
            out.append("  running: " + ", ".join(f"run {r['run']} ({r['stage']})" for r in running))
        counts = s.get("runs_by_state") or {}
        if counts:
            out.append("  runs: ")
            for i, (state, n) in enumerate(sorted(counts.items())):
                if i:
                    out.append(" · ")
                out.append(f"{n} ")
                out.append(state_text(state))
        if s.get("config_reload_error"):
            out.append(f"\nconfig reload refused: {one_line(s['config_reload_error'], 200)}", style="yellow")
        for health in self.query("#health").results(Static):  # none while the app is closing
            health.update(out)

    def _row(self, agent_id: str) -> list:
        a = self.agents.get(agent_id, {"id": agent_id})
        run = self.active.get(agent_id)
        cells = [
            cell(agent_id),
            HOLD if a.get("hold") else DASH,
            state_text(run["state"]) if run else IDLE,
            cell(f"{run['id']} {run.get('kind') or ''}".strip()) if run else DASH,
            spark(self.scores.get(agent_id), TREND_WIDTH, lo=0.0, hi=1.0),
            progress_text(run.get("progress"), run.get("eta_s"), width=6) if run and run["state"] == "running"
            else DASH,
            cell(a["current_version"]) if a.get("current_version") else DASH,
        ]
        if self._columns_have_signals:
            cells.append(signals_text(a.get("signals")))
        return cells

    def _render_agents(self) -> None:
        signals = any(a.get("signals") for a in self.agents.values())
        if signals != self._columns_have_signals:
            self._set_columns(signals)
        table = self.query_one("#agents", DataTable)
        keep = self.current_agent()
        table.clear()
        for agent_id in sorted(self.agents):
            table.add_row(*self._row(agent_id), key=agent_id)
        if keep in self.agents:
            table.move_cursor(row=table.get_row_index(keep))

    def _update_rows(self, agents: set[str]) -> None:
        table = self.query_one("#agents", DataTable)
        keys = [c.key for c in table.ordered_columns]
        for agent_id in agents:
            if agent_id not in self.agents:
                continue
            for key, value in zip(keys, self._row(agent_id), strict=True):
                table.update_cell(agent_id, key, value)

    # -- actions ----------------------------------------------------------------------------------
    def current_agent(self) -> str | None:
        table = self.query_one("#agents", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def select_agent(self, agent_id: str) -> None:
        table = self.query_one("#agents", DataTable)
        if agent_id in self.agents:
            table.move_cursor(row=table.get_row_index(agent_id))
            table.focus()

    @on(DataTable.RowSelected, "#agents")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_agent()

    def action_open_agent(self) -> None:
        agent = self.current_agent()
        if agent:
            self.app.show_runs(agent=agent)

    def action_open_run(self) -> None:
        agent = self.current_agent()
        run = self.active.get(agent or "")
        if run is None:
            self.notify(f"agent {agent} has no active run", severity="warning")
            return
        self.app.open_run(run["id"])

    def action_trigger(self) -> None:
        self.app.ask_trigger(self.current_agent())

    def action_hold(self) -> None:
        agent = self.current_agent()
        if agent:
            self.app.ask_hold(agent, not self.agents.get(agent, {}).get("hold", False))

    def action_cancel(self) -> None:
        agent = self.current_agent()
        run = self.active.get(agent or "")
        if run is None:
            self.notify(f"agent {agent} has no active run to cancel", severity="warning")
            return
        self.app.ask_cancel({"id": run["id"], "agent_id": agent, "kind": run.get("kind"), "state": run["state"]})


SIGNAL_LOOK = {"ok": ("●", "green"), "warn": ("▲", "yellow"), "firing": ("✗", "bold red"),
               "insufficient_data": ("○", "dim")}


def signals_text(signals: dict | None) -> Text:
    """`weighte● reliab▲ drift✗`: each signal's name, shortened, with its state as a coloured mark."""
    if not signals:
        return Text("–", style="dim")
    out = Text()
    for name, sig in sorted(signals.items()):
        state = sig.get("state") if isinstance(sig, dict) else str(sig)
        glyph, style = SIGNAL_LOOK.get(state or "", ("?", "magenta"))
        if out:
            out.append(" ")
        out.append(name[:7])
        out.append(glyph, style=style)
    return out


def _since(status: dict) -> float | None:
    """When the daemon started, from its uptime as of our fetch (status reports uptime, not a start time)."""
    up = status.get("uptime_s")
    return time.time() - up if isinstance(up, (int, float)) else None
