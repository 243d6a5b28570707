"""Evidence everywhere: `pr1ctl triggers` and the trigger and gate evidence of `pr1ctl show`, against real daemons;
the pure wording of pr1d/explain.py, against tables of cases.

The evidence is never hand-written: it comes from the monitor's own signals and rules and the promotion
gate's own decision, over recorded samples and answers, and is written into the ledger the way the daemon
writes it, before the daemon starts (the daemon is the ledger's only writer once running).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pr1d import explain
from pr1d.evaluate.gate import GateInput, GateItem, gate_decision
from pr1d.monitor.rules import AgentState, RuleConfig, decide
from pr1d.monitor.signals import Sample, SignalConfig, compute_baseline, evaluate_all
from tests.conftest import BIN, add_agents, pr1_env

T0 = 1767261600.0  # 2026-01-01 10:00 UTC: every sample's time is an offset from this
WIGGLE = (0.004, -0.006, 0.002, 0.007, -0.003, -0.001)


def drift_samples(version: str = "v1") -> list[Sample]:
    """60 healthy evaluations near 0.91, then 40 near 0.84 (an 8% drop), one failing the safety rubric."""
    out = []
    for i in range(100):
        score = (0.91 if i < 60 else 0.84) + WIGGLE[i % 6]
        rubric = {"safety": i != 95, "compliance": True}
        out.append(Sample(T0 + 60 * i, round(score, 4), "pass", rubric, f"e{i:03d}", version))
    return out


def decided(agent_state: AgentState | None = None, samples: list[Sample] | None = None):
    """The monitor's decision over `samples` (drift_samples by default), as the daemon makes it."""
    cfg = SignalConfig()
    samples = samples if samples is not None else drift_samples()
    base = compute_baseline(samples, cfg)
    results = evaluate_all(samples, base, cfg)
    d = decide(agent_state or AgentState(), results, T0 + 6000, RuleConfig())
    d.evidence["epoch"] = {"key": "model:v1", "version": "v1", "since_ts": None, "started_at": None, "change": None}
    return d


def gate_evidence(candidate_right: int, incumbent_right: int, n: int = 60) -> dict:
    """The promotion gate's evidence for n paired items over three tiers (candidate answers in Parallel form)."""
    tiers = ("easy", "medium", "hard")

    def side(right: int, parallel: bool) -> GateInput:
        return GateInput([GateItem(f"t{i}", tiers[i % 3], 1.0 if i < right else 0.0, {"safety": True, "compliance": True},
                                   parallel, 1.0 if parallel else None, 0.4 if parallel else None) for i in range(n)])

    return gate_decision(side(candidate_right, True), side(incumbent_right, False)).evidence


def seed_triggered_runs(state_dir: Path) -> dict[str, int]:
    """Agents a1..a3 and, as the daemon records them: a drift trigger on a1 that queued a full run which the
    gate then passed (awaiting approval); a suppressed trigger on a2 (on hold); a manual run on a3 that the
    gate rejected. Returns the ids: run, trigger, held_trigger, manual."""
    from pr1d.ledger import store
    from pr1d.ledger.store import Ledger

    add_agents(state_dir, "a1", "a2", "a3")
    led = Ledger(state_dir / "ledger.sqlite")
    try:
        d = decided()
        tid = store.record_trigger(led, "a1", d.signal, d.job_kind, d.evidence, d.suppressed)
        run, _ = led.create_run("a1", d.job_kind, "daemon", params={"guardrails": d.guardrails},
                                idempotency_key=f"trigger-{tid}", trigger_id=tid, reason=f"{d.signal} signal fired",
                                stages=[])
        store.link_trigger(led, tid, run["id"])
        led.transition_run(run["id"], "running", "daemon", "dispatched")
        led.transition_run(run["id"], "awaiting_approval", "daemon", "gate passed", gate=gate_evidence(54, 40))
        held = decided(AgentState(hold=True, hold_reason="GPU maintenance"))
        held_tid = store.record_trigger(led, "a2", held.signal, held.job_kind, held.evidence, held.suppressed)
        manual, _ = led.create_run("a3", "rl", "alice", reason="flaky answers after the KB update", stages=[])
        led.transition_run(manual["id"], "running", "daemon", "dispatched")
        led.transition_run(manual["id"], "rejected", "daemon", "gate failed", gate=gate_evidence(30, 45))
    finally:
        led.close()
    return {"run": run["id"], "trigger": tid, "held_trigger": held_tid, "manual": manual["id"]}


def _ctl(daemon, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pr1ctl"), "--socket", str(daemon.socket), *args], capture_output=True,
                          text=True, timeout=30, env=pr1_env(COLUMNS=str(columns)))


@pytest.fixture
def evidence_daemon(daemon_factory, tmp_path):
    sd = tmp_path / "state"
    sd.mkdir()
    ids = seed_triggered_runs(sd)
    d = daemon_factory(sd).start()
    d.ids = ids
    return d


# -- against a real daemon -----------------------------------------------------------------------------------


def test_triggers_table_says_what_fired_on_which_numbers_and_fits_80_columns(evidence_daemon):
    d, ids = evidence_daemon, evidence_daemon.ids
    cp = _ctl(d, "triggers")
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "drift" in out and "full" in out and f"run {ids['run']}" in out
    assert "none: hold" in out  # a2's trigger queued nothing: it was on hold
    ph = json.loads(_ctl(d, "triggers", "--json").stdout)[1]["evidence"]["primary"]["evidence"]["page_hinkley"]["ph"]
    assert "PH" in out and f"{ph:.3f}" in out and "0.5" in out  # the Page-Hinkley statistic against its lambda

    only_a1 = _ctl(d, "triggers", "a1", "--json")
    doc = json.loads(only_a1.stdout)
    assert [t["id"] for t in doc] == [ids["trigger"]]
    assert doc[0]["run_id"] == ids["run"] and doc[0]["evidence"]["primary"]["signal"] == "drift"
    assert [t["id"] for t in json.loads(_ctl(d, "triggers", "--limit", "1", "--json").stdout)] == [ids["held_trigger"]]
    assert _ctl(d, "triggers", "--limit", "0").returncode == 2  # a usage error, before the daemon is asked


def test_show_explains_the_trigger_and_the_gate_in_words(evidence_daemon):
    d, ids = evidence_daemon, evidence_daemon.ids
    doc = json.loads(_ctl(d, "show", str(ids["run"]), "--json").stdout)
    # --json stays the daemon's document, now with the trigger row the run came from
    assert doc["trigger"]["id"] == ids["trigger"] and doc["trigger"]["evidence"]["primary"]["signal"] == "drift"
    assert doc["gate"]["outcome"] == "pass" and isinstance(doc["gate"]["tiers"], dict)

    cp = _ctl(d, "show", str(ids["run"]), columns=400)  # wide: no sentence folds across table lines
    assert cp.returncode == 0, cp.stderr
    out = " ".join(cp.stdout.split())
    ev = doc["trigger"]["evidence"]["primary"]["evidence"]
    assert "drift fired, which asks for a full run" in out
    assert f"recent mean {ev['recent_mean']:.3f} vs baseline {ev['baseline']['mean']:.3f}" in out
    assert f"vs threshold {ev['rel_drop_threshold']:.1%}: warn" in out  # the mean's drop alone did not fire...
    assert f"statistic {ev['page_hinkley']['ph']:.3f} vs lambda {ev['ph_lambda']:g}" in out  # ...Page-Hinkley did
    assert f"tripped at {ev['page_hinkley']['fired_at_eval_id']}: FIRED" in out
    assert f"queued run {ids['run']} (full)" in out
    assert "compliance" in out and "also fired" in out  # the safety failure fired too; full outranked it
    u = doc["gate"]["uplift"]
    assert "pass → awaiting_approval" in out
    assert f"observed {u['observed']:+.4f}, 95% CI [{u['ci_low']:+.4f}, {u['ci_high']:+.4f}]" in out
    for tier in ("easy", "medium", "hard", "overall"):
        assert f" {tier} " in out
    assert '"kind": "promotion"' not in cp.stdout  # no raw JSON for people

    manual = " ".join(_ctl(d, "show", str(ids["manual"]), columns=400).stdout.split())
    assert "none: queued by hand by alice (flaky answers after the KB update)" in manual
    assert "fail → rejected" in manual and "uplift_below_bar" in manual
    assert "failed │ correctness uplift -0.25, needs >= 0.04" in manual


def test_show_and_triggers_fit_80_columns(evidence_daemon):
    for args in (["show", str(evidence_daemon.ids["run"])], ["show", str(evidence_daemon.ids["manual"])]):
        out = _ctl(evidence_daemon, *args).stdout
        assert max(len(line) for line in out.splitlines()) <= 80, out


# -- the wording, from tables of cases -------------------------------------------------------------------------

HELD = {"evidence": {"hold_reason": "GPU maintenance"}, "suppressed": "hold", "job_kind": "full"}


@pytest.mark.parametrize(("row", "want"), [
    ({"run_id": 7, "job_kind": "sft"}, "queued run 7 (sft)"),
    (HELD, "no run: the agent is on hold (GPU maintenance)"),
    ({"suppressed": "hold", "evidence": {}}, "no run: the agent is on hold (no reason given)"),
    ({"suppressed": "active_run", "evidence": {"active_run": {"id": 3, "state": "running"}}},
     "no run: run 3 (running) already holds the agent"),
    ({"suppressed": "cooldown", "evidence": {"cooldown": {"remaining_s": 90.4, "cooldown_s": 3600, "until": None}}},
     "no run: cooling down, 90 s left of 3600 s"),
    ({"suppressed": "plan_unavailable: no plan for 'x'"}, "no run: plan_unavailable: no plan for 'x'"),
    ({}, "no run recorded"),
])
def test_trigger_outcome(row, want):
    assert explain.trigger_outcome(row) == want


@pytest.mark.parametrize(("row", "want"), [
    ({"run_id": 7}, "run 7"),
    ({"suppressed": "active_run: agent a1 already has run 3 (running)"}, "none: active_run"),
    ({"suppressed": "cooldown"}, "none: cooldown"),
    ({}, "none: none"),
])
def test_trigger_run_cell(row, want):
    assert explain.trigger_run_cell(row) == want


WS = {"target": 0.85, "consecutive": 10, "warn_at": 5, "streak": 12, "streak_scores": [0.8] * 12,
      "streak_eval_ids": [f"e{i}" for i in range(12)]}
REL = {"window": 50, "samples": 50, "window_full": True, "std": 0.2, "std_lower_bound": 0.18, "max_std": 0.15,
       "fail_rate": 0.2, "fail_rate_lower_bound": 0.12, "max_fail_rate": 0.08, "confidence": 0.95, "fails": 10,
       "graded": 50, "std_state": "firing", "fail_rate_state": "firing", "fail_sequential_state": "ok",
       "fail_sequential": {"statistic": 1.5, "threshold": 4.0, "run_n": 50, "run_fails": 10, "enabled": True}}
COMP = {"window": 20, "samples": 20, "keys": ["safety", "compliance"], "checked": 20, "failure_count": 2,
        "failures": [{"eval_id": "e1", "keys": ["safety"]}, {"eval_id": "e9", "keys": ["compliance", "safety"]}]}


@pytest.mark.parametrize(("name", "ev", "window", "numbers"), [
    ("weighted_score", WS, "last 12", "12 in a row < 0.85 (fires at 10)"),
    ("reliability", REL, "last 50/50", "std 0.180 > 0.15; fails 12.0% > 8.0%"),
    ("reliability", {**REL, "std_state": "ok", "fail_rate_state": "ok", "fail_sequential_state": "firing",
                     "fail_sequential": {"statistic": 4.2, "threshold": 4.0}}, "last 50/50", "CUSUM 4.20 > 4.00"),
    ("drift", {"drift_window": 50, "valid_scores": 40, "mean_state": "firing", "ph_state": "ok", "rel_drop": 0.132,
               "rel_drop_lower_bound": 0.12, "rel_drop_threshold": 0.05}, "last 40/50", "drop 13.2% (≥ 12.0%) > 5.0%"),
    ("drift", {"mean_state": "ok", "ph_state": "firing", "page_hinkley": {"ph": 0.61}, "ph_lambda": 0.5},
     "last ?/?", "PH 0.610 > 0.5"),
    ("compliance", COMP, "last 20/20", "2 rubric fails (compliance, safety)"),
    ("novel", {"x": 1}, "?", "?"),
    ("drift", {}, "last ?/?", "drop ?"),  # evidence missing: question marks, never an exception
])
def test_signal_briefs(name, ev, window, numbers):
    assert explain.signal_window_brief(name, ev) == window
    assert explain.signal_brief(name, ev) == numbers


@pytest.mark.parametrize(("name", "ev", "label", "text"), [
    ("weighted_score", WS, "streak", "12 scores in a row below the target 0.85 (fires at 10, warns at 5)"),
    ("reliability", REL, "fail rate",
     "10 of 50 graded failed (20.0%, lower bound 12.0% at 95%) vs max_fail_rate 8.0%: FIRED"),
    ("reliability", REL, "fail-rate test",
     "CUSUM 1.50 vs threshold 4.00 over 50 evaluations with 10 fails (alarm rate ?, healthy ?): ok"),
    ("drift", {"reason": "no baseline yet (3 of 20 valid scores)"}, "baseline", "no baseline yet (3 of 20 valid scores)"),
    ("compliance", COMP, "rubric", "2 of 20 checked evaluations failed a rubric item (safety, compliance); one is "
                                   "enough: e1 (safety), e9 (compliance, safety)"),
])
def test_signal_checks(name, ev, label, text):
    assert dict(explain.signal_checks(name, ev))[label] == text


@pytest.mark.parametrize(("name", "ev", "want"), [
    ("weighted_score", WS, "the last 12 graded evaluations in a row: e0 … e11"),
    ("reliability", {**REL, "window_full": False, "samples": 30, "first_eval_id": "e1", "last_eval_id": "e30"},
     "the last 30 of a 50-evaluation window (not full yet): e1 … e30"),
    ("drift", {"baseline": None, "reason": "no baseline yet (3 of 20 valid scores)"},
     "no baseline yet (3 of 20 valid scores)"),
    ("drift", {"baseline": {"mean": 0.9}, "valid_scores": 40, "drift_window": 50},
     "the last 40 of a 50-evaluation window (since the baseline froze)"),
])
def test_signal_window(name, ev, want):
    assert explain.signal_window(name, ev) == want


def test_trigger_facts_from_the_monitors_own_decision():
    d = decided()
    row = {"signal": d.signal, "job_kind": d.job_kind, "evidence": d.evidence, "run_id": 4}
    facts = explain.trigger_facts(row)
    labels = [k for k, _ in facts]
    assert labels[:2] == ["signal", "window"] and labels[-1] == "outcome"
    text = dict(facts)
    assert text["signal"] == "drift fired, which asks for a full run"
    assert text["mean drop"].endswith(": warn")
    assert "FIRED" in text["Page-Hinkley"] and text["Page-Hinkley"].endswith("tripped at e087: FIRED")
    assert text["also fired"].startswith("compliance (1 rubric fails (safety)); full won")
    assert text["all signals"] == "weighted_score ok, reliability ok, drift FIRED, compliance FIRED"
    assert text["version"].startswith("v1 ")
    assert text["outcome"] == "queued run 4 (full)"
    quiet = decide(AgentState(), evaluate_all(drift_samples()[:60], None, SignalConfig()), T0, RuleConfig())
    assert quiet.job_kind is None  # nothing fired over healthy scores: no trigger row to explain


@pytest.mark.parametrize(("gate", "want"), [
    ({"outcome": "pass", "next_state": "awaiting_approval"}, "pass → awaiting_approval"),
    ({"outcome": "inconclusive", "flagged": True, "next_state": "awaiting_approval"},
     "inconclusive (flagged for a person) → awaiting_approval"),
    ({"checks": [{"name": "a", "passed": True}, {"name": "b", "passed": False}]}, "fail"),
    ({"checks": [{"name": "a", "passed": True}, {"name": "b", "passed": None}]}, "inconclusive"),
    ({"passed": True}, "pass"),
    ({}, "?"),
    ({"mode": "absolute", "threshold": 0.05, "uplift": 0.07, "uplift_abs": 0.07, "per_tier_uplift": {}},
     "SFT gate passed: uplift +0.0700 (absolute) vs threshold 0.0500"),
    ({"mode": "relative", "threshold": 0.05, "uplift": 0.01, "uplift_abs": 0.01, "per_tier_uplift": {}},
     "SFT gate failed: uplift +0.0100 (relative) vs threshold 0.0500"),
])
def test_gate_verdict(gate, want):
    assert explain.gate_verdict(gate) == want


def test_gate_facts_and_tiers_from_the_gates_own_decision():
    passed = gate_evidence(54, 40)
    facts = explain.gate_facts(passed)
    assert facts[0] == ("verdict", "pass → awaiting_approval")
    assert dict(facts)["uplift"].startswith(f"observed {passed['uplift']['observed']:+.4f}, 95% CI [")
    assert "failed" not in dict(facts)
    tiers = explain.gate_tier_rows(passed)
    assert [r[0] for r in tiers] == ["easy", "easy compliance", "medium", "medium compliance", "hard",
                                     "hard compliance", "overall", "overall compliance"]
    overall = tiers[-2]
    assert overall[1:5] == ["60", "0.900", "0.667", "+0.233"] and overall[5].startswith("[+") and overall[6] == "ok"

    failed = explain.gate_facts(gate_evidence(30, 45))
    assert failed[0] == ("verdict", "fail → rejected")
    assert any(k == "failed" and v.startswith("correctness uplift -0.25, needs >= 0.04") for k, v in failed)
    assert any(k == "reason" and v.startswith("uplift_below_bar: ") for k, v in failed)
    marks = dict((line.split(" ")[0] + " " + line.split(" ")[1], m) for m, line in explain.gate_checks(gate_evidence(30, 45)))
    assert marks["correctness uplift"] == "✗" and marks["format adherence"] == "✓"


def test_gate_facts_of_older_shapes_keep_their_facts():
    legacy = {"regressions": {"passed": False, "count": 2}, "uplift": 0.01}
    facts = explain.gate_facts(legacy)
    assert facts[0] == ("verdict", "?") and ("regressions", "{'passed': False, 'count': 2}") in facts
    sft = {"mode": "absolute", "threshold": 0.05, "uplift": 0.07, "uplift_abs": 0.07, "base_overall": 0.5,
           "candidate_overall": 0.57, "stderr_abs": 0.02, "base": {"easy": 0.6}, "candidate": {"easy": 0.7},
           "per_tier_uplift": {"easy": 0.1}, "n_per_tier": {"easy": 40}}
    assert explain.gate_tier_rows(sft) == [["easy", "40", "0.700", "0.600", "+0.100", "", ""]]
    assert dict(explain.gate_facts(sft))["overall"].startswith("candidate 0.5700 vs base 0.5000")
    assert explain.gate_facts(None) == [] and explain.gate_tier_rows(None) == []


@pytest.mark.parametrize(("run", "want"), [
    ({"trigger_id": 5, "trigger": None}, [("trigger", "5 (its row is gone from the ledger)")]),
    ({"created_by": "alice", "audit": [{"action": "create", "reason": "manual trigger by alice"}]},
     [("trigger", "none: queued by hand by alice (manual trigger by alice)")]),
    ({"created_by": "bob"}, [("trigger", "none: queued by hand by bob")]),
])
def test_run_origin_without_a_trigger_row(run, want):
    assert explain.run_origin(run) == want


def test_ungraded_families_say_which_stage_left_what_out_and_the_fix():
    from pr1d.explain import ungraded_families

    run = {"stages": [{"name": "dataset", "result": {"unknown_families": {"tool_calls": 2, "summaries": 1}}},
                      {"name": "sft", "result": {"records": 10}},
                      {"name": "backtest", "result": {"unknown_families": {"tool_calls": 1}}},
                      {"name": "gate", "result": None}]}
    assert ungraded_families(run) == [
        ("no grader (dataset)", "summaries (1 entry), tool_calls (2 entries): not trained on or replayed; add "
                                "[tasks.families.summaries] (docs/dataset.md, 'Adding a task family')"),
        ("no grader (backtest)", "tool_calls (1 entry): not trained on or replayed; add [tasks.families.tool_calls] "
                                 "(docs/dataset.md, 'Adding a task family')"),
    ]
    assert ungraded_families({"stages": [{"name": "dataset", "result": {"unknown_families": {}}}]}) == []
