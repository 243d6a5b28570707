"""The daemon refuses, at trigger, run params no stage of the plan reads; the stages then run on the typed spec."""

from __future__ import annotations

import json


def test_trigger_refuses_an_unknown_param_naming_it_and_the_stages(daemon):
    cp = daemon.ctl("trigger", "a1", "--kind", "sleep", "--param", "secnds=0.5", check=False)
    assert cp.returncode == 1, cp.stderr
    assert "unknown param(s) secnds" in cp.stderr and "sleep (" in cp.stderr and "seconds" in cp.stderr
    assert daemon.ctl_json("runs") == []  # nothing was queued
    cp = daemon.ctl("trigger", "a1", "--kind", "rl", "--param", 'rl={"learning_rate": 1e-5}', check=False)
    assert cp.returncode == 1 and "param rl: unknown key(s) learning_rate" in cp.stderr


def test_a_run_writes_the_typed_spec_and_ends_as_its_verdict_says(daemon, state_dir):
    rid = daemon.ctl_json("trigger", "a1", "--kind", "sleep", "--param", "seconds=0.2")["run"]["id"]
    run = daemon.wait_run(rid, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    assert [a["reason"] for a in run["audit"]][-1] == "all stages done"
    from pr1d.pipeline.spec import StageSpec

    (path,) = (state_dir / "runs" / str(rid)).glob("*-sleep/spec.json")
    spec = StageSpec.load(path)
    assert (spec.run_id, spec.stage, spec.agent_id, spec.run_kind, spec.params) == (rid, "sleep", "a1", "sleep",
                                                                                    {"seconds": 0.2})
    assert "token" not in json.dumps(spec.scoring.model_dump(exclude={"token_env", "token_file"}))
