"""Gate / backtest report rendering: the checklist a person reads before approving a promotion.

`run.gate` is written by the gate stages as "every number and threshold a gate used".
These shapes are understood, so the console keeps working as the gate stage evolves:

* the promotion gate's evidence (`"kind": "promotion"`, pr1d/evaluate/gate.py): its checklist
  (`checks`: correctness uplift, every tier, safety, compliance, format adherence, consensus, path
  diversity; `passed` null = undecided), then the outcome, the reasons and the correctness the
  post-promotion watch expects; the full tables stay in `pr1ctl show --json`;
* `{"checks": [{"name", "passed", "value", "threshold", "op"?, "detail"?}, ...], "passed"?: bool, ...}`;
* `{"checks": {name: "pass" | "fail" | "inconclusive" | "skipped"}, ...}` (promotion evidence before schema 2);
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
    elif isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        for name, status in raw.items():
            checks.append((str(name), True if status in ("pass", "skipped") else False if status == "fail" else None,
                           status))
        rest = {k: v for k, v in gate.items() if k != "checks"}
    else:
        rest = dict(gate)
    if gate.get("kind") == "promotion":
        return checks, _promotion_facts(gate)
    for k, v in rest.items():
        if isinstance(v, dict) and isinstance(v.get("passed", v.get("ok")), bool):
            passed = v.get("passed", v.get("ok"))
            detail = " ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items() if kk not in ("passed", "ok"))
            checks.append((k, passed, detail))
        else:
            facts.append((k, _fmt(v)))
    return checks, facts


def _promotion_facts(gate: dict) -> list[tuple[str, str]]:
    """The few facts of a promotion gate worth a line each: the checklist above carries the numbers."""
    facts = [("outcome", str(gate.get("outcome")))]
    facts += [("reason", str(r)) for r in gate.get("reasons") or []]
    cand, inc = gate.get("candidate") or {}, gate.get("incumbent") or {}
    facts.append(("correctness", f"candidate {_fmt(cand.get('mean'))} vs in service {_fmt(inc.get('mean'))} "
                                 f"(n={cand.get('n')})"))
    if gate.get("expected_score") is not None:
        facts.append(("expected_score", _fmt(gate["expected_score"])))
    return facts


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
