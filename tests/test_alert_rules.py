"""docs/alerts.yml: well-formed Prometheus rules on metrics a real daemon exports, each documented for on-call."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

yaml = pytest.importorskip("yaml")  # pyyaml: a dev dependency (pyproject [dev])

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbooks" / "operations.md"
SEVERITIES = {"page", "ticket"}
# Series Prometheus makes itself for every target (not exported by the daemon).
PROMETHEUS_OWN = {"up"}
# PromQL words that look like metric names: operators and grouping modifiers.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
# The sample names each metric type adds to its family name.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": (), "info": ("_info",), "unknown": ()}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names or values, ranges or grouping labels."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0) in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


NAME_CASES = [
    ('up{job="pr1d"} == 0', {"up"}),
    ("pr1d_a_seconds > 24 * 3600", {"pr1d_a_seconds"}),
    ('sum by (instance, endpoint) (rate(pr1d_x_total{endpoint="agents"}[10m])) / sum(rate(pr1d_y_total[10m])) > 0.2',
     {"pr1d_x_total", "pr1d_y_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(pr1d_h_bucket[5m]))) > 5", {"pr1d_h_bucket"}),
    ("pr1d_m == 1 and pr1d_n > 0 and increase(pr1d_o_total[2h]) == 0", {"pr1d_m", "pr1d_n", "pr1d_o_total"}),
]


@pytest.mark.parametrize(("expr", "names"), NAME_CASES)
def test_metric_names_of_an_expression(expr, names):
    assert metric_names(expr) == names


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"], "no rule groups"
    out = []
    for g in doc["groups"]:
        assert isinstance(g.get("name"), str) and g["name"] and isinstance(g.get("rules"), list), g
        out += g["rules"]
    return out


def exported(text: str) -> set[str]:
    """Every series name a /metrics page can hold: each family's name and its type's sample names
    (a histogram nothing has been observed in still declares its family)."""
    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name, *(fam.name + s for s in SUFFIXES.get(fam.type, ()))}
        names |= {s.name for s in fam.samples}
    return names


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> str:
    """A real daemon's /metrics page (KPIs and its own health)."""
    from tests.conftest import DaemonProc, add_agents

    sd = tmp_path_factory.mktemp("alerts") / "state"
    sd.mkdir()
    add_agents(sd, "a1")
    d = DaemonProc(sd).start()
    try:
        url = d.ctl_json("status")["scoreboard"]["url"]
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200, r.text
        return r.text
    finally:
        d.close()


def test_every_rule_is_complete():
    seen = set()
    for r in rules():
        name = r.get("alert")
        assert isinstance(name, str) and re.fullmatch(r"Pr1d[A-Za-z]+", name), r
        assert name not in seen, f"{name}: two rules with one name"
        seen.add(name)
        assert isinstance(r.get("expr"), str) and r["expr"].strip(), f"{name}: no expr"
        assert isinstance(r.get("for"), str) and re.fullmatch(r"\d+[smhdw]", r["for"]), f"{name}: bad `for`"
        assert (r.get("labels") or {}).get("severity") in SEVERITIES, f"{name}: severity not in {SEVERITIES}"
        ann = r.get("annotations") or {}
        assert isinstance(ann.get("summary"), str) and ann["summary"].strip(), f"{name}: no summary"
        assert "`" in ann.get("description", ""), f"{name}: the description names no first command"
        assert ann.get("runbook") == "docs/runbooks/operations.md#metrics-and-alerts", name
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, f"{name}: unknown keys"
        e = r["expr"]
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}") and e.count("[") == e.count("]"), name


def test_rules_use_only_metrics_the_daemon_exports(scrape):
    have = exported(scrape) | PROMETHEUS_OWN
    assert "pr1d_scoring_request_duration_seconds_bucket" in have and "pr1_version_current" in have
    for r in rules():
        used = metric_names(r["expr"])
        assert used, f"{r['alert']}: selects no metric"
        assert used <= have, f"{r['alert']}: {sorted(used - have)} are not on a real /metrics page"


def test_every_alert_and_metric_is_in_the_runbook(scrape):
    text = RUNBOOK.read_text()
    assert "## Metrics and alerts" in text
    missing = [r["alert"] for r in rules() if f"`{r['alert']}`" not in text]
    assert not missing, f"alerts without a runbook entry: {missing}"
    daemon_families = {f.name for f in text_string_to_metric_families(scrape) if f.name.startswith("pr1d_")}
    undocumented = [n for n in sorted(daemon_families)
                    if not re.search(rf"`{n}(_total)?[`{{]", text)]
    assert not undocumented, f"daemon metrics the runbook does not name: {undocumented}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_promtool_accepts_the_rules():
    cp = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
