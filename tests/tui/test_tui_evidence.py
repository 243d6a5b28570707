"""Evidence in the console, through Textual's Pilot against real daemons: the run page says why a run exists (the
trigger's signal, window and numbers against thresholds), every run-page tab has a key in the footer, the signals
column has a legend (help page and tooltip), and dashboard alerts wrap at 80 columns instead of being cut."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Footer, TabbedContent

from pr1tui.screens.dashboard import SIGNAL_LOOK, DashboardScreen, alert_lines, signals_legend
from pr1tui.screens.help import HelpScreen
from pr1tui.screens.run_detail import TAB_KEYS, RunDetailScreen
from tests.ctl import test_ctl_evidence
from tests.tui.conftest import wait_for
from tests.tui.test_tui_pilot import RecordingApp, plain, ready

pytestmark = pytest.mark.timeout(90)
NARROW = (80, 30)  # the on-call laptop's terminal
evidence_daemon = test_ctl_evidence.evidence_daemon  # the fixture pr1ctl's evidence tests use: the same seeded runs


def screen_text(widget) -> list[str]:
    """The lines a widget shows on screen now, at its real width (what a person reads, wrapping included)."""
    from textual.geometry import Region

    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return ["".join(seg.text for seg in strip).rstrip() for strip in strips]


async def test_run_page_says_why_the_run_exists_with_the_numbers(evidence_daemon):
    ids = evidence_daemon.ids
    trig = evidence_daemon.ctl_json("show", str(ids["run"]))["trigger"]
    ev = trig["evidence"]["primary"]["evidence"]
    app = RecordingApp(evidence_daemon.socket)
    async with app.run_test(size=NARROW) as pilot:
        await ready(pilot, app, DashboardScreen)
        app.open_run(ids["run"])
        await ready(pilot, app, RunDetailScreen)
        evidence = app.screen.query_one("#evidence")
        # its height follows its content after the next layout pass
        await wait_for(pilot, lambda: "outcome" in " ".join(screen_text(evidence)), what="evidence laid out")
        shown = screen_text(evidence)
        assert max(len(line) for line in shown) <= 80
        text = " ".join(" ".join(shown).split())
        assert "signal drift fired, which asks for a full run" in text
        assert f"recent mean {ev['recent_mean']:.3f} vs baseline {ev['baseline']['mean']:.3f}" in text
        assert f"tripped at {ev['page_hinkley']['fired_at_eval_id']}: FIRED" in text
        assert f"outcome queued run {ids['run']} (full)" in text
        assert "also fired compliance" in text

        await pilot.press("escape")
        app.open_run(ids["manual"])
        await ready(pilot, app, RunDetailScreen)
        manual = app.screen.query_one("#evidence")
        await wait_for(pilot, lambda: "trigger none: queued by hand by alice (flaky answers after the KB update)"
                       in " ".join(" ".join(screen_text(manual)).split()), what="a manual run's origin")
        assert app.errors() == []


async def test_each_run_page_tab_has_a_key_shown_in_the_footer(evidence_daemon):
    app = RecordingApp(evidence_daemon.socket)
    async with app.run_test(size=NARROW) as pilot:
        await ready(pilot, app, DashboardScreen)
        app.open_run(evidence_daemon.ids["run"])
        await ready(pilot, app, RunDetailScreen)
        tabs = app.screen.query_one("#tabs", TabbedContent)
        assert [k[1] for k in TAB_KEYS] == [str(p.id) for p in tabs.query("TabPane")]  # every tab, in order
        for key, tab, _label in [*TAB_KEYS[1:], TAB_KEYS[0]]:
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab, key
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        keys = {k.key: k for k in footer.query("FooterKey")}
        for key, _tab, label in TAB_KEYS:  # on screen at 80 columns, named by its tooltip
            assert key in keys and 0 < keys[key].region.right <= NARROW[0] and keys[key].tooltip == label, key
        assert "Tabs" in [str(lbl.render()) for lbl in footer.query("FooterLabel")]
        # the keys that matter on this page still fit beside them
        for key in ("escape", "a", "x", "question_mark"):
            assert keys[key].region.right <= NARROW[0], key


async def test_signals_legend_on_the_help_page_and_as_the_columns_tooltip(evidence_daemon):
    app = RecordingApp(evidence_daemon.socket)
    async with app.run_test(size=NARROW) as pilot:
        await ready(pilot, app, DashboardScreen)
        table = app.screen.query_one("#agents", DataTable)
        keys = [c.key for c in table.ordered_columns]
        widths = [c.get_render_width(table) for c in table.ordered_columns]
        signals_x = sum(widths[:keys.index("signals")]) + 2
        await pilot.hover("#agents", offset=(signals_x, 0))  # the column's header
        await pilot.pause()
        assert table.tooltip is not None and plain_text(table.tooltip) == signals_legend().plain
        await pilot.hover("#agents", offset=(1, 1))  # the agent column of the first row
        await pilot.pause()
        assert table.tooltip is None

        await pilot.press("question_mark")
        await ready(pilot, app, HelpScreen)
        legend = plain(app.screen.query_one("#legend"))
        assert "W weighted score · R reliability · D drift · C compliance" in legend
        for glyph, _style in SIGNAL_LOOK.values():
            assert glyph in legend
        assert "✗ fired: asks for a run" in legend and "▲ warn: near threshold" in legend and "● ok" in legend
        assert max(len(line) for line in screen_text(app.screen.query_one("#legend"))) <= 80


def plain_text(renderable) -> str:
    return renderable.plain if hasattr(renderable, "plain") else str(renderable)


async def test_dashboard_alerts_wrap_at_80_columns(shared_daemon):
    app = RecordingApp(shared_daemon.socket)
    async with app.run_test(size=NARROW) as pilot:
        await ready(pilot, app, DashboardScreen)
        await pilot.pause()
        dash = app.screen
        alerts = [t.plain for t in alert_lines(dash.status, utc=app.utc, stable=app.stable)]
        # the seeded KPI alert is longer than the panel is wide: cut, it lost the rule that fired
        assert any(len(a) > 78 for a in alerts), alerts
        shown = screen_text(dash.query_one("#health"))
        assert max(len(line) for line in shown) <= 80
        on_screen = " ".join(" ".join(shown).split())
        for a in alerts:
            assert " ".join(a.split()) in on_screen, (a, shown)
