"""Dashboard page: daemon health and alerts, and one row per agent (hold, active run with live progress,
score trend, signal states, version).

Scores come from `agents.scores`: fetched once per visible agent after the first load (a worker per
agent), for agents scrolled into view, and again after each poll cycle the daemon announces (an
`agent` event of kind `poll`), debounced into one exclusive worker. Nothing here polls.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.timer import Timer
from textual.widgets import DataTable, Static

from pr1d.rpc.schema import NOT_FOUND

from ..client import RpcError
from ..widgets.format import ACTIVE_STATES, DASH, cell, fmt_ts, one_line, progress_text, state_text
from ..widgets.sparkline import TREND_WIDTH, trend_cell
from .base import Pr1Screen

HOLD = Text("HOLD", style="bold yellow")  # shared cells (see widgets/format.py)
IDLE = Text("idle", style="dim")
PROGRESS_WIDTH = 21  # "██████ 100% ETA 10m05s"
SIGNALS_WIDTH = 11  # "W● R● D▲ C●"
STATUS_DEBOUNCE_S = 0.5  # a burst of run events costs one status call, not one per event
# After a poll cycle (or a burst of agent changes) the agent list and the visible agents' scores are
# fetched once, this long after the last event: a daemon polling every few seconds costs a few calls.
AGENTS_DEBOUNCE_S = 0.5
SCROLL_DEBOUNCE_S = 0.2  # scores of agents scrolled into view: fetched when the scrolling pauses
# Graded scores fetched per agent: enough for a trend (the bars average them), small enough that a
# screenful of agents is a few kilobytes.
SCORE_LIMIT = 50
# Rows assumed visible before the table has a size (the first load can finish before the first layout).
VISIBLE_FALLBACK = 50
MAX_ALERT_LINES = 3  # the health panel stays small; the rest is one "… N more" line
# Run states that move an agent's deployment pointer: the version column must follow.
DEPLOYING_STATES = ("promoted", "rolled_back")


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
        self.scores: dict[str, list[float]] = {}  # agent -> graded scores, oldest first (agents.scores)
        self.status: dict = {}
        self._order: list[str] = []  # agent ids in row order
        self._status_timer: Timer | None = None
        self._agents_timer: Timer | None = None
        self._scroll_timer: Timer | None = None
        self._want_scores = False  # the next agents reload also refetches the visible agents' scores
        # Agents whose scores are current: a poll cycle empties it, a fetch adds to it. Rows scrolled into
        # view are fetched unless they are in here.
        self._fresh: set[str] = set()

    def compose_body(self) -> ComposeResult:
        yield Static(id="health", classes="panel")
        yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#agents", DataTable)
        # Columns that live events change have fixed widths (see RunsScreen: shrinking auto-width cells
        # make DataTable re-measure the whole column on every update).
        # Most urgent first, so an 80-column terminal shows what on-call needs; the rest scrolls.
        table.add_column("agent", key="agent")
        table.add_column("hold", key="hold", width=4)
        table.add_column("state", key="state", width=17)
        table.add_column("run", key="run", width=12)
        table.add_column("score trend", key="trend", width=TREND_WIDTH)
        table.add_column("signals", key="signals", width=SIGNALS_WIDTH)
        table.add_column("progress", key="progress", width=PROGRESS_WIDTH)
        table.add_column("version", key="version")
        self.watch(table, "scroll_y", self._scrolled, init=False)
        self.watch(table, "hover_coordinate", self._hovered, init=False)
        super().on_mount()

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
        self._fetch_scores(self.visible_agents())

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

    def _agents_soon(self, scores: bool = False) -> None:
        """Reload the agent list shortly (and with `scores`, the visible agents' scores): one call per burst."""
        self._want_scores |= scores
        if self._agents_timer is None:
            self._agents_timer = self.set_timer(AGENTS_DEBOUNCE_S, self._reload_agents)

    @work(exclusive=True, group="agents")
    async def _reload_agents(self) -> None:
        self._agents_timer = None
        want_scores, self._want_scores = self._want_scores, False
        done = False
        try:
            agents = await self.app.api.call("agents.list")
            ids = sorted(a["id"] for a in agents)
            scores = await self._scores_of(self._visible(ids)) if want_scores else {}
            done = True
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, "listing agents")
            return
        finally:
            if not done:  # failed or cancelled by a newer reload: that one (or the next) fetches the scores
                self._want_scores |= want_scores
        new = {a["id"]: a for a in agents}
        if want_scores:
            self._fresh = set(scores)
        if set(new) != set(self.agents):
            self.agents = new
            self.scores.update(scores)
            self._render_agents()
            self._fetch_scores([a for a in self.visible_agents() if a not in self._fresh])
            return
        # Only rows whose shown values changed are redrawn (each poll touches every agent's timestamps).
        changed = {a for a in new if _shown(new[a]) != _shown(self.agents[a])}
        changed |= {a for a, sc in scores.items() if sc != self.scores.get(a)}
        self.agents = new
        self.scores.update(scores)
        self._update_rows(changed)

    # -- scores -----------------------------------------------------------------------------------
    @property
    def scores_loaded(self) -> bool:
        """The first fetch is applied and every visible agent's scores are current (tests wait on it)."""
        return self.loaded and all(a in self._fresh for a in self.visible_agents())

    def visible_agents(self) -> list[str]:
        """The agents whose rows are on screen (the first screenful before the table has a size)."""
        return self._visible(self._order)

    def _visible(self, order: list[str]) -> list[str]:
        table = self.query_one("#agents", DataTable)
        height = table.scrollable_content_region.height
        if height <= 0:
            return order[:VISIBLE_FALLBACK]
        top = int(table.scroll_y)
        return order[top:top + height]

    async def _scores_of(self, agents: list[str]) -> dict[str, list[float]]:
        """Graded scores of many agents, concurrently; an agent the daemon no longer knows is skipped."""
        api = self.app.api
        answers = await asyncio.gather(*(api.call("agents.scores", agent=a, limit=SCORE_LIMIT) for a in agents),
                                       return_exceptions=True)
        out: dict[str, list[float]] = {}
        for agent, ans in zip(agents, answers, strict=True):
            if isinstance(ans, RpcError) and ans.code == NOT_FOUND:
                continue  # gone since the list was read: its row goes with the next reload
            if isinstance(ans, BaseException):
                raise ans
            out[agent] = graded(ans)
        return out

    def _fetch_scores(self, agents: list[str]) -> None:
        """One worker per agent: a slow or failing agent holds up no other row."""
        for agent in agents:
            self.run_worker(self._fetch_agent_scores(agent), group=f"scores:{agent}", exclusive=True)

    async def _fetch_agent_scores(self, agent: str) -> None:
        try:
            rows = await self.app.api.call("agents.scores", agent=agent, limit=SCORE_LIMIT)
        except RpcError as e:
            if e.code != NOT_FOUND:  # not found: the agent is gone, and the next agents reload drops its row
                self.app.report_error(e, f"reading scores of {agent}")
            return
        except Exception as e:  # noqa: BLE001
            self.app.report_error(e, f"reading scores of {agent}")
            return
        scores = graded(rows)
        self._fresh.add(agent)
        if scores != self.scores.get(agent):
            self.scores[agent] = scores
            self._update_rows({agent})

    def _hovered(self, where: Coordinate) -> None:
        """The signals legend as the tooltip of the signals column (its header and cells), nowhere else."""
        table = self.query_one("#agents", DataTable)
        on_signals = table.ordered_columns[where.column].key == "signals" if where.column < len(table.columns) else False
        table.tooltip = signals_legend() if on_signals else None

    def _scrolled(self) -> None:
        if self._scroll_timer is not None:
            self._scroll_timer.stop()
        self._scroll_timer = self.set_timer(SCROLL_DEBOUNCE_S, self._scores_for_new_rows)

    def _scores_for_new_rows(self) -> None:
        self._scroll_timer = None
        if self.loaded:
            self._fetch_scores([a for a in self.visible_agents() if a not in self._fresh])

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
                if state in DEPLOYING_STATES:
                    self._agents_soon()  # the version column follows the deployment pointer
                changed.add(agent)
                self._status_soon()
            elif topic == "progress":
                agent = self.run_agent.get(ev.get("run"))
                if agent and agent in self.active:
                    self.active[agent]["progress"] = ev.get("progress")
                    self.active[agent]["eta_s"] = ev.get("eta_s")
                    changed.add(agent)
            elif topic == "agent":
                agent, kind = ev.get("agent"), ev.get("kind")
                if kind == "poll":
                    # New grades and signal states (and maybe new agents): refetch once the burst is over.
                    self._agents_soon(scores=True)
                    self._status_soon()
                elif kind == "profile_push":
                    # A push acknowledged or failed: pending pushes changed, and a rollback moved a version.
                    self._agents_soon()
                    self._status_soon()
                elif agent in self.agents:
                    if "hold" in ev:
                        self.agents[agent]["hold"] = bool(ev["hold"])
                        self.agents[agent]["hold_by"] = ev.get("actor")
                    changed.add(agent)
                else:
                    self._agents_soon()  # a new agent appeared: fetch the list once
            elif topic in ("alert", "daemon"):
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
        # A few alerts, each wrapped to the panel's width: cut at 80 columns, an alert lost the part that
        # says what to do (the version, the error). The rest is one "… N more" line.
        lines = alert_lines(s, utc=app.utc, stable=app.stable)
        shown = lines[:MAX_ALERT_LINES]
        if len(lines) > MAX_ALERT_LINES:
            shown.append(Text(f"… {len(lines) - MAX_ALERT_LINES} more (pr1ctl status)", style="dim"))
        for health in self.query("#health").results(Static):  # none while the app is closing
            health.update(Group(out, *shown))

    def _row(self, agent_id: str) -> list:
        a = self.agents.get(agent_id, {"id": agent_id})
        run = self.active.get(agent_id)
        cells = [
            cell(agent_id),
            HOLD if a.get("hold") else DASH,
            state_text(run["state"]) if run else IDLE,
            cell(f"{run['id']} {run.get('kind') or ''}".strip()) if run else DASH,
            trend_cell(self.scores.get(agent_id)),
            signals_text(a.get("signals")),
            progress_text(run.get("progress"), run.get("eta_s"), width=6) if run and run["state"] == "running"
            else DASH,
            cell(a["current_version"]) if a.get("current_version") else DASH,
        ]
        return cells

    def _render_agents(self) -> None:
        table = self.query_one("#agents", DataTable)
        keep = self.current_agent()
        table.clear()
        self._order = sorted(self.agents)
        for agent_id in self._order:
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


# How each signal state looks: a glyph as well as a colour, so the state reads without colour too.
SIGNAL_LOOK = {"ok": ("●", "green"), "warn": ("▲", "yellow"), "firing": ("✗", "bold red"),
               "insufficient_data": ("○", "dim")}
# The monitor's signals (pr1d/monitor/signals.py), in this order, by their initial; any other signal
# follows under its own initial.
SIGNAL_ORDER = ("weighted_score", "reliability", "drift", "compliance")


# What each state means for the legend (help page and the signals column's tooltip); short enough that
# the states fit one 80-column line.
SIGNAL_STATE_WORDS = {"ok": "ok", "warn": "warn: near threshold", "firing": "fired: asks for a run",
                      "insufficient_data": "no data yet"}


def signals_legend() -> Text:
    """`W weighted score · R reliability · D drift · C compliance` and each glyph's meaning, from the tables
    the column is drawn with (so the legend cannot drift from the column)."""
    out = Text("signals ", style="bold")
    out.append(" · ".join(f"{name[:1].upper()} {name.replace('_', ' ')}" for name in SIGNAL_ORDER))
    out.append("\n")
    for i, (state, (glyph, style)) in enumerate(SIGNAL_LOOK.items()):
        if i:
            out.append(" · ")
        out.append(glyph, style=style)
        out.append(f" {SIGNAL_STATE_WORDS.get(state, state)}")
    out.append("\nwhy one fired: the run page's Evidence, or `pr1ctl triggers AGENT`", style="dim")
    return out


def signals_text(signals: dict | None) -> Text:
    """`W● R● D▲ C✗`: each signal's initial with its state as a coloured mark (`–` before the first poll)."""
    if not signals:
        return DASH
    names = [n for n in SIGNAL_ORDER if n in signals] + sorted(n for n in signals if n not in SIGNAL_ORDER)
    out = Text()
    for name in names:
        sig = signals[name]
        state = sig.get("state") if isinstance(sig, dict) else str(sig)
        glyph, style = SIGNAL_LOOK.get(state or "", ("?", "magenta"))
        if out:
            out.append(" ")
        out.append(name[:1].upper())
        out.append(glyph, style=style)
    return out


def _shown(agent: dict) -> tuple:
    """What an agent's row shows from its agents.list entry (signal states, not their evidence)."""
    signals = agent.get("signals") or {}
    return (agent.get("hold"), agent.get("current_version"),
            tuple(sorted((k, v.get("state") if isinstance(v, dict) else v) for k, v in signals.items())))


def graded(rows: list) -> list[float]:
    """The scores of `agents.scores` rows ([ts, score, status], oldest first) the platform graded.

    An `error` evaluation (the platform could not grade it) carries no verdict, as in the monitor's
    signals, so it is left out of the trend rather than drawn as a zero.
    """
    return [float(score) for _ts, score, status, *_ in rows if score is not None and status in ("pass", "fail")]


def alert_lines(status: dict, utc: bool = False, stable: bool = False) -> list[Text]:
    """What needs a person, from `status`: pending profile pushes, registry alerts, scoreboard KPI alerts.

    Pending pushes are drawn from the structured list (who, what, since when, how many attempts, the
    last error) rather than from their ready-made alert text; `stable` (snapshots) leaves out the
    attempt count and error, which move with every retry.
    """
    registry = status.get("registry") or {}
    scoreboard = status.get("scoreboard") or {}
    out: list[Text] = []
    pushed_agents = set()
    for p in registry.get("pending_pushes") or []:
        pushed_agents.add(p.get("agent"))
        line = Text("▲ ", style="yellow")
        line.append("profile push pending", style="bold yellow")
        line.append(f" {p.get('agent')}: {p.get('action')} → {p.get('version')} since "
                    f"{fmt_ts(p.get('since'), utc, short=True)}")
        if not stable:
            n = p.get("attempts") or 0
            line.append(f", {n} attempt{'s' if n != 1 else ''}", style="dim")
            if p.get("last_error"):
                line.append(f", last error: {one_line(p['last_error'], 100)}", style="dim")
        out.append(line)
    for a in registry.get("alerts") or []:
        if a.get("kind") == "profile_push_pending" and a.get("agent") in pushed_agents:
            continue  # drawn above, from the structured entry
        out.append(_alert_line(a, "✗ ", "bold red"))
    for a in scoreboard.get("alerts") or []:
        out.append(_alert_line(a, "▲ ", "yellow"))
    return out


def _alert_line(alert: dict, glyph: str, style: str) -> Text:
    line = Text(glyph, style=style)
    line.append(f"{alert.get('kind') or 'alert'}:", style=style)
    line.append(" " + one_line(alert.get("message") or alert, 200))
    return line


def _since(status: dict) -> float | None:
    """When the daemon started, from its uptime as of our fetch (status reports uptime, not a start time)."""
    up = status.get("uptime_s")
    return time.time() - up if isinstance(up, (int, float)) else None
