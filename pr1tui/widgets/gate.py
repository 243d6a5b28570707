"""Gate / backtest report rendering: the checklist a person reads before approving a promotion.

`run.gate` is written by the gate stages (later issues) as "every number and threshold a gate used".
Two shapes are understood, so the console keeps working as the gate stage evolves:

* `{"checks": [{"name", "passed", "value", "threshold", "op"?, "detail"?}, ...], "passed"?: bool, ...}`
* a flat mapping, where a value that is itself a mapping with a boolean `passed`/`ok` is one check and
  anything else is shown as a plain fact.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def gate_checks(gate: dict | None) -> tuple[list[tuple[str, bool | None, str]], list[tuple[str, str]]]:
    """Split a gate report into (checks, facts). A check is (name, passed or None, detail)."""
    checks: list[tuple[str, bool | None, str]] = []
    facts: list[tuple[str, str]] = []
    if not gate:
        return checks, facts
    raw = gate.get("checks")
    if isinstance(raw, list):
        for c in raw:
            if not isinstance(c, dict):
                continue
            detail = []
            if "value" in c:
                detail.append(_fmt(c["value"]))
            if "threshold" in c:
                detail.append(f"{c.get('op', 'vs')} {_fmt(c['threshold'])}")
            if c.get("detail"):
                detail.append(str(c["detail"]))
            passed = c.get("passed", c.get("ok"))
            checks.append((str(c.get("name", "?")), passed if isinstance(passed, bool) else None, " ".join(detail)))
        rest = {k: v for k, v in gate.items() if k != "checks"}
    else:
        rest = dict(gate)
    for k, v in rest.items():
        if isinstance(v, dict) and isinstance(v.get("passed", v.get("ok")), bool):
            passed = v.get("passed", v.get("ok"))
            detail = " ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items() if kk not in ("passed", "ok"))
            checks.append((k, passed, detail))
        else:
            facts.append((k, _fmt(v)))
    return checks, facts


def gate_table(gate: dict | None, empty: str = "no gate report yet") -> Table | Text:
    checks, facts = gate_checks(gate)
    if not checks and not facts:
        return Text(empty, style="dim italic")
    t = Table.grid(padding=(0, 1))
    t.add_column(width=1)
    t.add_column(style="bold")
    t.add_column()
    for name, passed, detail in checks:
        mark = Text("✓", style="green") if passed else Text("✗", style="red") if passed is False else Text("?", "yellow")
        t.add_row(mark, name, detail)
    for k, v in facts:
        t.add_row(Text("·", style="dim"), k, v)
    return t


class GateReport(Static):
    """The checklist for one run's gate (`None`: nothing to show yet)."""

    gate: reactive[dict | None] = reactive(None, always_update=True)

    def render(self) -> Table | Text:
        return gate_table(self.gate)
