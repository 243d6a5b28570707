"""Table tests for the trigger rules (pr1d.monitor.rules): precedence, dedupe, cooldown, hold, audit."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pr1d.monitor.rules import (
    JOB_KINDS,
    SIGNAL_JOBS,
    ActiveRun,
    AgentState,
    Decision,
    RuleConfig,
    choose,
    cooldown_remaining,
    decide,
    effective_rule_config,
    holds_agent,
    job_for,
)
from pr1d.monitor.signals import Sample, SignalConfig, SignalResult, compute_baseline, evaluate_all

CFG = RuleConfig()
NOW = 100_000.0
FREE = AgentState()


def results(*firing: str, warn: tuple[str, ...] = ()) -> list[SignalResult]:
    """One result per signal; the named ones fire, each with a recognisable evidence dict."""
    out = []
    for name in SIGNAL_JOBS:
        state = "firing" if name in firing else "warn" if name in warn else "ok"
        out.append(SignalResult(name, state, state == "firing", {"who": name}))
    return out


def test_entry_criteria_table():
    assert dict(SIGNAL_JOBS) == {
        "weighted_score": "sft",
        "reliability": "rl",
        "drift": "full",
        "compliance": "targeted-sft",
    }
    assert CFG.precedence == ["full", "targeted-sft", "sft", "rl"] and CFG.cooldown_s == 3600.0


# -- precedence -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "firing,kind,primary,also",
    [
        (("weighted_score",), "sft", "weighted_score", []),
        (("reliability",), "rl", "reliability", []),
        (("drift",), "full", "drift", []),
        (("compliance",), "targeted-sft", "compliance", []),
        (("weighted_score", "reliability"), "sft", "weighted_score", ["reliability"]),
        (("reliability", "compliance"), "targeted-sft", "compliance", ["reliability"]),
        (("weighted_score", "compliance"), "targeted-sft", "compliance", ["weighted_score"]),
        (("drift", "compliance"), "full", "drift", ["compliance"]),
        (("drift", "reliability"), "full", "drift", ["reliability"]),
        (("weighted_score", "reliability", "compliance"), "targeted-sft", "compliance", ["weighted_score", "reliability"]),
        (("weighted_score", "reliability", "drift", "compliance"), "full", "drift",
         ["compliance", "weighted_score", "reliability"]),
    ],
)  # fmt: skip
def test_precedence(firing, kind, primary, also):
    d = decide(FREE, results(*firing), NOW, CFG)
    assert (d.job_kind, d.signal, d.suppressed, d.run) == (kind, primary, None, True)
    assert d.evidence["primary"] == {"signal": primary, "job_kind": kind, "evidence": {"who": primary}}
    # The signals that lost are recorded, in precedence order, with their own numbers.
    assert [a["signal"] for a in d.evidence["also_fired"]] == also
    assert all(a["evidence"] == {"who": a["signal"]} for a in d.evidence["also_fired"])
    assert d.guardrails == ("compliance" in firing)


def test_custom_precedence():
    cfg = RuleConfig(precedence=["targeted-sft", "full", "rl", "sft"])
    d = decide(FREE, results("drift", "compliance", "weighted_score", "reliability"), NOW, cfg)
    assert (d.job_kind, d.signal) == ("targeted-sft", "compliance")
    assert [a["job_kind"] for a in d.evidence["also_fired"]] == ["full", "rl", "sft"]


def test_input_order_does_not_matter():
    rs = results("weighted_score", "reliability", "compliance")
    assert decide(FREE, rs, NOW, CFG) == decide(FREE, list(reversed(rs)), NOW, CFG)


@pytest.mark.parametrize(
    "agent",
    [
        FREE,
        AgentState(hold=True),
        AgentState(active_run=ActiveRun(1, "running")),
        AgentState(last_run_finished_at=NOW),
    ],
)
def test_nothing_fired_is_no_decision(agent):
    d = decide(agent, results(warn=("drift", "reliability")), NOW, CFG)
    assert (d.job_kind, d.signal, d.suppressed, d.run, d.guardrails) == (None, None, None, False, False)
    assert d.evidence["signals"] == {
        "weighted_score": "ok",
        "reliability": "warn",
        "drift": "warn",
        "compliance": "ok",
    }
    assert decide(agent, [], NOW, CFG).job_kind is None


def test_unknown_signal_is_a_wiring_bug():
    with pytest.raises(ValueError, match="no job for signal"):
        decide(FREE, [SignalResult("mood", "firing", True, {})], NOW, CFG)
    with pytest.raises(ValueError):
        job_for("mood")
    with pytest.raises(ValueError):
        choose([], CFG.precedence)


# -- dedupe, cooldown, hold -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent,suppressed",
    [
        pytest.param(FREE, None, id="free"),
        pytest.param(AgentState(hold=True, hold_reason="maintenance"), "hold", id="hold"),
        pytest.param(AgentState(hold=False), None, id="hold-cleared"),
        # dedupe: any state in which a run holds its agent, interrupted included
        pytest.param(AgentState(active_run=ActiveRun(7, "queued")), "active_run", id="queued"),
        pytest.param(AgentState(active_run=ActiveRun(7, "running")), "active_run", id="running"),
        pytest.param(AgentState(active_run=ActiveRun(7, "awaiting_approval")), "active_run", id="awaiting-approval"),
        pytest.param(AgentState(active_run=ActiveRun(7, "interrupted")), "active_run", id="interrupted"),
        pytest.param(AgentState(active_run=ActiveRun(7, "some_new_state")), "active_run", id="unknown-state-blocks"),
        # a run that already ended does not hold the agent (the cooldown covers it)
        pytest.param(AgentState(active_run=ActiveRun(7, "promoted")), None, id="promoted"),
        pytest.param(AgentState(active_run=ActiveRun(7, "failed")), None, id="failed"),
        pytest.param(AgentState(active_run=ActiveRun(7, "cancelled")), None, id="cancelled"),
        # cooldown boundary (default 3600 s): strictly inside blocks, exactly at the end allows
        pytest.param(AgentState(last_run_finished_at=NOW - 3599.999), "cooldown", id="cooldown-1ms-left"),
        pytest.param(AgentState(last_run_finished_at=NOW - 3600), None, id="cooldown-exactly-over"),
        pytest.param(AgentState(last_run_finished_at=NOW - 3601), None, id="cooldown-over"),
        pytest.param(AgentState(last_run_finished_at=NOW), "cooldown", id="just-finished"),
        pytest.param(AgentState(last_run_finished_at=NOW + 60), "cooldown", id="finish-in-future-clock-skew"),
        # a change of model restarts the cooldown: an approval given 3 h after awaiting_approval (the run's
        # finished_at) must not let the next poll start a run for the version just promoted
        pytest.param(AgentState(last_run_finished_at=NOW - 3 * 3600, model_changed_at=NOW - 60), "cooldown",
                     id="late-approval-promoted-a-minute-ago"),
        pytest.param(AgentState(last_run_finished_at=NOW - 3 * 3600, model_changed_at=NOW - 3600), None,
                     id="promoted-exactly-cooldown-ago"),
        pytest.param(AgentState(model_changed_at=NOW - 600), "cooldown", id="rolled-back-ten-minutes-ago"),
        pytest.param(AgentState(last_run_finished_at=NOW - 600, model_changed_at=NOW - 7200), "cooldown",
                     id="run-ended-after-the-change"),
        # an operator's hold outranks everything; a live run outranks the cooldown
        pytest.param(AgentState(hold=True, active_run=ActiveRun(7, "running"), last_run_finished_at=NOW), "hold",
                     id="hold-first"),
        pytest.param(AgentState(active_run=ActiveRun(7, "running"), last_run_finished_at=NOW), "active_run",
                     id="active-before-cooldown"),
    ],
)  # fmt: skip
def test_suppression(agent, suppressed):
    d = decide(agent, results("weighted_score"), NOW, CFG)
    # The job is still named when suppressed, so the ledger's trigger row says what was held back.
    assert (d.job_kind, d.signal, d.suppressed) == ("sft", "weighted_score", suppressed)
    assert d.run == (suppressed is None)
    json.dumps(d.to_dict(), allow_nan=False)


def test_suppression_evidence():
    d = decide(AgentState(hold=True, hold_reason="GPU maintenance"), results("drift"), NOW, CFG)
    assert d.evidence["hold_reason"] == "GPU maintenance"
    d = decide(AgentState(active_run=ActiveRun(42, "interrupted")), results("drift"), NOW, CFG)
    assert d.evidence["active_run"] == {"id": 42, "state": "interrupted"}
    d = decide(AgentState(last_run_finished_at=NOW - 600), results("drift"), NOW, CFG)
    assert d.evidence["cooldown"] == {
        "cooldown_s": 3600.0,
        "last_run_finished_at": NOW - 600,
        "model_changed_at": None,
        "from": NOW - 600,
        "remaining_s": 3000.0,
        "until": NOW + 3000,
    }


@pytest.mark.parametrize(
    "finished,now,cooldown,remaining",
    [
        (None, NOW, 3600.0, 0.0),
        (NOW - 10, NOW, 0.0, 0.0),  # cooldown off
        (NOW, NOW, 0.0, 0.0),
        (NOW - 10, NOW, 60.0, 50.0),
        (NOW - 60, NOW, 60.0, 0.0),
        (NOW - 61, NOW, 60.0, 0.0),
        (NOW + 10, NOW, 60.0, 70.0),
    ],
)
def test_cooldown_remaining(finished, now, cooldown, remaining):
    assert cooldown_remaining(finished, now, cooldown) == remaining


def test_cooldown_zero_disables():
    d = decide(AgentState(last_run_finished_at=NOW), results("reliability"), NOW, RuleConfig(cooldown_s=0.0))
    assert d.run and d.job_kind == "rl"


@pytest.mark.parametrize(
    "run,holds", [(None, False), (ActiveRun("r1", "queued"), True), (ActiveRun(1, "rejected"), False)]
)
def test_holds_agent(run, holds):
    assert holds_agent(run) is holds


def test_now_must_be_finite():
    with pytest.raises(ValueError):
        decide(FREE, results("drift"), float("nan"), CFG)


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,ok",
    [
        ({}, True),
        ({"cooldown_s": 60}, True),
        ({"cooldown_s": 0.0}, True),
        ({"precedence": ["rl", "sft", "targeted-sft", "full"]}, True),
        ({"cooldown_s": -1.0}, False),
        ({"cooldown_s": "1h"}, False),
        ({"cooldown": 60.0}, False),
        ({"precedence": ["full", "sft", "rl"]}, False),  # missing one
        ({"precedence": ["full", "full", "sft", "rl"]}, False),  # duplicate
        ({"precedence": ["full", "targeted-sft", "sft", "dpo"]}, False),  # unknown kind
        ({"precedence": ("full", "targeted-sft", "sft", "rl")}, False),  # strict: TOML gives lists
    ],
)
def test_effective_rule_config(override, ok):
    if ok:
        eff = effective_rule_config(CFG, override)
        for k, v in override.items():
            assert getattr(eff, k) == v
    else:
        with pytest.raises(ValidationError):
            effective_rule_config(CFG, override)


def test_rule_config_documented():
    assert all(f.description for f in RuleConfig.model_fields.values())
    assert sorted(CFG.precedence) == sorted(JOB_KINDS)


# -- signals and rules together ---------------------------------------------------------------------


def test_recorded_samples_to_decision():
    # 30 good evaluations set the baseline, then a sharp drop: drift (full) outranks the
    # weighted score (sft) and reliability (rl) that fire with it; all three are in the audit.
    # (12 low scores, not 6: reliability needs its spread to be above max_std with confidence, and
    # 6 of 36 is a wide interval.)
    samples = [Sample(ts=float(i), score=0.9, status="pass", rubric=None, eval_id=f"e{i}") for i in range(30)]
    samples += [
        Sample(ts=float(30 + i), score=0.5, status="pass", rubric=None, eval_id=f"d{i}") for i in range(12)
    ]
    cfg = SignalConfig()
    rs = evaluate_all(samples, compute_baseline(samples, cfg), cfg)
    d = decide(FREE, rs, NOW, CFG)
    assert isinstance(d, Decision) and (d.job_kind, d.signal, d.run) == ("full", "drift", True)
    assert [a["signal"] for a in d.evidence["also_fired"]] == ["weighted_score", "reliability"]
    ph = d.evidence["primary"]["evidence"]["page_hinkley"]
    assert ph["fired_at_eval_id"] == "d1" and ph["ph"] > cfg.ph_lambda
    json.dumps(d.to_dict(), allow_nan=False)
