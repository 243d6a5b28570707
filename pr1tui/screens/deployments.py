"""Deployments page: per-agent deployment history (promote, rollback, initial) and rollback."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label

from ..widgets.format import fmt_ts, one_line
from .base import Pr1Screen

# Run states that move an agent's deployment pointer: when one shows up, the history changed.
DEPLOYING_STATES = ("promoted", "rolled_back")


def rollback_target(current: str | None, history: list[dict], wanted: str | None = None) -> str | None:
    """The version a rollback would restore: `wanted` if given and not current, else the newest earlier one."""
    if wanted and wanted != current:
        return wanted
    for d in history:  # newest first
        if d.get("version_id") and d["version_id"] != current:
            return d["version_id"]
    return None


class DeploymentsScreen(Pr1Screen):
    PAGE = "deployments"
    AUTO_FOCUS = "#deploy-agents"
    BINDINGS = [
        Binding("R", "rollback", "Roll back", key_display="R"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, dict] = {}
        self.history: dict[str, list[dict]] = {}  # agent -> deployments, newest first

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="deploy-agents", cursor_type="row", zebra_stripes=True)
        yield Label("History", classes="section", id="history-title")
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        agents = self.query_one("#deploy-agents", DataTable)
        for key, label in (("agent", "agent"), ("version", "current version"), ("count", "deployments"),
                           ("hold", "hold")):
            agents.add_column(label, key=key)
        self.query_one("#history", DataTable).add_columns("when", "action", "version", "by", "run", "reason")
        super().on_mount()

    # -- data -------------------------------------------------------------------------------------
    @work(exclusive=True, group="load")
    async def load(self) -> None:
        api = self.app.api
        try:
            agents, deployments = await asyncio.gather(api.call("agents.list"),
                                                       api.call("deployments.list", limit=5000))
        except Exception as e:  # noqa: BLE001 - any failure becomes a notification, never a crash
            self.app.report_error(e, "listing deployments")
            return
        self.agents = {a["id"]: a for a in agents}
        self.history = {}
        for d in deployments:
            self.history.setdefault(d["agent_id"], []).append(d)
        self._render_agents()
        self.loaded = True

    def apply_events(self, events: list[dict]) -> None:
        if not self.loaded:
            return
        if any((e.get("topic") == "run" and e.get("state") in DEPLOYING_STATES) or e.get("topic") == "agent"
               for e in events):
            self.load()

    def current_of(self, agent: str) -> str | None:
        hist = self.history.get(agent) or []
        return self.agents.get(agent, {}).get("current_version") or (hist[0]["version_id"] if hist else None)

    def _render_agents(self) -> None:
        table = self.query_one("#deploy-agents", DataTable)
        keep = self.current_agent()
        table.clear()
        for agent_id in sorted(self.agents):
            a = self.agents[agent_id]
            table.add_row(Text(agent_id, style="bold"), self.current_of(agent_id) or Text("–", style="dim"),
                          len(self.history.get(agent_id) or []),
                          Text("HOLD", style="bold yellow") if a.get("hold") else Text("–", style="dim"),
                          key=agent_id)
        if keep in self.agents:
            table.move_cursor(row=table.get_row_index(keep))
        self._render_history()

    def _render_history(self) -> None:
        agent = self.current_agent()
        table = self.query_one("#history", DataTable)
        table.clear()
        hist = self.history.get(agent or "") or []
        current = self.current_of(agent) if agent else None
        for d in hist:
            version = Text(d["version_id"], style="bold green" if d["version_id"] == current else "")
            table.add_row(fmt_ts(d.get("ts"), self.app.utc, short=True), d.get("action", ""), version, d.get("actor", ""),
                          d.get("run_id") if d.get("run_id") is not None else "–", one_line(d.get("reason"), 60),
                          key=str(d["id"]))
        title = f"History — {agent}" if agent else "History"
        if agent and not hist:
            title += " (no deployments recorded yet)"
        self.query_one("#history-title", Label).update(title)

    @on(DataTable.RowHighlighted, "#deploy-agents")
    def _agent_highlighted(self) -> None:
        self._render_history()

    # -- actions ----------------------------------------------------------------------------------
    def current_agent(self) -> str | None:
        table = self.query_one("#deploy-agents", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _wanted_version(self) -> str | None:
        """The history row under the cursor, when the operator moved into the history to pick one."""
        table = self.query_one("#history", DataTable)
        if not table.has_focus or not table.row_count:
            return None
        dep_id = int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        agent = self.current_agent() or ""
        return next((d["version_id"] for d in self.history.get(agent, []) if d["id"] == dep_id), None)

    def action_rollback(self) -> None:
        agent = self.current_agent()
        if agent is None:
            self.notify("no agent selected", severity="warning")
            return
        current = self.current_of(agent)
        wanted = self._wanted_version()
        target = rollback_target(current, self.history.get(agent) or [], wanted)
        # `to` goes to the daemon only when the operator picked a version; otherwise the daemon chooses
        # "the previous one" itself, which is what the modal shows.
        self.app.ask_rollback(agent, current, target, explicit=wanted is not None and wanted != current)

    def action_back(self) -> None:
        self.app.switch_mode("dashboard")
