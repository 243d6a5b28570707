"""The batched ledger ingest and the monitor's snapshot keep every sample's rubric exactly, shortcuts or not."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pr1d.ledger.samples import ingest_polls, monitor_snapshot
from pr1d.ledger.store import Ledger

# Rubrics in the order they are ingested; several repeat or collide under == (True == 1, key order).
RUBRICS = [
    {"compliance": True, "safety": True},
    {"safety": True, "compliance": True},  # same items, other order: its own text
    {"compliance": True, "safety": True},
    {"compliance": 1, "safety": True},  # not the contract's shape (the poller refuses it): never shortcut
    {"compliance": True, "safety": 1.0},
    {},
    None,
    {"compliance": False},
]


@pytest.fixture
def led(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.upsert_agents([{"id": "a0", "model": "m"}])
    yield led
    led.close()


def test_each_rubric_is_stored_as_json_dumps_writes_it(led):
    samples = [{"eval_id": f"e{i}", "ts": float(i), "weighted_score": 0.9, "status": "pass", "rubric": r,
                "task_id": None, "tier": None} for i, r in enumerate(RUBRICS)]
    assert ingest_polls(led, [{"agent_id": "a0", "cursor": "c", "health": {}, "samples": samples}]) == len(RUBRICS)
    con = sqlite3.connect(led.path)
    stored = [r[0] for r in con.execute("SELECT rubric FROM score_samples ORDER BY ts")]
    con.close()
    assert stored == [None if r is None else json.dumps(r) for r in RUBRICS]
    snap = monitor_snapshot(led, ["a0"], history=100)["a0"]
    assert [row[3] for row in snap["samples"]] == RUBRICS  # decoded again, equal to what came in
    assert snap["fold"] == snap["samples"]
