"""Console behaviour through Textual's Pilot, against real `pr1d serve` daemons (never a mock); where a
daemon needs an agent manager or a scoring API (promote, roll back, poll), a real `pr1d sim` plays it.

Keys are pressed as an operator would; assertions read the widgets, the requests the console made
(`app.api.calls`) and the daemon's own answer through pr1ctl.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import re
import sqlite3
import time

import pytest
from rich.console import Console
from textual.command import CommandPalette
from textual.widgets import Button, DataTable, Input, Static

from pr1d.inference.policy import ParallelExecutionPolicy
from pr1tui.app import Pr1App, help_sections
from pr1tui.screens.approvals import ApprovalsScreen
from pr1tui.screens.dashboard import SCORE_LIMIT, SIGNAL_LOOK, DashboardScreen
from pr1tui.screens.deployments import DeploymentsScreen
from pr1tui.screens.help import HelpScreen, own_bindings
from pr1tui.screens.modals import ApproveModal, ConfirmModal, TriggerModal
from pr1tui.screens.run_detail import RunDetailScreen
from pr1tui.screens.runs import PAGE_SIZE, RunsScreen
from pr1tui.widgets.chrome import ConnectionBanner, TopBar
from pr1tui.widgets.sparkline import BLOCKS
from tests.conftest import DaemonProc
from tests.registry.registry_kit import BASE_MODEL
from tests.tui.conftest import REG_AGENT, in_thread, rpc, seed_many_runs, seed_registry, wait_for

pytestmark = pytest.mark.timeout(90)

ME = pwd.getpwuid(os.getuid()).pw_name
SIZE = (100, 30)


class RecordingApp(Pr1App):
    """The real app, also keeping every notification it showed (message, severity) for assertions."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.shown: list[tuple[str, str]] = []

    def notify(self, message, *, title="", severity="information", **kw):  # type: ignore[override]
        self.shown.append((str(message), severity))
        return super().notify(message, title=title, severity=severity, **kw)

    def errors(self) -> list[str]:
        return [m for m, sev in self.shown if sev == "error"]


def plain(widget) -> str:
    """What a widget shows, as plain text."""
    r = widget.content if isinstance(widget, Static) and type(widget).render is Static.render else widget.render()
    if isinstance(r, str):
        return r
    if hasattr(r, "plain"):
        return r.plain
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(r)
    return console.export_text()


def rows(screen, table_id: str) -> list[list[str]]:
    table = screen.query_one(table_id, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def cell(screen, table_id: str, row_key: str, column_key: str) -> str:
    return str(screen.query_one(table_id, DataTable).get_cell(row_key, column_key)).strip()


def column(screen, table_id: str, index: int = 0) -> list[str]:
    return [r[index] for r in rows(screen, table_id)]


async def ready(pilot, app: Pr1App, screen_type=None) -> None:
    await wait_for(pilot, lambda: app.connected and (screen_type is None or isinstance(app.screen, screen_type))
                   and app.screen.loaded, what=f"{screen_type.__name__ if screen_type else 'screen'} loaded")


def run_state(daemon: DaemonProc, run_id: int) -> dict:
    return daemon.ctl_json("show", str(run_id))


# -- navigation, identity, live-only ------------------------------------------------------------------
async def test_navigation_identity_and_no_polling(shared_daemon):
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        assert column(app.screen, "#agents") == ["a1", "a2", "a3"]
        a1 = {k: cell(app.screen, "#agents", "a1", k) for k in ("version", "run", "state", "signals")}
        assert a1 == {"version": "v1-7c0ffee", "run": "4 sft", "state": "awaiting_approval",
                      "signals": "W✗ R● D▲ C●"}
        assert cell(app.screen, "#agents", "a3", "hold") == "HOLD"
        # Score trends come from agents.scores, one bounded request per visible agent: a1's seeded scores
        # fall from 0.90 to 0.80 (bars step down), a3 has none and says so instead of drawing nothing.
        await wait_for(pilot, lambda: cell(app.screen, "#agents", "a1", "trend") == "█▇▆▅▅▄▃▂▁ 0.81",
                       what="a1's trend")
        assert cell(app.screen, "#agents", "a3", "trend") == "no data"
        assert cell(app.screen, "#agents", "a3", "signals") == "–"
        for agent in ("a1", "a2", "a3"):
            assert ("agents.scores", {"agent": agent, "limit": SCORE_LIMIT}) in app.api.calls
        # The health panel lists what needs a person: a1's unacknowledged push and its KPI alert.
        health = plain(app.screen.query_one("#health"))
        assert "profile push pending a1: promote → v1-7c0ffee" in health, health
        assert "kpi: agent a1 (v1-7c0ffee): weighted_score_trend" in health, health
        bar = plain(app.screen.query_one(TopBar))
        assert ME in bar and "operator" in bar  # whoami: who you are and what you may do

        await pilot.press("2")
        await ready(pilot, app, RunsScreen)
        assert column(app.screen, "#runs") == ["5", "4", "3", "2", "1"]
        assert ("runs.list", {"limit": PAGE_SIZE, "before_id": None}) in app.api.calls

        await pilot.press("down", "enter")  # open run 4
        await ready(pilot, app, RunDetailScreen)
        assert app.screen.run_id == 4
        assert "awaiting_approval" in plain(app.screen.query_one("#run-header"))
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)

        await pilot.press("ctrl+end", "enter")  # run 1: its stage log tail, then followed live
        await ready(pilot, app, RunDetailScreen)
        assert "step 29: loss 0.0667" in "\n".join(app.screen.query_one("#log").lines)
        # Log lines come on a connection of the run page's own (the main one skips the `log` topic):
        # the console holds two connections while the page is open, one after. (+1: pr1ctl's own.)
        async def clients_become(n: int) -> None:
            for _ in range(50):
                if (seen := (await in_thread(shared_daemon.ctl_json, "status"))["clients"]) == n:
                    return
                await pilot.pause(0.1)
            raise AssertionError(f"daemon sees {seen} clients, expected {n}")

        await clients_become(3)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="back on runs")
        await clients_become(2)

        await pilot.press("3")
        await ready(pilot, app, ApprovalsScreen)
        assert column(app.screen, "#approvals") == ["4"]
        gate = plain(app.screen.query_one("#gate"))
        assert "✗ safety rubric" in gate and "✓ gsm-lite uplift" in gate

        await pilot.press("4")
        await ready(pilot, app, DeploymentsScreen)
        assert [r[2] for r in rows(app.screen, "#history")] == ["v1-7c0ffee", "v0-base"]

        await pilot.press("question_mark")
        await ready(pilot, app, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, DeploymentsScreen)

        await pilot.press("1")
        assert isinstance(app.screen, DashboardScreen)
        # Live data comes from the subscription only: an idle console sends the daemon nothing.
        before = len(app.api.calls)
        await pilot.pause(1.5)
        assert len(app.api.calls) == before, list(app.api.calls)[before:]
        assert app.errors() == []


async def test_filter_by_state_agent_and_bad_input(shared_daemon):
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("2")
        await ready(pilot, app, RunsScreen)
        runs = app.screen

        async def apply(text: str) -> None:
            await pilot.press("slash")
            bar = runs.query_one("#filter", Input)
            assert bar.has_focus
            bar.value = ""
            await pilot.press(*text, "enter")
            await pilot.pause(0.1)

        await apply("state:failed")
        await wait_for(pilot, lambda: column(runs, "#runs") == ["2"], what="only the failed run")
        assert ("runs.list", {"limit": PAGE_SIZE, "before_id": None, "state": "failed"}) in app.api.calls

        await apply("a2")  # a bare word that is no state or kind filters by agent
        await wait_for(pilot, lambda: column(runs, "#runs") == ["3", "2"], what="a2's runs")

        await apply("kind:noop agent:a1")
        await wait_for(pilot, lambda: column(runs, "#runs") == ["1"], what="a1's noop runs")

        await apply("colour:red")
        assert any("unknown filter key 'colour'" in m for m in app.errors())
        assert column(runs, "#runs") == ["1"]  # a bad filter leaves the current one in place

        await pilot.press("escape")  # closes the bar
        await pilot.press("escape")  # clears the filter
        await wait_for(pilot, lambda: len(column(runs, "#runs")) == 5, what="all runs again")

        await pilot.press("s")  # sort by agent
        assert column(runs, "#runs", 1) == sorted(column(runs, "#runs", 1), reverse=False)


async def test_runs_page_smoothly_through_10000(daemon_factory, tmp_path):
    sd = tmp_path / "big"
    sd.mkdir()
    seed_many_runs(sd, 10_000)
    daemon = daemon_factory(sd).start()
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        await pilot.press("2")
        await ready(pilot, app, RunsScreen)
        runs = app.screen
        table = runs.query_one("#runs", DataTable)
        assert table.row_count == PAGE_SIZE  # one page, not 10,000 rows
        assert table.get_row_at(0)[0] == 10_000
        for pages in (2, 3):
            t0 = time.monotonic()
            await pilot.press("G")  # to the bottom: the next older page loads by itself
            await wait_for(pilot, lambda n=pages: table.row_count == n * PAGE_SIZE, what=f"{pages} pages")
            assert time.monotonic() - t0 < 2.0
        ids = [table.get_row_at(i)[0] for i in range(table.row_count)]
        assert ids == list(range(10_000, 10_000 - 3 * PAGE_SIZE, -1))  # keyset paging: no gap, no repeat
        assert [c for c in app.api.calls if c[0] == "runs.list"][-1][1]["before_id"] == 10_000 - 2 * PAGE_SIZE + 1


# -- operator actions through confirmation modals ---------------------------------------------------
async def confirm_with_reason(pilot, app: Pr1App, reason: str) -> ConfirmModal:
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirmation modal")
    modal = app.screen
    if modal.reason_required:
        assert modal.query_one("#confirm", Button).disabled
        await pilot.press("enter")  # no reason: nothing happens but a warning
        assert app.screen is modal
    await pilot.press(*reason)
    assert not modal.query_one("#confirm", Button).disabled
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen is not modal, what="modal closed")
    return modal


async def test_approve_with_a_reason_promotes_and_pushes_the_profile(registry_world, sim):
    daemon, ids = registry_world()
    rid, candidate = ids["run"], ids["candidate"]
    reason = "gate passed, looks good"
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await ready(pilot, app, ApprovalsScreen)
        assert column(app.screen, "#approvals") == [str(rid)]
        await pilot.press("a")
        modal = await confirm_with_reason(pilot, app, reason)
        assert f"promote its candidate model to agent {REG_AGENT}" in str(modal.body)
        # The gate passed: the plain dialog, no acceptance asked for or sent.
        assert isinstance(modal, ApproveModal) and not modal.inconclusive and not modal.query("#accept-inconclusive")
        # The queue empties through the run event; the daemon's answer names the promoted version.
        await wait_for(pilot, lambda: column(app.screen, "#approvals") == [], what="run left the queue")
        done = f"run {rid} promoted: agent {REG_AGENT} now runs {candidate}"
        await wait_for(pilot, lambda: any(m == done for m, _ in app.shown), what="the daemon's answer")
        assert ("runs.approve", {"run": rid, "reason": reason}) in app.api.calls
        # The deployments page follows the pointer to the candidate.
        await pilot.press("4")
        await ready(pilot, app, DeploymentsScreen)
        await wait_for(pilot, lambda: cell(app.screen, "#deploy-agents", REG_AGENT, "version") == candidate,
                       what="candidate current on the deployments page")
        assert app.errors() == [] and not any("push" in m for m, _ in app.shown)  # acknowledged at once

    run = run_state(daemon, rid)
    assert run["state"] == "promoted"
    last = run["audit"][-1]
    assert (last["actor"], last["from_state"], last["to_state"]) == (ME, "awaiting_approval", "promoted")
    assert last["reason"] == f"approved by {ME}: {reason}"
    current = next(a for a in daemon.ctl_json("agents") if a["id"] == REG_AGENT)["current_version"]
    assert current == candidate
    deps = rpc(daemon, "deployments.list", agent=REG_AGENT, limit=10)
    assert [(d["action"], d["version_id"]) for d in deps] == [("promote", candidate), ("initial", ids["base"])]
    assert deps[0]["actor"] == ME and reason in deps[0]["reason"]
    # The agent manager (the sim) received the candidate's profile, acknowledged, once.
    (pushed,) = sim.history(REG_AGENT)
    assert pushed["model_version"] == candidate and pushed["policy"] == ParallelExecutionPolicy(branch_count=4, temperature=0.7).to_dict()


INCONCLUSIVE = {
    "outcome": "inconclusive", "flagged": True, "expected_score": 0.9,
    "reasons": ["ci_straddles_bar: candidate 0.8600 vs bar 0.8400"],
    "uplift": {"observed": 0.06, "ci_low": -0.012, "ci_high": 0.05, "bar": 0.84, "ci_level": 0.95},
}


async def test_approving_an_inconclusive_gate_needs_the_explicit_acceptance(daemon_factory, tmp_path, sim):
    sd = tmp_path / "registry-state"
    sd.mkdir()
    ids = seed_registry(sd, tmp_path / "model-sources", sim, promoted=False)
    rid = ids["run"]
    con = sqlite3.connect(sd / "ledger.sqlite")  # before the daemon starts: it is the only writer afterwards
    con.execute("UPDATE runs SET gate = ? WHERE id = ?", (json.dumps(INCONCLUSIVE), rid))
    con.commit()
    con.close()
    daemon = daemon_factory(sd, extra_env={"PR1_SCORING__BASE_URL": sim.url}).start()
    reason = "CI straddles the bar by a hair; accepted"
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await ready(pilot, app, ApprovalsScreen)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ApproveModal), what="approve dialog")
        modal = app.screen
        assert modal.inconclusive and "gate inconclusive" in modal.title_text
        warning = plain(modal.query_one("#inconclusive-warning", Static))
        assert "ci_straddles_bar: candidate 0.8600 vs bar 0.8400" in warning
        assert "observed +0.0600, 95% CI [-0.0120, +0.0500], bar 0.8400" in warning
        await pilot.press(*reason)
        confirm = modal.query_one("#confirm", Button)
        assert confirm.disabled  # a reason alone is not enough
        await pilot.press("enter")
        assert app.screen is modal and any("tick 'I accept the inconclusive gate result'" in m for m, _ in app.shown)
        assert not [c for c in app.api.calls if c[0] == "runs.approve"]  # nothing was sent
        await pilot.click("#accept-inconclusive")
        await wait_for(pilot, lambda: not confirm.disabled, what="confirm enabled by the acceptance")
        await pilot.click("#confirm")
        await wait_for(pilot, lambda: app.screen is not modal, what="dialog closed")
        done = f"run {rid} promoted (inconclusive gate accepted): agent {REG_AGENT} now runs {ids['candidate']}"
        await wait_for(pilot, lambda: any(m == done for m, _ in app.shown), what="the daemon's answer")
        assert [c for c in app.api.calls if c[0] == "runs.approve"] == [
            ("runs.approve", {"run": rid, "reason": reason, "accept_inconclusive": True})]
        assert app.errors() == []
    audit = [a for a in rpc(daemon, "audit.list", entity="run", entity_id=str(rid)) if a["action"] == "approve"]
    assert [(a["actor"], a["details"]["accept_inconclusive"]) for a in audit] == [(ME, True)]
    assert run_state(daemon, rid)["state"] == "promoted"


async def test_run_page_shows_stages_a_cancelled_run_never_reached_as_skipped(seeded_daemon):
    rid = seeded_daemon.ids["cancelled"]  # cancelled while queued: its one stage never ran
    app = RecordingApp(seeded_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        app.open_run(rid)
        await ready(pilot, app, RunDetailScreen)
        timeline = plain(app.screen.query_one("#timeline"))
        assert "» noop skipped" in " ".join(timeline.split())
        assert "never ran: the run ended first" in timeline
    assert [s["state"] for s in run_state(seeded_daemon, rid)["stages"]] == ["skipped"]


async def test_reject_through_modal_records_user_and_reason(seeded_daemon):
    rid = seeded_daemon.ids["awaiting"]
    app = RecordingApp(seeded_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("3")
        await ready(pilot, app, ApprovalsScreen)
        await pilot.press("x")
        modal = await confirm_with_reason(pilot, app, "safety rubric below 0.99")
        assert "never promoted" in str(modal.body)
        # The queue empties through the run event, not a refresh.
        await wait_for(pilot, lambda: column(app.screen, "#approvals") == [], what="run left the queue")
        assert ("runs.reject", {"run": rid, "reason": "safety rubric below 0.99"}) in app.api.calls
    run = run_state(seeded_daemon, rid)
    assert run["state"] == "rejected"
    last = run["audit"][-1]
    assert (last["actor"], last["from_state"], last["to_state"], last["reason"]) == (
        ME, "awaiting_approval", "rejected", "safety rubric below 0.99")
    assert app.errors() == []


async def test_rollback_through_the_modal_restores_the_previous_version(registry_world, sim):
    daemon, ids = registry_world(promoted=True)
    base, candidate = ids["base"], ids["candidate"]
    assert sim.history(REG_AGENT)[-1]["model_version"] == candidate  # the seeded promotion was pushed
    reason = "latency regression after promote"
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("4")
        await ready(pilot, app, DeploymentsScreen)
        assert cell(app.screen, "#deploy-agents", REG_AGENT, "version") == candidate
        await pilot.press("R")  # the cursor is on agent-000, the first agent
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="rollback modal")
        assert f"from {candidate} → {base}" in str(app.screen.body)
        await confirm_with_reason(pilot, app, reason)
        # The history page follows the pointer back to the base version.
        await wait_for(pilot, lambda: cell(app.screen, "#deploy-agents", REG_AGENT, "version") == base,
                       what="base current again")
        done = f"{REG_AGENT} rolled back to {base}"
        await wait_for(pilot, lambda: any(m == done for m, _ in app.shown), what="the daemon's answer")
        assert ("deployments.rollback", {"agent": REG_AGENT, "reason": reason}) in app.api.calls
        assert [r[1] for r in rows(app.screen, "#history")] == ["rollback", "promote", "initial"]
        assert app.errors() == [] and not any("push" in m for m, _ in app.shown)  # acknowledged at once

    current = next(a for a in daemon.ctl_json("agents") if a["id"] == REG_AGENT)["current_version"]
    assert current == base
    deps = rpc(daemon, "deployments.list", agent=REG_AGENT, limit=10)
    assert [(d["action"], d["version_id"]) for d in deps][0] == ("rollback", base)
    assert (deps[0]["actor"], deps[0]["reason"]) == (ME, reason)
    assert run_state(daemon, ids["run"])["state"] == "rolled_back"
    # The agent manager got the older profile back: the platform's own name for the base model.
    last = sim.history(REG_AGENT)[-1]
    assert (last["model_version"], last["profile"], last["previous_model_version"]) == (BASE_MODEL, "default",
                                                                                         candidate)


async def test_pending_profile_push_shows_on_the_dashboard_until_acknowledged(registry_world, sim):
    # Retries every 0.3 s (doubling) instead of 5 s, so the acknowledgement comes within the test.
    daemon, ids = registry_world(PR1_REGISTRY__PUSH_RETRY_BASE_S="0.3")
    sim.fail_profile_pushes()
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        health = app.screen.query_one("#health")
        assert "profile push pending" not in plain(health)
        out = await in_thread(daemon.ctl_json, "approve", str(ids["run"]), "--reason", "ship it")
        assert out["promoted"] and out["push"]["state"] == "pending"
        # Promoted in the ledger, not yet on the platform: the panel says so, with the platform's error.
        pending = f"profile push pending {REG_AGENT}: promote → {ids['candidate']}"
        await wait_for(pilot, lambda: pending in plain(health) and "HTTP 503" in plain(health),
                       what="pending push on the health panel")
        await wait_for(pilot, lambda: cell(app.screen, "#agents", REG_AGENT, "version") == ids["candidate"],
                       what="version column follows the promotion")
        await in_thread(sim.clear_faults)
        await wait_for(pilot, lambda: "profile push pending" not in plain(health), what="push acknowledged",
                       timeout=20)
        assert app.errors() == []
    assert sim.history(REG_AGENT)[-1]["model_version"] == ids["candidate"]


async def test_dashboard_scores_and_signals_follow_poll_cycles(daemon_factory, sim):
    daemon = daemon_factory(extra_env={"PR1_MONITOR__ENABLED": "true", "PR1_SCORING__BASE_URL": sim.url}).start()
    agents = ["agent-000", "agent-001", "agent-002"]
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        dash = app.screen
        # The start-up poll registers the sim's agents (before or after the console connected).
        await wait_for(pilot, lambda: column(dash, "#agents") == agents, what="the sim's agents")
        assert cell(dash, "#agents", "agent-000", "trend") == "no data"  # the sim's clock has not moved

        await in_thread(sim.tick, 60)
        before = len(app.api.calls)
        report = await in_thread(rpc, daemon, "monitor.poll")
        assert report["ok"] and report["inserted"] == 60 * len(agents)
        # The poll event makes the console refetch, once, in a worker: the list (signal states) and the
        # visible agents' scores.
        await wait_for(pilot, lambda: all(cell(dash, "#agents", a, "trend") != "no data" for a in agents),
                       what="trends drawn")
        marks = "[" + "".join(glyph for glyph, _ in SIGNAL_LOOK.values()) + "]"
        for a in agents:
            trend = cell(dash, "#agents", a, "trend")
            assert re.fullmatch(f"[{BLOCKS}]{{9}} 0\\.\\d\\d", trend), trend
            await wait_for(pilot, lambda a=a: re.fullmatch(f"W{marks} R{marks} D{marks} C{marks}",
                                                           cell(dash, "#agents", a, "signals")),
                           what=f"{a}'s signal markers")
        after = list(app.api.calls)[before:]
        assert [c for c in after if c[0] == "agents.list"] == [("agents.list", {})]
        assert sorted(c[1]["agent"] for c in after if c[0] == "agents.scores") == agents
        assert all(c[1]["limit"] == SCORE_LIMIT for c in after if c[0] == "agents.scores")
        assert app.errors() == []


async def test_trigger_then_cancel_through_modals(daemon):
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TriggerModal), what="trigger modal")
        modal = app.screen
        modal.query_one("#params", Input).value = json.dumps({"seconds": 60, "step_s": 0.2})
        await pilot.pause()
        assert 'Queue a sleep run for agent a1 with params {"seconds": 60, "step_s": 0.2}' in plain(
            modal.query_one("#dialog-body"))
        await pilot.press(*"pilot test", "enter")
        await wait_for(pilot, lambda: any(c[0] == "runs.trigger" for c in app.api.calls), what="trigger sent")
        # The dashboard follows the run through events: running, with progress.
        dash = app.screen
        await wait_for(pilot, lambda: dash.active.get("a1", {}).get("state") == "running", what="a1 running")
        await wait_for(pilot, lambda: dash.active["a1"].get("progress"), what="progress event", timeout=15)
        rid = dash.active["a1"]["id"]

        await pilot.press("2")
        await ready(pilot, app, RunsScreen)
        assert column(app.screen, "#runs")[0] == str(rid)
        await pilot.press("c")
        modal = await confirm_with_reason(pilot, app, "")
        assert f"Cancel run {rid}" in modal.title_text and "checkpoint and stop" in str(modal.body)
        await wait_for(pilot, lambda: rows(app.screen, "#runs")[0][3] == "cancelled", what="cancelled row",
                       timeout=30)
    run = run_state(daemon, rid)
    assert run["state"] == "cancelled" and run["audit"][-1]["actor"] == ME
    assert app.errors() == []


async def test_daemon_errors_become_notifications(shared_daemon):
    """A held agent refuses runs: the operator sees the daemon's message and the app carries on."""
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        await pilot.press("down", "down", "t")  # a3 is on hold
        await wait_for(pilot, lambda: isinstance(app.screen, TriggerModal), what="trigger modal")
        app.screen.query_one("#kind").value = "noop"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.errors(), what="refusal")
        assert any("agent a3 is on hold" in m for m in app.errors()), app.errors()
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("2")  # still alive and navigable
        await ready(pilot, app, RunsScreen)


async def test_read_only_hides_and_refuses_operator_actions(shared_daemon):
    app = RecordingApp(shared_daemon.socket, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        assert "read-only" in plain(app.screen.query_one(TopBar))
        for key, screen_type in (("1", DashboardScreen), ("2", RunsScreen), ("3", ApprovalsScreen),
                                 ("4", DeploymentsScreen)):
            await pilot.press(key)
            await ready(pilot, app, screen_type)
            actions = {b.binding.action for b in app.screen.active_bindings.values()}
            assert not actions & {"trigger", "hold", "cancel", "approve", "reject", "rollback"}, actions
        await pilot.press("3", "a", "x")  # the keys do nothing: no modal opens
        await pilot.pause(0.2)
        assert isinstance(app.screen, ApprovalsScreen)
        # The palette offers navigation but no operator action.
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"run 4")
        await pilot.pause(0.5)
        prompts = [str(o.prompt) for o in app.screen.query_one("CommandList").options]
        assert any("Open run 4" in p for p in prompts), prompts
        assert not any(p.startswith(("Approve", "Reject", "Cancel", "Trigger")) for p in prompts), prompts
        # Even a direct call is refused by the app's guard.
        await pilot.press("escape")
        app.ask_reject({"id": 4, "agent_id": "a1"})
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmModal)
        assert any("read-only mode" in m for m, _ in app.shown)


async def test_command_palette_opens_runs_and_agents(shared_daemon):
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"reject run 4")
        await wait_for(pilot, lambda: any("Reject run 4" in str(o.prompt)
                                          for o in app.screen.query_one("CommandList").options), what="hit")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="reject modal from palette")
        assert app.screen.reason_required
        await pilot.press("escape")  # backed out: nothing sent
        assert not any(c[0] == "runs.reject" for c in app.api.calls)
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"1")
        await wait_for(pilot, lambda: any("Open run 1" in str(o.prompt)
                                          for o in app.screen.query_one("CommandList").options), what="run hit")
        await pilot.press("enter")
        await ready(pilot, app, RunDetailScreen)
        assert app.screen.run_id == 1


async def test_help_lists_every_binding(shared_daemon):
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("question_mark")
        await ready(pilot, app, HelpScreen)
        listed = {(r[1], r[2].split("  (")[0]) for r in rows(app.screen, "#help")}
        for _title, cls in help_sections(Pr1App):
            for b in own_bindings(cls):
                assert (app.get_key_display(b), b.description or b.action.replace("_", " ")) in listed, b
        assert {("R", "Roll back"), ("^p", "Command palette"), (":", "Commands")} <= listed, listed


# -- daemon restarts ------------------------------------------------------------------------------
async def test_banner_while_daemon_is_down_then_live_again(daemon):
    app = RecordingApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app, DashboardScreen)
        banner = app.screen.query_one(ConnectionBanner)
        assert not banner.display
        await in_thread(daemon.stop)
        await wait_for(pilot, lambda: banner.display and not app.connected, what="banner shown")
        assert "unreachable" in plain(banner)
        await in_thread(daemon.start)
        await wait_for(pilot, lambda: app.connected and not banner.display, what="reconnected", timeout=15)
        assert app.reconnects == 1
        # Data is live again: a run triggered elsewhere shows up through the new subscription.
        out = await in_thread(daemon.ctl_json, "trigger", "a2", "--kind", "sleep", "--param", "seconds=30")
        rid = out["run"]["id"]
        await wait_for(pilot, lambda: app.screen.active.get("a2", {}).get("id") == rid, what="live run")
        await in_thread(daemon.ctl, "cancel", str(rid))
