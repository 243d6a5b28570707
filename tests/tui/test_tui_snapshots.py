"""Pictures of the main pages at 80×24 (pytest-textual-snapshot), grouped by feature.

The daemon runs on the seeded ledger (fixed data, fixed timestamps); the app runs with `stable=True`:
UTC times, no pid/uptime/socket, the user name masked, no cursor blink, so a picture only changes when
the console does. Update with `pytest tests/tui/test_tui_snapshots.py --snapshot-update` and review
the SVGs.
"""

from __future__ import annotations

import pytest

from pr1tui.app import Pr1App
from pr1tui.screens.approvals import ApprovalsScreen
from pr1tui.screens.dashboard import DashboardScreen
from pr1tui.screens.deployments import DeploymentsScreen
from pr1tui.screens.help import HelpScreen
from pr1tui.screens.modals import ConfirmModal, TriggerModal
from pr1tui.screens.run_detail import RunDetailScreen
from pr1tui.screens.runs import RunsScreen
from tests.tui.conftest import wait_for

pytestmark = pytest.mark.timeout(60)
SIZE = (80, 24)


Step = tuple[tuple[str, ...], type | None]


def shoot(snap_compare, daemon, *steps: Step) -> bool:
    """Start the console, wait for the dashboard, then for each step press its keys and (if it names a
    page type) wait until that page is on top and loaded; the picture is taken after the last step."""

    async def drive(pilot) -> None:
        app = pilot.app
        await wait_for(pilot, lambda: app.connected and isinstance(app.screen, DashboardScreen)
                       and app.screen.scores_loaded, what="dashboard with its score trends")
        for keys, page in steps:
            await pilot.press(*keys)
            if page is not None:
                await wait_for(pilot, lambda p=page: isinstance(app.screen, p) and getattr(app.screen, "loaded", True),
                               what=page.__name__)
        await pilot.pause(0.3)

    return snap_compare(Pr1App(daemon.socket, stable=True), terminal_size=SIZE, run_before=drive)


# -- pages ------------------------------------------------------------------------------------------
def test_dashboard(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon)


def test_runs(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("2",), RunsScreen))


def test_run_detail_overview(snap_compare, shared_daemon):
    """Run 1 (succeeded noop): timeline, evidence with last metrics."""
    assert shoot(snap_compare, shared_daemon, (("2",), RunsScreen), (("ctrl+end", "enter"), RunDetailScreen))


def test_run_detail_gate_report(snap_compare, shared_daemon):
    """Run 4 (awaiting approval): five stages and the gate checklist."""
    assert shoot(snap_compare, shared_daemon, (("3",), ApprovalsScreen), (("enter",), RunDetailScreen))


def test_run_detail_metrics_chart(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("2",), RunsScreen), (("ctrl+end", "enter"), RunDetailScreen),
                 (("right",), None))


def test_approvals(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("3",), ApprovalsScreen))


def test_deployments(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("4",), DeploymentsScreen))


def test_help(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("question_mark",), HelpScreen))


# -- dialogs ----------------------------------------------------------------------------------------
def test_reject_dialog(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("3",), ApprovalsScreen), (("x",), ConfirmModal),
                 (tuple("gate: safety"), None))


def test_rollback_dialog(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("4",), DeploymentsScreen), (("R",), ConfirmModal))


def test_trigger_dialog(snap_compare, shared_daemon):
    assert shoot(snap_compare, shared_daemon, (("down", "t"), TriggerModal))


def test_filter_bar(snap_compare, shared_daemon):
    """The `/` bar open with a query typed (its cursor does not blink in stable mode)."""
    assert shoot(snap_compare, shared_daemon, (("2",), RunsScreen), (("slash", *"state:failed"), None))
