"""The gate evidence as its readers show it: the console's gate panel and the demo's decision summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from test_gate import CFG, EASY_DROP, pair

from pr1d.evaluate.gate import gate_decision
from pr1tui.widgets.gate import gate_checks, gate_table


def test_gate_panel_shows_the_checklist_and_the_reasons():
    ev = gate_decision(*pair(EASY_DROP), CFG).evidence
    checks, facts = gate_checks(ev)
    by = {name: (passed, detail) for name, passed, detail in checks}
    assert by["correctness uplift"][0] is True and by["tier easy"][0] is False
    assert by["format adherence"] == (True, "1 >= 0.8")
    assert by["path diversity"][1].startswith("0.4 in [0.05, 0.95]")
    keys = [k for k, _ in facts]
    assert keys[0] == "outcome" and dict(facts)["outcome"] == "fail"
    assert any(v.startswith("tier_dropped: easy -5.0 points") for k, v in facts if k == "reason")
    # the big tables stay out of the panel (pr1ctl show --json has them)
    assert "tiers" not in keys and "config" not in keys
    text = Console(width=200, record=True)
    text.print(gate_table(ev))
    out = text.export_text()
    assert "✗ tier easy" in out and "✓ correctness uplift" in out


def test_gate_panel_reads_the_old_evidence_shape():
    checks, _ = gate_checks({"checks": {"uplift": "pass", "compliance": "inconclusive", "path_diversity": "fail"},
                             "outcome": "fail"})
    assert checks == [("uplift", True, "pass"), ("compliance", None, "inconclusive"), ("path_diversity", False, "fail")]


def test_demo_prints_the_gates_numbers(tmp_path: Path):
    from pr1d.demo import _show_decision

    ev = gate_decision(*pair(EASY_DROP), CFG).evidence
    con = Console(width=200, record=True)
    _show_decision(con, {"id": 7, "state": "rejected", "reason": "gate failed", "stages": [], "gate": ev}, tmp_path)
    out = con.export_text()
    assert "promotion gate: fail — correctness 0.66 vs in service 0.6: +6.0 points" in out
    assert "│ easy    │ 200 │       75% │        80% │  -5.0 │  [-8.0, -2.0] │" in out
    assert "format adherence 1.000" in out and "· tier_dropped: easy -5.0 points" in out
