"""The sft_gate stage worker with a task family's held-out set: base and candidate are scored on it by the family's
grader next to GSM-lite, and the evidence says which side carried the run or what regressed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.stage_io import run_worker, write_stage_spec  # noqa: E402


def _run(tmp_path: Path, base: Path, candidate: Path, families: dict) -> dict:
    from pr1d.tasks.config import TasksConfig

    params = {"base": str(base), "candidate": str(candidate), "n_per_tier": 4, "tiers": ["easy"],
              "max_new_tokens": 24, "threshold": 0.05}
    spec = write_stage_spec(tmp_path, "03-sft_gate", params, False,
                            tasks=TasksConfig.model_validate({"families": families}))
    events, result = run_worker("sft_gate", spec)
    return {"result": result,
            "metrics": {e["name"] for e in events if e["type"] == "metric"}}


def test_the_gate_scores_a_familys_heldout_file_next_to_gsm_lite(tiny_model, tmp_path):
    """Base = candidate = the tiny arithmetic model: GSM-lite and the family are flat, so nothing carries the run
    (rejected); the family's row is there, scored by its grader on its own held-out file, capped per tier."""
    held = tmp_path / "store_heldout.jsonl"
    held.write_text("".join(json.dumps({"question": f"Ann has {i} cups and gets 2 more. How many cups now?",
                                        "answer": str(i + 2), "tier": "easy"}) + "\n" for i in range(5)))
    families = {"store": {"grader": {"kind": "numeric"}, "heldout": str(held), "kb_context": False}}
    got = _run(tmp_path, tiny_model, tiny_model, families)
    r = got["result"]
    gate = r["gate"]
    row = gate["families"]["store"]
    assert row["n_per_tier"] == {"easy": 4}  # n_per_tier caps the family's file too
    assert row["base_overall"] == row["candidate_overall"]  # the same model, greedy: the same answers
    assert r["stop_run"]["state"] == "rejected" and not gate["carried_by"], r
    assert {"gate.store.base.easy", "gate.store.candidate.easy"} <= got["metrics"]
