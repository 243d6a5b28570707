"""StageVerdict: the run-control part of a stage's result, read strictly; the rest is the stage's own record."""

from __future__ import annotations

import pytest

from pr1d.evaluate.gate import GateResult, gate_outputs
from pr1d.pipeline.events import EventError, StageVerdict


@pytest.mark.parametrize(("outputs", "want"), [
    (None, {"stop_run": None, "final_state": "succeeded", "final_reason": "all stages done", "registration": None}),
    ({"candidate": "/c", "train": {"steps": 3}}, {"stop_run": None, "final_state": "succeeded"}),
    ({"stop_run": {"state": "rejected", "reason": "sft_uplift_below_threshold"}, "gate": {"n": 1}},
     {"stop_run": {"state": "rejected", "reason": "sft_uplift_below_threshold"}, "gate": {"n": 1}}),
    ({"final_state": "awaiting_approval", "final_reason": "gate passed: ok",
      "register": {"candidate": "/c", "parent_id": None, "dataset_version": "abc", "config_hash": "h",
                   "policy": {}, "base": "/b"}},
     {"final_state": "awaiting_approval", "registration": {"candidate": "/c", "parent_id": None,
                                                          "dataset_version": "abc", "config_hash": "h",
                                                          "policy": {}, "base": "/b"}}),
])
def test_verdict_from_result(outputs, want):
    got = StageVerdict.from_result(outputs).model_dump()
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize(("outputs", "needle"), [
    ({"stop_run": {"state": "promoted"}}, "'stop_run.state'"),
    ({"stop_run": {"state": "rejected", "why": "x"}}, "'stop_run.why'"),
    ({"stop_run": True}, "'stop_run'"),
    ({"final_state": "done"}, "'final_state'"),
    ({"register": {"parent_id": "v1"}}, "'register.candidate'"),
])
def test_a_malformed_run_control_key_is_named(outputs, needle):
    with pytest.raises(EventError, match="run-control key " + needle.replace(".", r"\.")):
        StageVerdict.from_result(outputs)


@pytest.mark.parametrize(("outcome", "stop", "final"), [("fail", True, None), ("pass", False, "awaiting_approval"),
                                                         ("inconclusive", False, "awaiting_approval")])
def test_the_promotion_gate_speaks_the_verdict(outcome, stop, final):
    v = StageVerdict.from_result(gate_outputs(GateResult(outcome=outcome, reasons=["r"], evidence={"e": 1})))
    assert (v.stop_run is not None) is stop and v.gate == {"e": 1}
    if final:
        assert v.final_state == final and v.final_reason.endswith(": r")
