"""The pr1tui application: pages, the daemon link (connect, subscribe, reconnect), operator actions,
the command palette provider and the `pr1tui` command line.

Data flow: one worker owns the socket. It connects (retrying with backoff while the daemon is away),
asks `whoami`, subscribes to every event topic, then forwards event batches to the live pages as
`DaemonEvents` messages. Pages fetch once on `Connected` and then follow events; nothing polls.
Every state-changing request goes through `ask_*` (a confirmation modal) and then `perform` (one
worker, one error path: the daemon's message becomes a notification).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input

from .client import DISCONNECTED, Backoff, ConsoleClient, DaemonUnreachable, Identity, RpcError
from .screens.approvals import ApprovalsScreen
from .screens.base import Connected, DaemonEvents, Pr1Screen
from .screens.dashboard import DashboardScreen
from .screens.deployments import DeploymentsScreen, rollback_target
from .screens.help import HelpScreen
from .screens.modals import ApproveModal, ConfirmModal, TriggerModal
from .screens.runs import KINDS, RunsScreen
from .widgets.filter_bar import FilterBar, RunFilter

# Events are handed to pages in batches: a burst of a thousand run events costs a handful of
# messages, and each page folds a batch into its tables in one go.
MAX_BATCH = 256


class Pr1Commands(Provider):
    """Command palette (ctrl+p or `:`): pages, agents, runs and every operator action, by name."""

    async def startup(self) -> None:
        app = self.app
        assert isinstance(app, Pr1App)
        self.agents: list[dict] = []
        self.runs: list[dict] = []
        if not app.api.connected:
            return  # navigation still works; the banner explains why there is nothing else
        try:
            self.agents, self.runs = await asyncio.gather(app.api.call("agents.list"),
                                                          app.api.call("runs.list", limit=200))
        except Exception as e:  # noqa: BLE001
            app.report_error(e, "command palette")

    def _commands(self, with_runs: bool) -> list[tuple[str, Callable[[], Any], str]]:
        app = self.app
        assert isinstance(app, Pr1App)
        out: list[tuple[str, Callable[[], Any], str]] = [
            ("Go to dashboard", partial(app.go, "dashboard"), "agents and daemon health"),
            ("Go to runs", partial(app.show_runs, None), "every run, filterable"),
            ("Go to approvals", partial(app.go, "approvals"), "runs awaiting approval"),
            ("Go to deployments", partial(app.go, "deployments"), "deployment history and rollback"),
            ("Show key bindings", app.action_help, "every key, generated from the bindings"),
        ]
        op = app.can_operate
        for a in self.agents:
            aid = a["id"]
            out.append((f"Go to agent {aid}", partial(app.goto_agent, aid), "highlight it on the dashboard"))
            out.append((f"Runs of agent {aid}", partial(app.show_runs, aid), "runs page filtered to this agent"))
            if op:
                out.append((f"Trigger run on {aid}", partial(app.ask_trigger, aid), "asks kind, params, reason"))
                if a.get("hold"):
                    out.append((f"Unhold {aid}", partial(app.ask_hold, aid, False), "release the maintenance hold"))
                else:
                    out.append((f"Hold {aid}", partial(app.ask_hold, aid, True), "no new runs until released"))
                out.append((f"Roll back {aid}", partial(self._rollback, aid), "to the previous version, with a reason"))
        if with_runs:
            for r in self.runs:
                rid, desc = r["id"], f"{r['agent_id']} {r['kind']} {r['state']}"
                out.append((f"Open run {rid}", partial(app.open_run, rid), desc))
                if op and r["state"] in ("queued", "running", "interrupted", "awaiting_approval"):
                    out.append((f"Cancel run {rid}", partial(app.ask_cancel, r), desc))
                if op and r["state"] == "awaiting_approval":
                    out.append((f"Approve run {rid}", partial(app.ask_approve, r), desc))
                    out.append((f"Reject run {rid}", partial(app.ask_reject, r), desc))
        return out

    def _rollback(self, agent: str) -> None:
        app = self.app
        assert isinstance(app, Pr1App)
        app.run_worker(self._rollback_async(agent), group="ask", exclusive=True)

    async def _rollback_async(self, agent: str) -> None:
        app = self.app
        assert isinstance(app, Pr1App)
        try:
            a, hist = await asyncio.gather(app.api.call("agents.list"),
                                           app.api.call("deployments.list", agent=agent, limit=50))
        except Exception as e:  # noqa: BLE001
            app.report_error(e, f"roll back {agent}")
            return
        current = next((x.get("current_version") for x in a if x["id"] == agent), None) or (
            hist[0]["version_id"] if hist else None)
        app.ask_rollback(agent, current, rollback_target(current, hist))

    async def discover(self) -> Hits:
        for title, cmd, help_text in self._commands(with_runs=False):
            yield DiscoveryHit(title, cmd, help=help_text)

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, Pr1App)
        digits = query.strip().lstrip("#")
        if digits.isdigit():  # "1234" opens run 1234 even when it is older than the 200 listed here
            yield Hit(1.0, f"Open run {digits}", partial(app.open_run, int(digits)), help="run detail")
        matcher = self.matcher(query)
        for title, cmd, help_text in self._commands(with_runs=True):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), cmd, text=title, help=help_text)


class Pr1App(App[int]):
    """The operations console. `stable=True` (snapshot tests) fixes clocks and hides volatile values."""

    TITLE = "pr1"
    COMMANDS = App.COMMANDS | {Pr1Commands}
    # Absolute: Textual resolves a relative CSS_PATH against the module of the (sub)class using it.
    CSS_PATH = Path(__file__).with_name("pr1tui.tcss")
    SCREENS = {"dashboard": DashboardScreen, "runs": RunsScreen, "approvals": ApprovalsScreen,
               "deployments": DeploymentsScreen}
    MODES = {name: name for name in SCREENS}
    DEFAULT_MODE = "dashboard"
    BINDINGS = [
        Binding("1", "go('dashboard')", "Dashboard", show=False),
        Binding("2", "go('runs')", "Runs", show=False),
        Binding("3", "go('approvals')", "Approvals", show=False),
        Binding("4", "go('deployments')", "Deployments", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        # Declaring a palette binding stops Textual adding its own ctrl+p, so both keys are bound here.
        Binding("ctrl+p", "command_palette", "Command palette", show=False, priority=True),
        Binding("colon", "command_palette", "Commands", key_display=":"),
        Binding("q", "quit", "Quit"),
    ]

    connected: reactive[bool] = reactive(False)
    identity: reactive[Identity | None] = reactive(None)
    link_note: reactive[str] = reactive("")
    read_only: reactive[bool] = reactive(False)

    def __init__(self, socket_path: Path | str, *, read_only: bool = False, stable: bool = False):
        super().__init__()
        self.api = ConsoleClient(socket_path)
        self.stable = stable
        self.utc = stable  # snapshots must not depend on the machine's time zone
        self.set_reactive(Pr1App.read_only, read_only)
        self._listeners: set[Pr1Screen] = set()
        self.reconnects = 0  # completed connects after the first (for tests and debugging)

    # -- identity and permissions -----------------------------------------------------------------
    @property
    def can_operate(self) -> bool:
        """Operator actions are offered only to operators, and never in read-only mode."""
        return not self.read_only and self.identity is not None and self.identity.is_operator

    def shown_user(self, user: str) -> str:
        return "‹user›" if self.stable else user

    def watch_identity(self) -> None:
        self._refresh_all_bindings()

    def watch_read_only(self) -> None:
        self._refresh_all_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While a dialog is open, page keys must not switch pages underneath it (the dialog would be
        # left behind on the other page's stack).
        if action in ("go", "help") and isinstance(self.screen, ModalScreen):
            return False
        return True

    def _refresh_all_bindings(self) -> None:
        if self.is_mounted and self.screen_stack:
            self.screen.refresh_bindings()

    # -- the daemon link --------------------------------------------------------------------------
    def on_mount(self) -> None:
        self._link()

    def add_listener(self, screen: Pr1Screen) -> None:
        self._listeners.add(screen)

    def remove_listener(self, screen: Pr1Screen) -> None:
        self._listeners.discard(screen)

    def _broadcast(self, make: Callable[[], Message]) -> None:
        # One message instance per page: a message is consumed by the page it is posted to.
        for screen in list(self._listeners):
            screen.post_message(make())

    @work(exclusive=True, group="link")
    async def _link(self) -> None:
        """Connect, subscribe, pump events; when the daemon goes away, retry with backoff. Forever."""
        backoff = Backoff()
        first = True
        while True:
            try:
                ident = await self.api.connect()
            except (DaemonUnreachable, RpcError, OSError) as e:
                delay = backoff.next()
                self.link_note = f"{self.api.last_error or e}; retry {backoff.attempt} in {delay:.1f}s"
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if not first:
                self.reconnects += 1
            first = False
            self.identity = ident
            self.link_note = ""
            self.connected = True
            self._broadcast(Connected)
            await self._pump(self.api.events)
            self.connected = False
            self.link_note = "connection to pr1d lost"

    async def _pump(self, queue: asyncio.Queue[dict]) -> None:
        """Forward events in batches until the connection drops."""
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            gone = any(e.get("topic") == DISCONNECTED for e in batch)
            events = [e for e in batch if e.get("topic") != DISCONNECTED]
            if events:
                self._broadcast(partial(DaemonEvents, events))
            if gone:
                return

    def report_error(self, err: BaseException, what: str) -> None:
        """Every failed request ends here: the daemon's own message as a notification, never a crash."""
        if isinstance(err, DaemonUnreachable):
            if self.api.connected:
                self.notify(str(err), title=f"{what} failed", severity="error", timeout=8)
            return  # otherwise the banner already says the daemon is away
        if isinstance(err, RpcError):
            self.notify(err.message, title=f"{what}: pr1d refused", severity="error", timeout=12)
            return
        self.log.error(f"{what}: {err!r}")
        self.notify(f"{type(err).__name__}: {err}", title=f"{what} failed", severity="error", timeout=12)

    # -- navigation -------------------------------------------------------------------------------
    async def action_go(self, mode: str) -> None:
        """Show a page's list: switch to its mode and close anything pushed over it (run detail, help)."""
        if self.current_mode != mode:
            await self.switch_mode(mode)
        while len(self.screen_stack) > 1:
            await self.pop_screen()

    def go(self, mode: str) -> None:
        """`action_go` from places that cannot await (palette commands, callbacks)."""
        self.run_worker(self.action_go(mode), group="nav", exclusive=True)

    def show_runs(self, agent: str | None = None) -> None:
        runs = self.get_screen("runs")
        assert isinstance(runs, RunsScreen)
        runs.set_filter(RunFilter(agent=agent))
        self.go("runs")

    def goto_agent(self, agent: str) -> None:
        async def show() -> None:
            await self.action_go("dashboard")
            dash = self.get_screen("dashboard")
            assert isinstance(dash, DashboardScreen)
            dash.select_agent(agent)

        self.run_worker(show(), group="nav", exclusive=True)

    def open_run(self, run_id: int) -> None:
        # Imported here: the run page pulls in plotext, which the first paint does not need.
        from .screens.run_detail import RunDetailScreen

        top = self.screen
        if isinstance(top, RunDetailScreen) and top.run_id == run_id:
            return
        self.push_screen(RunDetailScreen(run_id))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(help_sections(type(self))))

    # -- operator actions: confirm, then perform ----------------------------------------------------
    def _guard(self) -> bool:
        if self.can_operate:
            return True
        why = "read-only mode" if self.read_only else (
            "not connected" if self.identity is None else f"{self.identity.user} is a {self.identity.role}")
        self.notify(f"not allowed: {why}", severity="warning")
        return False

    def _confirm(self, modal: Screen, then: Callable[[Any], None]) -> None:
        self.push_screen(modal, callback=lambda answer: None if answer is None else then(answer))

    @work(group="ops")
    async def perform(self, method: str, params: dict, done: Callable[[Any], str], what: str) -> None:
        """Send one operator request. Not exclusive: a second action must not cancel the first."""
        try:
            result = await self.api.call(method, **params)
        except Exception as e:  # noqa: BLE001 - the daemon's answer is shown, whatever it is
            self.report_error(e, what)
            return
        self.notify(done(result), title=what)
        push = result.get("push") if isinstance(result, dict) else None
        if isinstance(push, dict) and push.get("state") not in (None, "in_sync"):
            # Done in the ledger, not yet on the platform: say so, and that pr1d keeps retrying.
            self.notify(f"profile push to the agent manager pending: {push.get('error') or 'not acknowledged'}; "
                        "pr1d retries until it is acknowledged (dashboard shows it meanwhile)",
                        title=what, severity="warning", timeout=12)

    def ask_trigger(self, agent: str | None = None) -> None:
        if not self._guard():
            return
        self._ask_trigger(agent)

    @work(exclusive=True, group="ask")
    async def _ask_trigger(self, agent: str | None) -> None:
        try:
            agents = [a["id"] for a in await self.api.call("agents.list")]
        except Exception as e:  # noqa: BLE001
            self.report_error(e, "listing agents")
            return
        key = uuid.uuid4().hex  # one key per dialog: a repeated submit cannot queue a second run

        def go(answer: dict) -> None:
            self.perform("runs.trigger", {**answer, "idempotency_key": key},
                         lambda r: f"run {r['run']['id']} queued for {answer['agent']}" if r.get("created")
                         else f"run {r['run']['id']} already existed for this request", "trigger")

        self._confirm(TriggerModal(agents, list(KINDS), agent=agent), go)

    def ask_hold(self, agent: str, hold: bool) -> None:
        if not self._guard():
            return
        if hold:
            body = (f"Put agent {agent} on hold: pr1d creates no new run for it — scheduled or manual — until "
                    "someone releases the hold. A run already active carries on.")
            modal = ConfirmModal(f"Hold {agent}", body, "Hold", reason_required=False)
        else:
            body = f"Release the hold on agent {agent}: triggers may queue runs for it again."
            modal = ConfirmModal(f"Release hold on {agent}", body, "Release", reason_required=False, danger=False)
        self._confirm(modal, lambda reason: self.perform(
            "agents.hold" if hold else "agents.unhold", {"agent": agent, "reason": reason},
            lambda _r: f"{agent} {'on hold' if hold else 'released'}", "hold" if hold else "unhold"))

    def ask_cancel(self, run: dict) -> None:
        if not self._guard():
            return
        rid, state = run["id"], run.get("state")
        body = Text.assemble(
            f"Cancel run {rid} ({run.get('agent_id', '?')}, {run.get('kind', '?')}, now ", (str(state), "bold"), "). ",
            "Its stage worker is asked to checkpoint and stop; the run ends as cancelled and frees the agent. "
            if state == "running" else "It ends as cancelled and frees the agent. ",
            "This cannot be undone.")
        self._confirm(ConfirmModal(f"Cancel run {rid}", body, "Cancel run", reason_required=False),
                      lambda reason: self.perform("runs.cancel", {"run": rid, "reason": reason},
                                                  lambda r: f"run {rid}: {r.get('state', 'cancel requested')}",
                                                  f"cancel run {rid}"))

    def ask_approve(self, run: dict) -> None:
        if not self._guard():
            return
        rid, agent = run["id"], run.get("agent_id", "?")
        # The dialog reads the run's gate: an inconclusive one must be accepted explicitly there.
        modal = ApproveModal(run)
        self._confirm(modal, lambda reason: self.perform("runs.approve", modal.params(reason),
                                                         partial(approved_text, rid, agent), f"approve run {rid}"))

    def ask_reject(self, run: dict) -> None:
        if not self._guard():
            return
        rid, agent = run["id"], run.get("agent_id", "?")
        body = (f"Reject run {rid}: its candidate is never promoted, agent {agent} keeps the model it has, "
                "and the run ends as rejected with your reason.")
        self._confirm(ConfirmModal(f"Reject run {rid}", body, "Reject", reason_required=True),
                      lambda reason: self.perform("runs.reject", {"run": rid, "reason": reason},
                                                  lambda r: f"run {rid}: {r.get('state', 'rejected')}",
                                                  f"reject run {rid}"))

    def ask_rollback(self, agent: str, current: str | None, target: str | None, explicit: bool = False) -> None:
        if not self._guard():
            return
        if target is None:
            body = Text.assemble(f"Roll agent {agent} back from {current or 'its current version'} → ",
                                 ("the previous version", "bold"),
                                 ". No earlier version is recorded here, so pr1d will most likely refuse.")
        else:
            body = Text.assemble(f"Roll agent {agent} back from ", (str(current or "?"), "bold"), " → ",
                                 (target, "bold green"), f". The deployment pointer moves to {target} and the "
                                 "agent manager receives its profile; the history keeps both.")
        params: dict[str, Any] = {"agent": agent}
        if explicit and target:
            params["to"] = target
        self._confirm(ConfirmModal(f"Roll back {agent}", body, "Roll back", reason_required=True),
                      lambda reason: self.perform(
                          "deployments.rollback", {**params, "reason": reason},
                          lambda r: f"{agent} rolled back to {(r.get('deployment') or {}).get('version_id', target)}",
                          f"roll back {agent}"))


def approved_text(run_id: int, agent: str, result: dict) -> str:
    """What an approval did, in words: promoted, or recorded and waiting for more approvers."""
    if result.get("promoted"):
        accepted = " (inconclusive gate accepted)" if result.get("accept_inconclusive") else ""
        return f"run {run_id} promoted{accepted}: agent {agent} now runs {result.get('version_id') or 'the candidate'}"
    n, required = len(result.get("approvals") or []), result.get("required", 1)
    if result.get("already_approved"):
        return f"run {run_id}: you had approved it already ({n} of {required} approvals)"
    return f"run {run_id}: approval recorded ({n} of {required}); {result.get('state', 'awaiting_approval')}"


def help_sections(app_cls: type[App]) -> list[tuple[str, type[DOMNode]]]:
    """Where each group of bindings applies, in the order the help page lists them."""
    from .screens.run_detail import RunDetailScreen

    return [("everywhere", app_cls), ("everywhere", App), ("dashboard", DashboardScreen), ("runs", RunsScreen),
            ("runs: filter bar", FilterBar), ("run detail", RunDetailScreen), ("approvals", ApprovalsScreen),
            ("deployments", DeploymentsScreen), ("dialogs", ConfirmModal), ("trigger dialog", TriggerModal),
            ("help", HelpScreen), ("every page", Screen), ("tables", DataTable), ("text fields", Input)]


# Young-generation threshold (CPython's default is 700 allocations). Rendering allocates heavily, so
# with the default a burst of events promoted objects quickly and set off full collections, each a
# UI pause of 50-150 ms; collecting young objects every 20,000 allocations made them rare.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Keep garbage collection from pausing the UI; called once per process, right before the app runs.

    gc.freeze() moves everything alive now (modules, classes: most of the heap, and it lives as long as
    the process anyway) out of the collector's reach, so full collections stop rescanning it. Once per
    process, not per app instance: tests run many apps in one process and must not freeze their garbage.
    No gc.collect() first: it would cost start-up time to reclaim the little garbage imports leave.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    """`pr1tui [--socket PATH] [--read-only] [--config PATH]`: exit status 0, or 2 for a usage/config error."""
    from pr1d.config import ConfigError
    from pr1d.rpc.client import find_socket

    parser = argparse.ArgumentParser(prog="pr1tui", description="pr1 operations console (a client of pr1d's socket).")
    parser.add_argument("--socket", metavar="PATH",
                        help="pr1d socket; default: $PR1_SOCKET, then the config's daemon.socket_path, then "
                             "/run/pr1d/pr1d.sock, then ~/.local/state/pr1d/pr1d.sock (the first that answers)")
    parser.add_argument("--config", metavar="PATH", help="config file to read the socket path from")
    parser.add_argument("--read-only", action="store_true",
                        help="hide and refuse every action that changes state (trigger, cancel, approve, ...)")
    args = parser.parse_args(argv)
    try:
        # The console waits for a daemon that is not up yet, so no answer is not an error here.
        path = find_socket(args.socket, args.config, require_answer=False)
    except ConfigError as e:
        print(f"pr1tui: {e}", file=sys.stderr)
        return 2
    app = Pr1App(path, read_only=args.read_only)
    tune_gc()
    app.run()
    return app.return_code or 0
